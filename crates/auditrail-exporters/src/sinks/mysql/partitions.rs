//! Daily partitions, created ahead of time and dropped past retention.
//!
//! The table is range-partitioned by `received_time_unix_nano` (when
//! auditrail received the event, as the spool's retention counts; never the
//! sender's clock, which may say a year ago for an event that arrived
//! today): `p_before` holds everything received before the day the table
//! was made, one `pYYYYMMDD` per day (UTC), and `p_future` (`LESS THAN
//! MAXVALUE`) catches the rest, so every event has a partition and an
//! insert never fails for want of one. Maintenance splits new days off
//! `p_future` before they start.
//!
//! Tables made by versions before 0.x were partitioned by `time_unix_nano`,
//! the sender's clock. They keep working, and days keep being split off,
//! but retention drops nothing there: dropping by the sender's clock could
//! take an event the day it arrives. Maintenance says so (an error, hourly,
//! and `auditrail_sink_errors_total{kind="maintenance"}`) until the table
//! is migrated.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sqlx::MySqlPool;
use time::Date;

use super::schema::PARTITION_COLUMN;
use super::{errors::classify, quote};
use crate::ExportError;

const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;
const BEFORE: &str = "p_before";
const FUTURE: &str = "p_future";

/// `[sinks.partitions]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Days (after today, UTC) that always have a partition ready.
    #[serde(default = "default_days_ahead")]
    pub days_ahead: u32,
    /// Partitions whose whole day is older than this are dropped; without
    /// it, nothing is dropped.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
}

fn default_days_ahead() -> u32 {
    7
}

/// Days since the Unix epoch (UTC) at `now`.
fn day_of(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

fn partition_name(day: u64) -> String {
    let date = Date::from_julian_day(2_440_588 + day as i32).expect("a day after 1970 is a date");
    format!(
        "p{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn day_partition(day: u64) -> String {
    format!(
        "PARTITION {} VALUES LESS THAN ({})",
        partition_name(day),
        (day + 1) * NANOS_PER_DAY
    )
}

/// The partition clause of a new table made at `now`.
pub(super) fn initial(config: &PartitionConfig, now: SystemTime) -> String {
    let today = day_of(now);
    let mut parts = vec![format!(
        "PARTITION {BEFORE} VALUES LESS THAN ({})",
        today * NANOS_PER_DAY
    )];
    parts.extend((today..=today + u64::from(config.days_ahead)).map(day_partition));
    parts.push(format!("PARTITION {FUTURE} VALUES LESS THAN MAXVALUE"));
    parts.join(", ")
}

/// What one maintenance pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// Creates the partitions of the days up to `days_ahead` after `now`, and
/// drops those wholly past retention.
pub(super) async fn maintain(
    pool: &MySqlPool,
    table: &str,
    config: &PartitionConfig,
    now: SystemTime,
) -> Result<Maintenance, ExportError> {
    let partitions: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT CAST(PARTITION_NAME AS CHAR), CAST(PARTITION_DESCRIPTION AS CHAR), CAST(PARTITION_EXPRESSION AS CHAR) \
         FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    let ranged_by = partitions
        .iter()
        .find_map(|(_, _, expression)| expression.clone())
        .unwrap_or_default();
    let existing: Vec<(Option<String>, Option<String>)> =
        partitions.into_iter().map(|(n, d, _)| (n, d)).collect();
    let names: Vec<String> = existing.iter().filter_map(|(n, _)| n.clone()).collect();
    if !names.iter().any(|n| n == FUTURE) {
        return Err(ExportError::misconfigured(
            "schema",
            format!(
                "table `{table}` has no `{FUTURE}` partition: [sinks.partitions] needs a table auditrail created partitioned \
                 (auditrail does not re-partition an existing table)"
            ),
        ));
    }
    // Upper bound (exclusive, in ns) of each partition but p_future.
    let bounds: Vec<(String, u64)> = existing
        .into_iter()
        .filter_map(|(name, bound)| Some((name?, bound?.trim().parse::<u64>().ok()?)))
        .collect();
    let mut done = Maintenance::default();

    let today = day_of(now);
    let covered_until = bounds.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let first_missing = today.max(covered_until.div_ceil(NANOS_PER_DAY));
    let last_wanted = today + u64::from(config.days_ahead);
    if first_missing <= last_wanted {
        let days: Vec<u64> = (first_missing..=last_wanted).collect();
        let mut parts: Vec<String> = days.iter().map(|d| day_partition(*d)).collect();
        parts.push(format!("PARTITION {FUTURE} VALUES LESS THAN MAXVALUE"));
        let sql = format!(
            "ALTER TABLE {} REORGANIZE PARTITION {FUTURE} INTO ({})",
            quote(table),
            parts.join(", ")
        );
        sqlx::query(&sql).execute(pool).await.map_err(classify)?;
        done.created = days.into_iter().map(partition_name).collect();
    }

    if let (Some(_), false) = (config.retention, by_receive_time(&ranged_by)) {
        return Err(ExportError::misconfigured(
            "schema",
            format!(
                "table `{table}` is partitioned by {ranged_by} (made by an earlier auditrail), which is the sender's clock: \
                 [sinks.partitions] retention drops nothing there, since it could drop an event on the day it arrives. \
                 Migrate the rows into a table auditrail creates (partitioned by {PARTITION_COLUMN}), or remove `retention`"
            ),
        ));
    }
    if let Some(retention) = config.retention {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let cutoff = now_ns.saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
        let expired: Vec<String> = bounds
            .iter()
            .filter(|(_, bound)| *bound <= cutoff)
            .map(|(name, _)| name.clone())
            .collect();
        // Keep at least one bounded partition, so new days keep being split
        // off p_future rather than everything landing in it.
        let bounded = bounds.len();
        if !expired.is_empty() && expired.len() < bounded {
            let list: Vec<String> = expired.iter().map(|n| quote(n)).collect();
            let sql = format!(
                "ALTER TABLE {} DROP PARTITION {}",
                quote(table),
                list.join(", ")
            );
            sqlx::query(&sql).execute(pool).await.map_err(classify)?;
            done.dropped = expired;
        }
    }
    Ok(done)
}

/// Whether a partition expression (as information_schema shows it,
/// quoted or not) is the receive time.
fn by_receive_time(expression: &str) -> bool {
    expression.trim().trim_matches('`') == PARTITION_COLUMN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_partitions_cover_every_time() {
        // 2026-11-22T10:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_795_341_600);
        let config = PartitionConfig {
            days_ahead: 1,
            retention: None,
        };
        let clause = initial(&config, now);
        assert_eq!(
            clause,
            "PARTITION p_before VALUES LESS THAN (1795305600000000000), \
             PARTITION p20261122 VALUES LESS THAN (1795392000000000000), \
             PARTITION p20261123 VALUES LESS THAN (1795478400000000000), \
             PARTITION p_future VALUES LESS THAN MAXVALUE"
        );
    }
}
