//! Which ClickHouse errors are worth a retry, which mean the sink is set up
//! wrongly, and which blame a record.
//!
//! A failed HTTP request carries ClickHouse's exception code in the
//! `X-ClickHouse-Exception-Code` header (newer servers; 18.16 sends none)
//! and in the body, whose shape changed over the years:
//!
//! ```text
//! Code: 60, e.displayText() = DB::Exception: Table default.t doesn't exist., e.what() = DB::Exception   (18.16, no header)
//! Code: 62. DB::Exception: Syntax error: ... (SYNTAX_ERROR) (version 26.9.2.1)                            (modern)
//! ```
//!
//! The code decides (tables below); a code in none of them is retried when
//! the HTTP status is 5xx and blames the batch otherwise. Without a code
//! (a proxy in front of ClickHouse answered), the status decides.

use crate::ExportError;

/// Transient: the same batch may succeed later.
const RETRYABLE: &[(u32, &str)] = &[
    (159, "timeout"),    // TIMEOUT_EXCEEDED
    (164, "read_only"),  // READONLY
    (202, "server"),     // TOO_MANY_SIMULTANEOUS_QUERIES
    (203, "connection"), // NO_FREE_CONNECTION
    (209, "timeout"),    // SOCKET_TIMEOUT
    (210, "connection"), // NETWORK_ERROR
    (236, "server"),     // ABORTED
    (241, "server"),     // MEMORY_LIMIT_EXCEEDED
    (242, "read_only"),  // TABLE_IS_READ_ONLY (a replica lost Keeper)
    (252, "server"),     // TOO_MANY_PARTS (inserts faster than merges)
    (285, "server"),     // TOO_FEW_LIVE_REPLICAS
    (286, "server"),     // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    (319, "server"),     // UNKNOWN_STATUS_OF_INSERT
    (394, "server"),     // QUERY_WAS_CANCELLED
    (425, "server"),     // SYSTEM_ERROR
    (439, "server"),     // CANNOT_SCHEDULE_TASK
    (999, "server"),     // KEEPER_EXCEPTION
];

/// The sink's setup is wrong (or auditrail has a bug); no record is to blame.
const MISCONFIGURED: &[(u32, &str)] = &[
    (8, "schema"),   // THERE_IS_NO_COLUMN
    (10, "schema"),  // NOT_FOUND_COLUMN_IN_BLOCK
    (16, "schema"),  // NO_SUCH_COLUMN_IN_TABLE
    (46, "query"),   // UNKNOWN_FUNCTION
    (47, "schema"),  // UNKNOWN_IDENTIFIER
    (60, "schema"),  // UNKNOWN_TABLE
    (62, "query"),   // SYNTAX_ERROR: auditrail's SQL, not a record
    (81, "schema"),  // UNKNOWN_DATABASE
    (115, "config"), // UNKNOWN_SETTING
    (192, "auth"),   // UNKNOWN_USER
    (193, "auth"),   // WRONG_PASSWORD
    (194, "auth"),   // REQUIRED_PASSWORD
    (195, "auth"),   // IP_ADDRESS_NOT_ALLOWED
    (291, "auth"),   // DATABASE_ACCESS_DENIED
    (497, "auth"),   // ACCESS_DENIED
    (516, "auth"),   // AUTHENTICATION_FAILED
];

/// Something in the batch cannot be stored: the delivery loop splits the
/// batch and dead-letters the record(s) to blame.
const PERMANENT: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    407, // DECIMAL_OVERFLOW (a time outside DateTime64's range)
];

/// Longest server message kept in an error (syntax errors list every
/// keyword of the dialect).
const MAX_MESSAGE: usize = 1000;

/// The exception code at the start of a ClickHouse error body, in either
/// the modern (`Code: 62. DB::Exception`) or the 18.x (`Code: 60,
/// e.displayText()`) shape.
pub(super) fn parse_code(body: &str) -> Option<u32> {
    let at = body.find("Code: ")?;
    let digits: &str = &body[at + 6..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || !digits[end..].starts_with(['.', ',']) {
        return None;
    }
    digits[..end].parse().ok()
}

/// The exception text without the `Code: N` prefix and 18.x's
/// `, e.what() = DB::Exception` suffix, on one line.
pub(super) fn exception_text(body: &str) -> String {
    let mut text = body.trim();
    // chdb sometimes nests the prefix; strip every layer of it.
    while let Some(rest) = text.strip_prefix("Code: ") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let rest = rest
            .strip_prefix(". ")
            .or_else(|| rest.strip_prefix(", e.displayText() = "))
            .unwrap_or(rest);
        text = rest.strip_prefix("DB::Exception: ").unwrap_or(rest).trim();
    }
    let text = text
        .strip_suffix(", e.what() = DB::Exception")
        .unwrap_or(text)
        .trim();
    let mut one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !one_line.is_char_boundary(cut) {
            cut -= 1;
        }
        one_line.truncate(cut);
        one_line.push_str(" …");
    }
    one_line
}

/// Classifies a failed response: HTTP `status`, the exception-code header
/// when the server sent one, and the body.
pub(super) fn classify(status: u16, header_code: Option<u32>, body: &str) -> ExportError {
    let code = header_code.or_else(|| parse_code(body));
    let text = exception_text(body);
    let Some(code) = code else {
        let message = format!("HTTP {status} without a ClickHouse exception code: {text}");
        return match status {
            401 | 403 => ExportError::misconfigured("auth", message),
            404 => ExportError::misconfigured(
                "config",
                format!("{message} (is `url` ClickHouse's HTTP interface?)"),
            ),
            408 | 429 | 500..=599 => ExportError::retryable("server", message),
            _ => ExportError::permanent("data", message),
        };
    };
    let message = format!("ClickHouse code {code} (HTTP {status}): {text}");
    let lookup = |table: &[(u32, &'static str)]| {
        table
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, kind)| *kind)
    };
    if let Some(kind) = lookup(RETRYABLE) {
        ExportError::retryable(kind, message)
    } else if let Some(kind) = lookup(MISCONFIGURED) {
        ExportError::misconfigured(kind, message)
    } else if PERMANENT.contains(&code) {
        ExportError::permanent("data", message)
    } else if status >= 500 {
        ExportError::retryable("server", message)
    } else {
        ExportError::permanent("data", message)
    }
}

