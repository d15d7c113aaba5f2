//! Two tenants, acme and globex, that write with their own tokens, and the
//! operator, who reads every tenant: the callers of the tests of who may
//! do what (`auth`, `grpc_api`).
//!
//! A server gets them with `Setup { admin: OPERATOR_KEY, tables: TOKENS,
//! env: ENV, .. }`.

pub const ACME: &str = "acme-writer-token-5f1c9e0b7a";
pub const GLOBEX: &str = "globex-writer-token-2d8a4c6e1f";
pub const OPERATOR: &str = "operator-token-9b3e7d2a5c";

/// The `[[receiver.tokens]]` of acme and globex.
pub const TOKENS: &str = "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\n\
                          [[receiver.tokens]]\ntenant = \"globex\"\ntoken_env = \"GLOBEX_TOKEN\"\n";
/// The `[admin]` key that names the operator's token.
pub const OPERATOR_KEY: &str = "token_env = \"AUDITRAIL_ADMIN_TOKEN\"";
/// The server's environment, which holds the three tokens.
pub const ENV: &[(&str, &str)] = &[
    ("ACME_TOKEN", ACME),
    ("GLOBEX_TOKEN", GLOBEX),
    ("AUDITRAIL_ADMIN_TOKEN", OPERATOR),
];
