//! The ClickHouse cluster of the multi-node test (tests/tests/cluster.rs):
//! ZooKeeper and two ClickHouse 18.16 servers, the two replicas of one
//! shard, started by `scripts/clickhouse-cluster` (installed when missing;
//! a test fails with the script's output when it cannot start them).
//!
//! The tables are made by the SQL of docs/scaling.md itself, read from the
//! page, so the setup the page shows is the one the test proves.

use crate::clickhouse::{
    drop_stale_databases, query, repo_root, run_script_with, unique_name, Database,
};

const SCRIPT: &str = "scripts/clickhouse-cluster";

/// The two replicas, by number 1 and 2 as the script names them.
pub struct Cluster {
    urls: [String; 2],
}

impl Cluster {
    /// Starts ZooKeeper and both replicas (or finds them running).
    pub fn start() -> Cluster {
        let stdout = run_script_with(SCRIPT, &[]);
        let urls: Vec<String> = stdout.lines().map(|l| l.trim().to_owned()).collect();
        let [one, two] = <[String; 2]>::try_from(urls)
            .unwrap_or_else(|urls| panic!("{SCRIPT} printed {urls:?}, not two URLs"));
        Cluster { urls: [one, two] }
    }

    /// Replica `n`'s HTTP URL.
    pub fn url(&self, n: usize) -> &str {
        &self.urls[n - 1]
    }

    /// SIGKILL to replica `n`; returns once the process is gone.
    pub fn kill9(&self, n: usize) {
        run_script_with(SCRIPT, &["kill", &n.to_string()]);
    }

    /// Starts replica `n` again on its data; returns once it answers /ping.
    pub fn restart(&self, n: usize) {
        run_script_with(SCRIPT, &["start", &n.to_string()]);
    }
}

/// The ```sql blocks of a docs page, in order.
pub fn sql_blocks(page: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(page))
        .unwrap_or_else(|e| panic!("reading {page}: {e}"));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// A database of the test's own on both replicas (the same name), with
/// docs/scaling.md's tables; dropped from both when this is dropped (which
/// also removes the replicas of its tables from ZooKeeper).
pub struct ClusterDatabase {
    _on_each: Vec<Database>,
    name: String,
}

/// The database name docs/scaling.md's SQL uses.
const DOCS_DATABASE: &str = "audit";

impl ClusterDatabase {
    /// Creates a fresh database on each replica and runs every statement of
    /// docs/scaling.md's setup blocks (those whose first line is
    /// `-- on each replica`) there, with the page's database `audit`
    /// replaced by the fresh name (also in the ZooKeeper paths, so that
    /// every test's tables replicate apart).
    pub async fn create(cluster: &Cluster) -> ClusterDatabase {
        let setup: Vec<String> = sql_blocks("docs/scaling.md")
            .into_iter()
            .filter(|b| b.starts_with("-- on each replica"))
            .collect();
        assert!(
            !setup.is_empty(),
            "docs/scaling.md has no ```sql block starting with `-- on each replica`"
        );
        let name = unique_name();
        let mut on_each = Vec::new();
        for url in &cluster.urls {
            drop_stale_databases(url).await;
            on_each.push(Database::create_named(url, &name).await);
        }
        let database = ClusterDatabase {
            _on_each: on_each,
            name,
        };
        for url in &cluster.urls {
            for block in &setup {
                for statement in block.split(';') {
                    let statement = database.localize(statement);
                    if !statement.trim().is_empty() {
                        query(url, &statement).await;
                    }
                }
            }
        }
        database
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sql` from docs/scaling.md, on this database: `audit.`, the
    /// `/audit/` of ZooKeeper paths and the Distributed engine's database
    /// argument name this one. Comment lines go (18.16's HTTP interface
    /// takes one statement and no trailing comment).
    pub fn localize(&self, sql: &str) -> String {
        sql.lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace(&format!("{DOCS_DATABASE}."), &format!("{}.", self.name))
            .replace(&format!("/{DOCS_DATABASE}/"), &format!("/{}/", self.name))
            .replace(&format!(", {DOCS_DATABASE},"), &format!(", {},", self.name))
    }
}
