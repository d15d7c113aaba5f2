//! `auditrail sink forget NAME`: removes what the spool keeps of a sink that
//! is no longer configured (its cursor and dead letters), on a running
//! server through the admin API or on a stopped server's spool.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::client::Location;
use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum SinkCommand {
    /// Forget a sink removed from the config: delete its cursor (so
    /// retention stops keeping events for it) and its dead letters. A sink
    /// that is still configured is refused.
    Forget {
        /// The sink's `name`.
        name: String,
        #[command(flatten)]
        at: Location,
        /// A stopped server's config: its spool is used, and its sinks
        /// count as configured (instead of --data-dir).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
    },
}

pub async fn run(command: SinkCommand) -> anyhow::Result<()> {
    let SinkCommand::Forget {
        name,
        mut at,
        config,
    } = command;
    let mut configured = BTreeSet::new();
    if let Some(path) = &config {
        let config = Config::load(path)?;
        configured.extend(config.sinks.iter().map(|s| s.name.clone()));
        at.data_dir = Some(config.spool.dir);
    }
    let (cursor, dead_letters) = match at.open_spool()? {
        Some(spool) => {
            let forgotten = auditrail_exporters::forget_sink(&spool, &configured, &name)?;
            (forgotten.cursor, forgotten.dead_letters as u64)
        }
        None => {
            let url = at.url(&format!("/v1/sinks/{name}/forget"));
            let answer = at.call(at.client()?.post(url)).await?;
            (
                answer["cursor"].as_u64(),
                answer["dead_letters"].as_u64().unwrap_or(0),
            )
        }
    };
    let cursor = cursor.map_or("no cursor".to_owned(), |c| format!("its cursor at seq {c}"));
    println!("forgot sink {name:?}: removed {cursor} and {dead_letters} dead letter(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_path_names_the_sink() {
        let at = crate::client::Location {
            admin: "http://127.0.0.1:8686/".into(),
            data_dir: None,
            token_env: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        assert_eq!(
            at.url(&format!("/v1/sinks/{}/forget", "warehouse")),
            "http://127.0.0.1:8686/v1/sinks/warehouse/forget"
        );
    }
}
