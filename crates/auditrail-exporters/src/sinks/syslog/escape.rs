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
//! other as `\uXXXX`: C0, DEL, C1, and the Unicode line and paragraph
//! separators, which some viewers break lines at.

/// Appends `value` to `out`, escaped: `\` and each of `reserved` as a
/// backslash and the character, control characters as described above.
pub fn escape_into(out: &mut String, value: &str, reserved: &[char]) {
    // Runs of characters that need nothing are copied whole: most values
    // need no escape at all, and a push per character was 45% of the
    // syslog sink's CPU (scripts/bench-sinks, perf).
    let mut run = 0;
    for (at, c) in value.char_indices() {
        let plain = match c {
            '\\' | '\n' | '\r' | '\t' => false,
            c if c.is_ascii_graphic() || c == ' ' => !reserved.contains(&c),
            c => !needs_code_point_escape(c) && !reserved.contains(&c),
        };
        if plain {
            continue;
        }
        out.push_str(&value[run..at]);
        run = at + c.len_utf8();
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
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
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
        assert_eq!(escape("a|b=c", &['|']), "a\\|b=c");
    }

    proptest! {
        #[test]
        fn escaping_round_trips_and_leaves_no_control_character(
            // Any text, and text dense in what must be escaped.
            value in prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\\x7f-\\u{9f}\\\\\"\\]|= a-z\u{e9}\u{2028}\u{2029}]{0,40}",
            ],
            reserved in prop::sample::select(vec![vec!['"', ']'], vec!['|'], vec!['='], vec![]]),
        ) {
            let escaped = escape(&value, &reserved);
            prop_assert!(!escaped.chars().any(needs_code_point_escape), "{escaped:?}");
            prop_assert_eq!(unescape(&escaped, &reserved), Some(value));
        }
    }
}
