//! The canonical table: its DDL, and the check that an existing table has
//! that shape. An existing table is never altered: a difference is reported
//! at start-up for the operator to resolve.

use std::collections::BTreeMap;

use sqlx::MySqlPool;

use super::{errors::classify, quote};
use crate::fields::Field;
use crate::ExportError;

/// Column type, and the `DATA_TYPE`s information_schema may report for it
/// (MariaDB reports its JSON columns as `longtext`).
fn column_type(field: Field) -> (&'static str, &'static [&'static str]) {
    match field {
        Field::Seq
        | Field::TimeUnixNano
        | Field::ObservedTimeUnixNano
        | Field::ReceivedTimeUnixNano => ("BIGINT UNSIGNED", &["bigint"]),
        Field::Time => ("DATETIME(6)", &["datetime"]),
        Field::SeverityNumber => ("INT", &["int"]),
        Field::TraceFlags => ("INT UNSIGNED", &["int"]),
        Field::EventId => ("VARCHAR(128)", &["varchar"]),
        Field::SeverityText => ("VARCHAR(64)", &["varchar"]),
        Field::Outcome => ("VARCHAR(16)", &["varchar"]),
        Field::TraceId => ("VARCHAR(32)", &["varchar", "char"]),
        Field::SpanId => ("VARCHAR(16)", &["varchar", "char"]),
        Field::PrevHash | Field::Hash => ("CHAR(64)", &["char", "varchar"]),
        Field::Target => ("TEXT", &["text", "mediumtext", "longtext"]),
        Field::Body => ("LONGTEXT", &["longtext", "mediumtext"]),
        Field::Attributes | Field::ResourceAttributes => ("JSON", &["json", "longtext"]),
        Field::Node
        | Field::Tenant
        | Field::ServiceName
        | Field::EventName
        | Field::ActorId
        | Field::ActorName
        | Field::ClientAddress
        | Field::ScopeName => ("VARCHAR(255)", &["varchar"]),
    }
}

/// Secondary indexes: one per question auditors ask most.
const INDEXES: &[(&str, &str)] = &[
    ("idx_event_id", "`event_id`"),
    ("idx_time", "`time`"),
    ("idx_actor", "`actor_id`, `time`"),
    ("idx_event_name", "`event_name`, `time`"),
    ("idx_service", "`service_name`, `time`"),
    ("idx_trace", "`trace_id`"),
];

/// The column a partitioned table is ranged by: when auditrail received
/// the event, as the spool's retention counts, so that dropping a
/// partition past retention never takes an event that has just arrived
/// stamped long ago by its sender.
pub(super) const PARTITION_COLUMN: &str = "received_time_unix_nano";

/// `CREATE TABLE` for the canonical table. With `partitions`, the table is
/// range-partitioned by [`PARTITION_COLUMN`] and the primary key takes that
/// column too (MySQL requires every unique key to cover the partitioning
/// column); it stays idempotent, since an event's receive time never
/// changes.
pub(super) fn create_table(table: &str, partitions: Option<&str>) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (\n", quote(table));
    for field in Field::ALL {
        let (ty, _) = column_type(field);
        sql.push_str(&format!("  {} {ty} NOT NULL,\n", quote(field.name())));
    }
    match partitions {
        None => sql.push_str("  PRIMARY KEY (`node`, `seq`)"),
        Some(_) => sql.push_str(&format!(
            "  PRIMARY KEY (`node`, `seq`, {})",
            quote(PARTITION_COLUMN)
        )),
    }
    for (name, columns) in INDEXES {
        sql.push_str(&format!(",\n  KEY {} ({columns})", quote(name)));
    }
    sql.push_str("\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin");
    if let Some(partitions) = partitions {
        sql.push_str(&format!(
            "\nPARTITION BY RANGE ({}) (",
            quote(PARTITION_COLUMN)
        ));
        sql.push_str(partitions);
        sql.push(')');
    }
    sql
}

/// `CREATE TABLE IF NOT EXISTS` for the signed checkpoints: one row per
/// checkpoint, keyed by its origin (node and spool) and tree size, so a
/// checkpoint sent twice is stored once.
pub(super) fn create_checkpoint_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\
         \x20 `node` VARCHAR(255) NOT NULL,\n\
         \x20 `origin` VARCHAR(255) NOT NULL,\n\
         \x20 `tree_size` BIGINT UNSIGNED NOT NULL,\n\
         \x20 `first_seq` BIGINT UNSIGNED NOT NULL,\n\
         \x20 `last_seq` BIGINT UNSIGNED NOT NULL,\n\
         \x20 `root_hash` CHAR(64) NOT NULL,\n\
         \x20 `chain_hash` CHAR(64) NOT NULL,\n\
         \x20 `signed_at_unix_nano` BIGINT UNSIGNED NOT NULL,\n\
         \x20 `note` TEXT NOT NULL,\n\
         \x20 PRIMARY KEY (`origin`, `tree_size`),\n\
         \x20 KEY `idx_node` (`node`, `first_seq`, `tree_size`)\n\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        quote(table)
    )
}

