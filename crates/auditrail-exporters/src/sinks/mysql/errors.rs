//! Which MySQL/MariaDB errors are worth a retry, which mean the sink is set
//! up wrongly, and which blame a record.
//!
//! Error numbers are the server's (the same in MySQL 8 and MariaDB 10.11
//! for everything below); the SQLSTATE class decides for numbers not
//! listed: `22` (data exception) and `23` (integrity constraint) blame the
//! record, anything else is retried.

use sqlx::mysql::MySqlDatabaseError;

use crate::ExportError;

/// Server errors that are transient: the same batch may succeed later.
const RETRYABLE: &[(u16, &str)] = &[
    (1040, "connection"), // too many connections
    (1053, "connection"), // server shutdown in progress
    (1152, "connection"), // aborted connection
    (1158, "connection"), // network read error
    (1159, "timeout"),    // network read timeout
    (1160, "connection"), // network write error
    (1161, "timeout"),    // network write timeout
    (1180, "server"),     // error during COMMIT
    (1181, "server"),     // error during ROLLBACK
    (1203, "connection"), // user has too many connections
    (1205, "timeout"),    // lock wait timeout
    (1213, "deadlock"),   // deadlock found
    (1290, "read_only"),  // --read-only
    (1317, "timeout"),    // query interrupted
    (1836, "read_only"),  // read-only mode
    (1927, "connection"), // connection killed (MariaDB)
    (1969, "timeout"),    // max_statement_time exceeded (MariaDB)
    (2006, "connection"), // server has gone away
    (2013, "connection"), // lost connection during query
    (3024, "timeout"),    // max_execution_time exceeded (MySQL)
    (4031, "connection"), // disconnected for inactivity (MySQL)
];

/// Server errors that mean the sink's setup is wrong, not any record.
const MISCONFIGURED: &[(u16, &str)] = &[
    (1044, "auth"),   // access denied to the database
    (1045, "auth"),   // access denied (wrong user or password)
    (1049, "schema"), // unknown database
    (1054, "schema"), // unknown column
    (1142, "auth"),   // command denied on the table
    (1143, "auth"),   // column access denied
    (1146, "schema"), // table does not exist
    (1526, "schema"), // no partition for the value
    (1698, "auth"),   // access denied (auth plugin)
];

pub(super) fn classify(error: sqlx::Error) -> ExportError {
    match error {
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(MySqlDatabaseError::number);
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = match number {
                Some(n) => format!("MySQL error {n} ({code}): {}", db.message()),
                None => format!("MySQL error ({code}): {}", db.message()),
            };
            let lookup = |table: &[(u16, &'static str)]| {
                number.and_then(|n| table.iter().find(|(x, _)| *x == n).map(|(_, k)| *k))
            };
            if let Some(kind) = lookup(RETRYABLE) {
                ExportError::retryable(kind, message)
            } else if let Some(kind) = lookup(MISCONFIGURED) {
                ExportError::misconfigured(kind, message)
            } else if code.starts_with("22") || code.starts_with("23") || number == Some(4025) {
                // 4025: MariaDB's CHECK constraint failure, which is how
                // its JSON columns reject invalid JSON.
                ExportError::permanent("data", message)
            } else {
                ExportError::retryable("server", message)
            }
        }
        sqlx::Error::Io(e) => ExportError::retryable("connection", e.to_string()),
        // A TLS mode the server cannot meet, or a certificate that does not
        // verify, is a setup problem, not a passing one.
        sqlx::Error::Tls(e) => ExportError::misconfigured("tls", e.to_string()),
        sqlx::Error::PoolTimedOut => ExportError::retryable(
            "connection",
            "no connection to the server within the timeout",
        ),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            ExportError::retryable("connection", error.to_string())
        }
        sqlx::Error::Protocol(message) => ExportError::retryable("connection", message),
        sqlx::Error::Configuration(e) => ExportError::misconfigured("config", e.to_string()),
        other => ExportError::permanent("data", other.to_string()),
    }
}