/// A request that got no answer from ClickHouse.
pub(super) fn transport(mut error: reqwest::Error) -> ExportError {
    // An insert's URL carries the whole statement and the deduplication
    // token, which bury the cause in /readyz and the logs: keep the
    // server's address only (and never a password written into `url`).
    if let Some(url) = error.url_mut() {
        url.set_query(None);
        let _ = url.set_password(None);
    }
    // The chain has the useful part ("connection refused", "dns error").
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        ExportError::retryable("timeout", message)
    } else if error.is_builder() {
        ExportError::misconfigured("config", message)
    } else {
        ExportError::retryable("connection", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    const LEGACY_UNKNOWN_TABLE: &str = "Code: 60, e.displayText() = DB::Exception: Table default.nosuch doesn't exist., e.what() = DB::Exception\n";
    const LEGACY_PARSE: &str = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc\",\"tf\":1}: (while read the value of key sev): (at row 1)\n, e.what() = DB::Exception\n";
    const MODERN_SYNTAX: &str = "Code: 62. DB::Exception: Syntax error: failed at position 1 (SELEC): SELEC 1. Maybe you meant: SELECT. (SYNTAX_ERROR) (version 26.9.2.1)\n";
    const MODERN_OVERFLOW: &str = "Code: 407. DB::Exception: Decimal math overflow: (while reading the value of key time): While executing ParallelParsingBlockInputFormat. (DECIMAL_OVERFLOW) (version 26.9.2.1)\n";

    #[test]
    fn codes_parse_from_both_body_shapes() {
        assert_eq!(parse_code(LEGACY_UNKNOWN_TABLE), Some(60));
        assert_eq!(parse_code(LEGACY_PARSE), Some(27));
        assert_eq!(parse_code(MODERN_SYNTAX), Some(62));
        assert_eq!(parse_code(MODERN_OVERFLOW), Some(407));
        assert_eq!(
            parse_code("Code: 62. DB::Exception: Code: 62. DB::Exception: x"),
            Some(62)
        );
        assert_eq!(parse_code("502 Bad Gateway"), None);
        assert_eq!(parse_code("Code: abc"), None);
        assert_eq!(parse_code("Code: 12 apples"), None);
    }

    #[test]
    fn texts_lose_prefix_and_suffix() {
        assert_eq!(
            exception_text(LEGACY_UNKNOWN_TABLE),
            "Table default.nosuch doesn't exist."
        );
        assert_eq!(
            exception_text(LEGACY_PARSE),
            "Cannot parse input: expected \" before: abc\",\"tf\":1}: (while read the value of key sev): (at row 1)"
        );
        assert!(exception_text(MODERN_SYNTAX).starts_with("Syntax error: failed at position 1"));
        assert_eq!(
            exception_text("Code: 62. DB::Exception: Code: 62. DB::Exception: Empty query"),
            "Empty query"
        );
        let long = format!("Code: 62. DB::Exception: {}", "é".repeat(2000));
        assert!(exception_text(&long).len() <= MAX_MESSAGE + 4);
    }

    #[test]
    fn codes_decide_the_class() {
        // 18.16 sends no header: the body decides, even with a 500 status.
        let e = classify(500, None, LEGACY_PARSE);
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.message.contains("code 27"), "{}", e.message);
        let e = classify(404, None, LEGACY_UNKNOWN_TABLE);
        assert_eq!((e.class, e.kind), (ErrorClass::Misconfigured, "schema"));
        assert!(e.message.contains("nosuch"), "{}", e.message);
        let e = classify(400, Some(62), MODERN_SYNTAX);
        assert_eq!((e.class, e.kind), (ErrorClass::Misconfigured, "query"));
        assert_eq!(
            classify(500, Some(407), MODERN_OVERFLOW).class,
            ErrorClass::Permanent
        );
        // The header wins over the body.
        assert_eq!(
            classify(500, Some(252), "Code: 27. DB::Exception: x").class,
            ErrorClass::Retryable
        );
        let e = classify(401, None, "Code: 193, e.displayText() = DB::Exception: Wrong password for user default, e.what() = DB::Exception");
        assert_eq!((e.class, e.kind), (ErrorClass::Misconfigured, "auth"));
        let e = classify(
            516,
            Some(516),
            "Code: 516. DB::Exception: default: Authentication failed",
        );
        assert_eq!(e.kind, "auth");
        assert_eq!(classify(500, Some(241), "").class, ErrorClass::Retryable);
        // Unknown codes: 5xx is retried, anything else blames the batch.
        assert_eq!(classify(500, Some(4242), "").class, ErrorClass::Retryable);
        assert_eq!(classify(400, Some(4242), "").class, ErrorClass::Permanent);
    }

    #[test]
    fn statuses_decide_without_a_code() {
        for status in [429, 502, 503, 504] {
            assert_eq!(
                classify(status, None, "Bad Gateway").class,
                ErrorClass::Retryable
            );
        }
        assert_eq!(
            classify(403, None, "forbidden").class,
            ErrorClass::Misconfigured
        );
        assert_eq!(
            classify(413, None, "Request Entity Too Large").class,
            ErrorClass::Permanent
        );
    }
}
