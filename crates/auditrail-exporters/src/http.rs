//! What the HTTP sinks (webhook, Splunk HEC, Elasticsearch) share about a
//! far side's answer: a request that got none, and a body quoted in an
//! error message.

use crate::ExportError;

/// At most this much of a refusal's body is quoted in the error (and so in
/// the dead letter and the log).
pub const MAX_BODY_IN_MESSAGE: usize = 512;

/// The first [`MAX_BODY_IN_MESSAGE`] bytes of `body` (cut at a character
/// boundary), with its full length when cut.
pub fn truncated(body: &str) -> String {
    if body.len() <= MAX_BODY_IN_MESSAGE {
        return body.to_owned();
    }
    let end = (0..=MAX_BODY_IN_MESSAGE)
        .rev()
        .find(|i| body.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}... ({} bytes)", &body[..end], body.len())
}

/// A request that got no answer: retryable, as a `timeout` or a
/// `connection` error.
pub fn transport(error: reqwest::Error) -> ExportError {
    let kind = if error.is_timeout() {
        "timeout"
    } else {
        "connection"
    };
    // reqwest's Display leaves out the cause ("error sending request"):
    // the chain names what happened (connection refused, reset...).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ExportError::retryable(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary_with_its_length() {
        assert_eq!(truncated("short"), "short");
        let long = "é".repeat(400); // 800 bytes, 2 per character
        let cut = truncated(&long);
        assert!(cut.starts_with(&"é".repeat(256)), "{cut}");
        assert!(cut.ends_with("... (800 bytes)"), "{cut}");
    }
}
