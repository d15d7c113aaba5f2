//! The `auditrail` binary's library: config, CLI pieces, pipeline wiring,
//! the admin API and metrics.
//!
//! `main.rs` is only the command line; everything it runs lives here, so
//! that the fuzz targets (`fuzz/`) and tests can drive the same config
//! parser and query filters the binary uses.

pub mod admin;
pub mod admin_auth;
pub mod client;
pub mod config;
pub mod csv_export;
pub mod dead_letters;
pub mod events_api;
pub mod grpc_api;
pub mod hash;
pub mod import;
pub mod integrity;
pub mod operator;
pub mod output;
pub mod query_args;
pub mod scope;
pub mod security;
pub mod serve;
pub mod sinks;
pub mod spool_check;
pub mod ui;
pub mod watch;
