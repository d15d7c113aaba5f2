//! A value pattern as users write it on the command line and in rules:
//! a value, matched exactly, or a prefix ending in `*`.
//!
//! `--target 'outputs/alice/*'` finds every file under a folder, and
//! `event = "auth.*"` every event of a family, without regular expressions
//! (which would let one query cost anything) or globbing rules to learn.

use std::fmt;

/// `value` matches exactly; `prefix*` matches every value that starts with
/// `prefix` (so `*` alone matches every value, the empty one included).
///
/// Only a trailing `*` is special: a `*` anywhere else is a literal
/// character, as in a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValuePattern {
    Exact(String),
    Prefix(String),
}

impl ValuePattern {
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => ValuePattern::Prefix(prefix.to_owned()),
            None => ValuePattern::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValuePattern::Exact(want) => value == want,
            ValuePattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for ValuePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValuePattern::Exact(value) => f.write_str(value),
            ValuePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ValuePattern;

    #[test]
    fn exact_and_prefix() {
        let exact = ValuePattern::parse("outputs/a.png");
        assert!(exact.matches("outputs/a.png"));
        assert!(!exact.matches("outputs/a.png.bak"));
        assert!(!exact.matches("outputs/a.pn"));

        let folder = ValuePattern::parse("outputs/alice/*");
        assert!(folder.matches("outputs/alice/1.png"));
        assert!(folder.matches("outputs/alice/"));
        assert!(!folder.matches("outputs/alicex/1.png"));
        assert!(!folder.matches("outputs/bob/1.png"));

        assert!(ValuePattern::parse("*").matches(""));
        // A `*` inside is a character of the value.
        let star = ValuePattern::parse("a*b");
        assert!(star.matches("a*b"));
        assert!(!star.matches("axb"));
    }

    #[test]
    fn display_round_trips() {
        for text in ["a", "a*", "*", "", "a*b*"] {
            assert_eq!(ValuePattern::parse(text).to_string(), text);
        }
    }
}