/// A column of an existing table, from information_schema.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub data_type: String,
    pub column_type: String,
    /// NOT NULL without a default: an insert must give it a value.
    pub required: bool,
}

/// Columns of `table`, or `None` when it does not exist.
pub(super) async fn columns(
    pool: &MySqlPool,
    table: &str,
) -> Result<Option<BTreeMap<String, Column>>, ExportError> {
    let rows: Vec<(String, String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
         CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), CAST(EXTRA AS CHAR) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|(name, data_type, column_type, nullable, default, extra)| {
                let required = nullable == "NO"
                    && default.is_none()
                    && !extra.to_ascii_lowercase().contains("auto_increment");
                (
                    name,
                    Column {
                        data_type: data_type.to_ascii_lowercase(),
                        column_type: column_type.to_ascii_lowercase(),
                        required,
                    },
                )
            })
            .collect(),
    ))
}

/// Column lists of the table's unique keys (the primary key included).
pub(super) async fn unique_keys(
    pool: &MySqlPool,
    table: &str,
) -> Result<Vec<Vec<String>>, ExportError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (index, column) in rows {
        keys.entry(index).or_default().push(column);
    }
    Ok(keys.into_values().collect())
}

/// What differs between an existing table and the canonical one; empty
/// when it can take auditrail's rows as they are.
pub(super) fn drift(
    existing: &BTreeMap<String, Column>,
    unique_keys: &[Vec<String>],
) -> Vec<String> {
    let mut problems = Vec::new();
    for field in Field::ALL {
        let (ty, accepted) = column_type(field);
        match existing.get(field.name()) {
            None => problems.push(format!(
                "column `{}` is missing (expected {ty})",
                field.name()
            )),
            Some(column) if !accepted.contains(&column.data_type.as_str()) => {
                problems.push(format!(
                    "column `{}` is {} (expected {ty})",
                    field.name(),
                    column.column_type
                ))
            }
            Some(_) => {}
        }
    }
    for (name, column) in existing {
        if Field::from_name(name).is_none() && column.required {
            problems.push(format!(
                "column `{name}` is not auditrail's and is NOT NULL without a default, so inserts would fail"
            ));
        }
    }
    let canonical = |c: &String| Field::from_name(c).is_some();
    let idempotent = unique_keys.iter().any(|key| {
        key.iter().all(canonical)
            && key.iter().any(|c| c == "node")
            && key.iter().any(|c| c == "seq")
    });
    if !idempotent {
        problems.push(
            "no unique key on (`node`, `seq`), so a retried batch would be stored twice".into(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical() -> BTreeMap<String, Column> {
        Field::ALL
            .into_iter()
            .map(|f| {
                let data_type = column_type(f).1[0].to_owned();
                (
                    f.name().to_owned(),
                    Column {
                        column_type: data_type.clone(),
                        data_type,
                        required: true,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_canonical_shape_has_no_drift_and_changes_are_named() {
        let key = vec![vec!["node".to_string(), "seq".to_string()]];
        assert!(drift(&canonical(), &key).is_empty());

        let mut changed = canonical();
        changed.remove("actor_id");
        changed.get_mut("seq").unwrap().data_type = "varchar".into();
        changed.get_mut("seq").unwrap().column_type = "varchar(20)".into();
        changed.insert(
            "legacy".into(),
            Column {
                data_type: "int".into(),
                column_type: "int(11)".into(),
                required: true,
            },
        );
        let problems = drift(&changed, &[vec!["event_id".into()]]);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].contains("`seq` is varchar(20)"),
            "{problems:#?}"
        );
        assert!(
            problems[1].contains("`actor_id` is missing"),
            "{problems:#?}"
        );
        assert!(problems[2].contains("`legacy`"), "{problems:#?}");
        assert!(problems[3].contains("no unique key"), "{problems:#?}");
    }

    #[test]
    fn partitioned_tables_key_on_time_too() {
        let plain = create_table("audit_events", None);
        assert!(plain.contains("PRIMARY KEY (`node`, `seq`)"));
        assert!(!plain.contains("PARTITION BY"));
        let partitioned = create_table(
            "audit_events",
            Some("PARTITION p_future VALUES LESS THAN MAXVALUE"),
        );
        assert!(partitioned.contains("PRIMARY KEY (`node`, `seq`, `received_time_unix_nano`)"));
        assert!(partitioned.ends_with(
            "PARTITION BY RANGE (`received_time_unix_nano`) (PARTITION p_future VALUES LESS THAN MAXVALUE)"
        ));
    }
}
