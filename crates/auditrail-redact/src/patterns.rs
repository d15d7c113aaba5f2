//! The built-in patterns of `regex` rules: e-mail addresses, API keys, phone
//! numbers, IPv4 and IPv6 addresses.
//!
//! Each is a regex that finds candidates and, where a regex alone would
//! match too much, a check that the candidate really is one (an IPv4 octet
//! is at most 255, a phone number has 7 to 15 digits, an IPv6 address
//! parses). A candidate that fails its check is left as it is.
//!
//! The patterns lean towards redacting: a version string `1.2.3.4` is
//! taken for an IPv4 address, a grouped number `555-123-4567` for a phone
//! number. Bare digit runs (`5551234567`) are not taken for phone numbers:
//! ids and timestamps look the same; redact an attribute that holds phone
//! numbers by its key instead.

use std::net::Ipv6Addr;

/// Whether a candidate `haystack[start..end]` really is what its pattern
/// looks for.
pub type Check = fn(haystack: &str, start: usize, end: usize) -> bool;

/// Whether a text may hold a match at all, from its [`Shape`]: a cheap
/// necessary condition, so that the many short values that cannot (most
/// attributes) cost no regex search.
pub type Possible = fn(shape: &Shape, text: &str) -> bool;

/// What a text holds, counted in one pass over its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub digits: usize,
    pub dots: usize,
    pub colons: usize,
    pub at_signs: usize,
    /// `+` and `(`: how phone numbers start.
    pub phone_starts: usize,
    /// Spaces, `-` and `/` (and the dots above): what separates digit groups.
    pub separators: usize,
}

impl Shape {
    pub fn of(text: &str) -> Shape {
        let mut shape = Shape::default();
        for b in text.bytes() {
            match b {
                b'0'..=b'9' => shape.digits += 1,
                b'.' => shape.dots += 1,
                b':' => shape.colons += 1,
                b'@' => shape.at_signs += 1,
                b'+' | b'(' => shape.phone_starts += 1,
                b' ' | b'-' | b'/' => shape.separators += 1,
                _ => {}
            }
        }
        shape
    }
}

/// A built-in pattern.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name in the config (`patterns = ["email"]`) and in `{pattern}`.
    pub name: &'static str,
    /// The candidates.
    pub regex: &'static str,
    /// Whether a candidate is one.
    pub check: Check,
    /// Whether the text may hold one at all.
    pub possible: Possible,
}

/// The literals every API key of `api_key` starts with (`gh` for `ghp_`,
/// `github_pat_` and the like).
const API_KEY_PREFIXES: &[&str] = &[
    "sk-", "sk_", "rk_", "AKIA", "ASIA", "gh", "AIza", "xox", "hf_",
];

/// The check of a pattern whose regex says it all.
pub fn always(_: &str, _: usize, _: usize) -> bool {
    true
}

/// For own regexes: the regex itself is the only test.
pub fn maybe(_: &Shape, _: &str) -> bool {
    true
}

