//! The seed's uploader pattern, for comparison with auditrail's MySQL sink:
//! rows drained from a local queue (here: a stopped auditrail spool), one
//! `INSERT` per row, one commit per drain, into the seed's table
//! `nano_banana_user_use_log`.
//!
//! ```text
//! cargo run --release -p auditrail-bench --example seed_uploader -- \
//!     --data-dir SPOOL --url mysql://root@127.0.0.1:3306/auditrail_bench --rows 20000
//! ```
//! Prints `seed uploader: N rows in S s = R rows/s`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use auditrail_spool::{Spool, SpoolConfig};
use clap::Parser;
use sqlx::{Connection, MySqlConnection};

#[derive(Parser)]
struct Args {
    /// A stopped auditrail spool holding the backlog.
    #[arg(long)]
    data_dir: PathBuf,
    /// The database to write into; the table is (re)created.
    #[arg(long)]
    url: String,
    /// Rows to upload.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Rows per drain (per commit).
    #[arg(long, default_value_t = 1_000)]
    drain: usize,
}

/// The seed's table, as the issue quotes it, with an id and a timestamp.
const TABLE: &str = "CREATE TABLE nano_banana_user_use_log (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    user_name VARCHAR(64), device_name VARCHAR(128), prompt TEXT,
    result_path VARCHAR(512), status VARCHAR(16), error_message TEXT,
    model VARCHAR(64), duration_ms INT, finish_reason VARCHAR(32),
    created_at DATETIME(6))";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spool = Spool::open(SpoolConfig::new(&args.data_dir, "reader"))
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    let mut conn = MySqlConnection::connect(&args.url).await?;
    sqlx::query("DROP TABLE IF EXISTS nano_banana_user_use_log")
        .execute(&mut conn)
        .await?;
    sqlx::query(TABLE).execute(&mut conn).await?;

    let started = Instant::now();
    let mut after = 0;
    let mut uploaded = 0;
    while uploaded < args.rows {
        let drain = spool.read(after, args.drain.min(args.rows - uploaded))?;
        let Some(last) = drain.last() else { break };
        after = last.seq;
        let mut tx = conn.begin().await?;
        for e in &drain {
            sqlx::query(
                "INSERT INTO nano_banana_user_use_log \
                 (user_name, device_name, prompt, result_path, status, error_message, model, duration_ms, finish_reason, created_at) \
                 VALUES (?, NULL, ?, ?, ?, NULL, NULL, NULL, NULL, FROM_UNIXTIME(? / 1000000))",
            )
            .bind(&e.actor_id)
            .bind(&e.body)
            .bind(&e.target)
            .bind(e.outcome.as_str())
            .bind(e.time_unix_nano / 1000)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        uploaded += drain.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seed uploader: {uploaded} rows in {seconds:.2} s = {:.0} rows/s",
        uploaded as f64 / seconds
    );
    Ok(())
}
