//! The one escaping scheme every syslog format uses for free text, so that
//! whatever an event holds, its message is one line: no raw CR, LF, NUL or
//! other control character ever reaches the wire.
//!
//! A backslash always becomes `\\`, so the escaping is reversible
//! ([`unescape`]). Each format adds the characters its grammar reserves
//! (RFC 5424 SD-PARAM values: `"` and `]`; CEF header fields: `|`; CEF
//! extension values: `=`), written as a backslash and the character, which
//! is what those grammars define. Control characters become `\n`, `\r`,
//! `\t` (the forms CEF defines, and the ones a reader recognises), any
//! other as `\uXXXX`: C0, DEL, C1, the Unicode line and paragraph
//! separators, which some viewers break lines at, and the bidi controls,
//! which reorder what a person sees (the set every text output escapes:
//! [`crate::encoding::line_safe`]).

use crate::encoding::line_safe::{may_start, must_escape};

/// Appends `value` to `out`, escaped: `\` and each of `reserved` as a
/// backslash and the character, control characters as described above.
pub fn escape_into(out: &mut String, value: &str, reserved: &[char]) {
    // Scanned byte by byte, and runs that need nothing copied whole: most
    // values need no escape at all, and decoding and pushing each
    // character was 45% of the syslog sink's CPU (scripts/bench-sinks,
    // perf). Only ASCII, and the lead bytes of C1 controls (0xC2), of
    // U+061C (0xD8) and of the line and paragraph separators and the other
    // bidi controls (0xE2), can start a character that needs escaping,
    // unless `reserved` holds non-ASCII characters.
    let mut special = [false; 128];
    for (b, flag) in special.iter_mut().enumerate() {
        *flag = b < 0x20 || b == 0x7f || b == usize::from(b'\\');
    }
    let mut wide_reserved = false;
    for &c in reserved {
        match u8::try_from(c) {
            Ok(b) if b.is_ascii() => special[usize::from(b)] = true,
            _ => wide_reserved = true,
        }
    }
    let bytes = value.as_bytes();
    let mut run = 0;
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        let maybe = if b.is_ascii() {
            special[usize::from(b)]
        } else {
            may_start(b) || (wide_reserved && b >= 0xC0)
        };
        if !maybe {
            at += 1;
            continue;
        }
        // `at` is a character boundary: an ASCII byte or a lead byte.
        let c = value[at..].chars().next().expect("a character starts here");
        let len = c.len_utf8();
        if !c.is_ascii() && !needs_code_point_escape(c) && !reserved.contains(&c) {
            at += len;
            continue;
        }
        out.push_str(&value[run..at]);
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_code_point_escape(c) => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                out.push('\\');
                out.push(c);
            }
        }
        at += len;
        run = at;
    }
    out.push_str(&value[run..]);
}

/// `value` escaped by [`escape_into`].
pub fn escape(value: &str, reserved: &[char]) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value, reserved);
    out
}

/// Characters that may never appear raw in a syslog line.
fn needs_code_point_escape(c: char) -> bool {
    must_escape(c)
}

/// Reverses [`escape`] with the same `reserved` characters; `None` for text
/// that escape could not have written. What a SIEM parser or an auditor
/// does to get the exact value back.
pub fn unescape(text: &str, reserved: &[char]) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if needs_code_point_escape(c) || reserved.contains(&c) {
                return None;
            }
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                if hex.len() != 4 {
                    return None;
                }
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            c if reserved.contains(&c) => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_and_reserved_characters_are_escaped() {
        assert_eq!(
            escape(
                "a\"b]c\\d\ne\r\tf\0\u{1b}[31m\u{7f}\u{85}\u{2028}é",
                &['"', ']']
            ),
            "a\\\"b\\]c\\\\d\\ne\\r\\tf\\u0000\\u001b[31m\\u007f\\u0085\\u2028é"
        );
        // The bidi controls, and neighbours with the same lead bytes that
        // stay as they are.
        assert_eq!(
            escape(
                "\u{600}\u{61c}\u{61d} \u{200d}\u{200e}\u{200f}\u{2010} \u{2029}\u{202a}\u{202e}\u{202f} \u{2065}\u{2066}\u{2069}\u{206a} invoice_\u{202e}fdp.exe",
                &[]
            ),
            "\u{600}\\u061c\u{61d} \u{200d}\\u200e\\u200f\u{2010} \\u2029\\u202a\\u202e\u{202f} \u{2065}\\u2066\\u2069\u{206a} invoice_\\u202efdp.exe"
        );
        assert_eq!(escape("a|b=c", &['|']), "a\\|b=c");
    }

    /// The plain definition, a character at a time, that `escape_into`
    /// must agree with.
    fn reference(value: &str, reserved: &[char]) -> String {
        let mut out = String::new();
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if needs_code_point_escape(c) => {
                    out.push_str(&format!("\\u{:04x}", u32::from(c)))
                }
                c if reserved.contains(&c) => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn the_byte_scan_agrees_with_the_definition(
            // Any text, and text dense in the lead bytes 0xC2, 0xD8 and
            // 0xE2: what must be escaped and its neighbours.
            value in prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\\x7f-\\u{a0}\\u{5ff}-\\u{63f}\\u{2000}-\\u{206f}\\u{2fff} a-z\u{e9}]{0,40}",
            ],
            wide in any::<bool>(),
        ) {
            let reserved: &[char] = if wide { &['"', ']', 'é', '\u{2029}'] } else { &['"', ']'] };
            prop_assert_eq!(escape(&value, reserved), reference(&value, reserved));
        }
    }

    proptest! {
        #[test]
        fn escaping_round_trips_and_leaves_no_control_character(
            // Any text, and text dense in what must be escaped.
            value in prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\\x7f-\\u{9f}\\\\\"\\]|= a-z\u{e9}\u{2028}\u{2029}\u{61c}\u{200e}\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}]{0,40}",
            ],
            reserved in prop::sample::select(vec![vec!['"', ']'], vec!['|'], vec!['='], vec![]]),
        ) {
            let escaped = escape(&value, &reserved);
            prop_assert!(!escaped.chars().any(needs_code_point_escape), "{escaped:?}");
            prop_assert_eq!(unescape(&escaped, &reserved), Some(value));
        }
    }
}