/// In the order they are tried at one position: API keys and e-mail
/// addresses before the numbers that could start inside them, IP addresses
/// before phone numbers (`10.20.30.40` is an address, not a number).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "api_key",
        // OpenAI (sk-…, sk-proj-…), Anthropic (sk-ant-…), Stripe
        // (sk_live_…, rk_test_…), AWS access key ids, GitHub tokens,
        // Google API keys, Slack tokens, Hugging Face tokens.
        regex: r"(?-u:\b)(?:sk-[A-Za-z0-9_\-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|AIza[0-9A-Za-z_\-]{35}|xox[abposr]-[A-Za-z0-9\-]{10,}|hf_[A-Za-z0-9]{30,})",
        check: always,
        // The shortest key is a Slack token: `xoxb-` and 10 more.
        possible: |_, text| text.len() >= 15 && API_KEY_PREFIXES.iter().any(|p| text.contains(p)),
    },
    Builtin {
        name: "email",
        regex: r"[A-Za-z0-9](?:[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-])?@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}",
        check: always,
        possible: |shape, _| shape.at_signs > 0,
    },
    Builtin {
        name: "ipv6",
        // Candidates: hex groups and at least two colons, maybe an IPv4
        // tail; `Ipv6Addr` decides (a time 12:30:45 or a MAC address does
        // not parse). Unbounded repeats keep the regex's automaton small:
        // counted ones ({0,4}, {2,7}) made it ~30 times slower.
        regex: r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:(?:[0-9A-Fa-f]*:)*(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]*)",
        check: is_ipv6,
        // An address of fewer than 8 groups needs `::`; one without it
        // has 7 colons, or 6 and an IPv4 tail.
        possible: |shape, text| shape.colons >= 6 || (shape.colons >= 2 && text.contains("::")),
    },
    Builtin {
        name: "ipv4",
        regex: r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)",
        check: is_ipv4,
        possible: |shape, _| shape.dots >= 3 && shape.digits >= 4,
    },
    Builtin {
        name: "phone",
        // +CC and groups (E.164 as people write it); a bracketed area code;
        // 3-3-4 groups; a national number with a leading trunk 0 and
        // spaces or a slash (not dashes: 05-12-2026 is a date). The check
        // counts the digits, so the regex needs no counted repeats, and a
        // separator always ends a digit run: a regex that may split a run
        // anywhere was ~20 times slower on long hex strings.
        regex: r"\+[1-9][0-9]*(?:[ .\-]?\([0-9]+\))?(?:[ .\-][0-9]+)*|\([0-9]+\)[ .\-]?[0-9]+(?:[ .\-][0-9]+)*|(?-u:\b)[0-9]{3}[ .\-][0-9]{3}[ .\-][0-9]{4}(?-u:\b)|(?-u:\b)0[0-9]+[ /][0-9]+(?: [0-9]+)*(?-u:\b)",
        check: is_phone,
        possible: |shape, _| {
            shape.digits >= 7 && shape.phone_starts + shape.separators + shape.dots > 0
        },
    },
];

/// The built-in patterns a config name stands for: one, or both IP
/// patterns for `ip`.
pub fn lookup(name: &str) -> Option<Vec<&'static Builtin>> {
    if name == "ip" {
        return Some(
            BUILTINS
                .iter()
                .filter(|b| b.name.starts_with("ip"))
                .collect(),
        );
    }
    BUILTINS.iter().find(|b| b.name == name).map(|b| vec![b])
}

/// The names `patterns` accepts, for error messages.
pub fn names() -> String {
    let mut names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
    names.push("ip");
    names.join(", ")
}

fn char_before(haystack: &str, at: usize) -> Option<char> {
    haystack[..at].chars().next_back()
}

fn char_after(haystack: &str, at: usize) -> Option<char> {
    haystack[at..].chars().next()
}

/// A digit after a dot: the candidate is part of a longer dotted number
/// (`1.2.3.4.5`, an OID), not an address.
fn dotted_on(haystack: &str, start: usize, end: usize) -> bool {
    let before = haystack[..start]
        .strip_suffix('.')
        .and_then(|h| h.chars().next_back());
    let after = haystack[end..]
        .strip_prefix('.')
        .and_then(|h| h.chars().next());
    before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit())
}

fn is_ipv4(haystack: &str, start: usize, end: usize) -> bool {
    let candidate = &haystack[start..end];
    // Octets by value, so 010.000.000.001 counts as well as 10.0.0.1.
    candidate
        .split('.')
        .all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255))
        && !dotted_on(haystack, start, end)
}

fn is_ipv6(haystack: &str, start: usize, end: usize) -> bool {
    // Inside a word or a longer token (`std::vec`, `Foo::bar`) it is code,
    // not an address.
    let joined = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':');
    if joined(char_before(haystack, start)) || joined(char_after(haystack, end)) {
        return false;
    }
    haystack[start..end].parse::<Ipv6Addr>().is_ok()
}

fn is_phone(haystack: &str, start: usize, end: usize) -> bool {
    let digits = haystack[start..end]
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    (7..=15).contains(&digits) && !char_after(haystack, end).is_some_and(|c| c.is_ascii_digit())
}
