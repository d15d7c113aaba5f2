//! Rows of a MySQL/MariaDB table (`--mysql URL --table NAME`), such as the
//! seed uploader's `nano_banana_user_use_log`, read in pages by an integer
//! key column (`--id-column`, default `id`): `WHERE id > last ORDER BY id`,
//! so a page costs an index range scan however large the table, and an
//! import can resume after any id (`--after-id`).

use anyhow::{bail, Context};
use serde_json::{Map, Value};
use sqlx::mysql::MySqlRow;
use sqlx::types::time::{OffsetDateTime, PrimitiveDateTime};
use sqlx::{Column, Connection, MySqlConnection, Row, TypeInfo};

use super::{Item, Page, Source};

pub struct MysqlTable {
    connection: MySqlConnection,
    table: String,
    id_column: String,
    after: i64,
    total: u64,
    read: u64,
    source_id: String,
}

/// A name as a quoted MySQL identifier.
fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl MysqlTable {
    pub async fn open(
        url: &str,
        table: &str,
        id_column: &str,
        after: i64,
        source_id: &str,
    ) -> anyhow::Result<MysqlTable> {
        let mut connection = MySqlConnection::connect(url)
            .await
            .context("--mysql: connecting")?;
        let count = format!(
            "SELECT COUNT(*) FROM {} WHERE {} > ?",
            quoted(table),
            quoted(id_column)
        );
        let total: i64 = sqlx::query_scalar(&count)
            .bind(after)
            .fetch_one(&mut connection)
            .await
            .with_context(|| {
                format!("--mysql: counting the rows of {table} after {id_column} {after}")
            })?;
        Ok(MysqlTable {
            connection,
            table: table.to_owned(),
            id_column: id_column.to_owned(),
            after,
            total: total.max(0) as u64,
            read: 0,
            source_id: source_id.to_owned(),
        })
    }

    /// The key of the last row read: where `--after-id` resumes.
    pub fn last_id(&self) -> i64 {
        self.after
    }
}

impl Source for MysqlTable {
    fn label(&self) -> String {
        self.table.clone()
    }

    fn total(&self) -> u64 {
        self.total
    }

    async fn next_page(&mut self, max: usize) -> anyhow::Result<Option<Page>> {
        let select = format!(
            "SELECT * FROM {table} WHERE {id} > ? ORDER BY {id} LIMIT ?",
            table = quoted(&self.table),
            id = quoted(&self.id_column)
        );
        let rows = sqlx::query(&select)
            .bind(self.after)
            .bind(max as u64)
            .fetch_all(&mut self.connection)
            .await
            .with_context(|| {
                format!(
                    "--mysql: reading {} after {} {}",
                    self.table, self.id_column, self.after
                )
            })?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = match row_id(row, &self.id_column) {
                Ok(id) => id,
                Err(e) => bail!("--mysql: {}: {e}", self.table),
            };
            self.after = id;
            items.push(Item {
                origin: format!("{} {}={id}", self.table, self.id_column),
                identity: format!("mysql\0{}\0{}\0{id}", self.source_id, self.table).into_bytes(),
                record: row_to_object(row),
            });
        }
        self.read += rows.len() as u64;
        Ok(Some(Page {
            items,
            position: self.read,
        }))
    }
}

/// The paging key of a row: it must be an integer, or the pages cannot be
/// taken in order.
fn row_id(row: &MySqlRow, column: &str) -> Result<i64, String> {
    let value = row
        .try_get_unchecked::<Option<i64>, _>(column)
        .map_err(|e| format!("column {column:?}: {e}"))?;
    value.ok_or_else(|| format!("a row whose {column} is NULL: the key column must be an integer"))
}

/// A row as a JSON object of its columns: numbers as numbers, date-times as
/// text (`DATETIME` without a zone, for `--timezone` to place; `TIMESTAMP`
/// in UTC, as the connection reads it), everything else as text.
fn row_to_object(row: &MySqlRow) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let type_name = column.type_info().name().to_ascii_uppercase();
        let value = column_value(row, i, &type_name)
            .map_err(|e| format!("column {} ({type_name}): {e}", column.name()))?;
        object.insert(column.name().to_owned(), value);
    }
    Ok(object)
}

fn column_value(row: &MySqlRow, i: usize, type_name: &str) -> Result<Value, sqlx::Error> {
    let unsigned = type_name.contains("UNSIGNED");
    let base = type_name.split_whitespace().next().unwrap_or_default();
    Ok(match base {
        "BOOLEAN" => json(row.try_get::<Option<bool>, _>(i)?),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" if unsigned => {
            json(row.try_get_unchecked::<Option<u64>, _>(i)?)
        }
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            json(row.try_get_unchecked::<Option<i64>, _>(i)?)
        }
        "FLOAT" => json(row.try_get::<Option<f32>, _>(i)?),
        "DOUBLE" => json(row.try_get::<Option<f64>, _>(i)?),
        "DATETIME" => json(
            row.try_get::<Option<PrimitiveDateTime>, _>(i)?
                .map(|t| civil_text(t, ' ')),
        ),
        "TIMESTAMP" => json(row.try_get::<Option<OffsetDateTime>, _>(i)?.map(|t| {
            let t = t.to_offset(sqlx::types::time::UtcOffset::UTC);
            civil_text(PrimitiveDateTime::new(t.date(), t.time()), 'T') + "Z"
        })),
        "DATE" => json(
            row.try_get::<Option<sqlx::types::time::Date>, _>(i)?
                .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())),
        ),
        "TIME" => json(
            row.try_get::<Option<sqlx::mysql::types::MySqlTime>, _>(i)?
                .map(|t| t.to_string()),
        ),
        "JSON" => match row.try_get_unchecked::<Option<String>, _>(i)? {
            Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            None => Value::Null,
        },
        // Text, DECIMAL (exact: MySQL sends its digits), ENUM, SET, and
        // bytes (as far as they are UTF-8).
        _ => json(
            row.try_get_unchecked::<Option<Vec<u8>>, _>(i)?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ),
    })
}

/// `2024-05-01 12:00:00.000000000` (with `T` for the separator).
fn civil_text(t: PrimitiveDateTime, separator: char) -> String {
    format!(
        "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}.{:09}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn json<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}
