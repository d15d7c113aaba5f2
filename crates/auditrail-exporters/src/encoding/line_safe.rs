//! The characters no text output may hold raw, and a JSON formatter that
//! writes them escaped.
//!
//! An audit line is read by people (in a terminal, a log viewer, a SIEM's
//! web page) and by programs that split on line breaks. A value that holds
//! a raw line break can forge a second line; ANSI escapes (ESC, and the C1
//! controls CSI and OSC) can repaint a terminal or hide what precedes
//! them; U+2028 and U+2029 break lines in some viewers and in JavaScript;
//! and the bidi controls reorder what a person sees (`invoice_\u{202e}fdp.exe`
//! shows as `invoice_exe.pdf`; CVE-2021-42574, "Trojan Source"). So every
//! text output writes these escaped:
//!
//! * every control character: C0 (U+0000-U+001F), DEL (U+007F), C1
//!   (U+0080-U+009F);
//! * U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR;
//! * the bidi controls: U+061C ARABIC LETTER MARK, U+200E/U+200F (LRM,
//!   RLM), U+202A-U+202E (LRE, RLE, PDF, LRO, RLO) and U+2066-U+2069
//!   (LRI, RLI, FSI, PDI).
//!
//! In UTF-8 each of them starts with an ASCII byte or with one of the lead
//! bytes 0xC2 (U+0080-U+00BF), 0xD8 (U+0600-U+063F) or 0xE2
//! (U+2000-U+2FFF), so a scan can skip every other byte without decoding:
//! [`may_start`].
//!
//! serde_json escapes C0 itself and leaves the rest raw (JSON allows them);
//! [`LineSafeFormatter`] escapes them as `\uXXXX`, which every JSON reader
//! decodes back to the same string.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// Whether `c` is a bidi control (see the module docs).
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether a text output must never hold `c` raw.
pub fn must_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}' || is_bidi_control(c)
}

/// Whether a non-ASCII byte can be the lead byte of a character that
/// [`must_escape`]: only these are worth decoding.
#[inline]
pub fn may_start(byte: u8) -> bool {
    matches!(byte, 0xC2 | 0xD8 | 0xE2)
}

/// A byte that can start a character a string fragment must have escaped
/// beyond what serde_json escapes: DEL, or a lead byte of [`may_start`].
/// (serde_json passes the C0 controls, `"` and `\` to `write_char_escape`,
/// never in a fragment.)
static FRAGMENT_MAYBE: [bool; 256] = {
    let mut table = [false; 256];
    table[0x7f] = true;
    table[0xC2] = true;
    table[0xD8] = true;
    table[0xE2] = true;
    table
};

/// The same for raw JSON text, which may also hold C0 bytes: the JSON
/// whitespace TAB, LF and CR between tokens (never inside a string).
static RAW_MAYBE: [bool; 256] = {
    let mut table = FRAGMENT_MAYBE;
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table
};

/// serde_json's compact output, with the characters of [`must_escape`]
/// written as `\uXXXX` in strings, in object keys, and in raw values
/// ([`serde_json::value::RawValue`], such as the canonical attributes).
/// Strings that hold none of them (nearly all) are written as they are,
/// after one table lookup per byte.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineSafeFormatter;

impl Formatter for LineSafeFormatter {
    #[inline]
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        write_escaped(writer, fragment, &FRAGMENT_MAYBE)
    }

    /// A raw value is valid JSON text, in which these characters can only
    /// stand inside strings (they are not JSON whitespace), so escaping
    /// them there keeps the value and makes it safe; a C0 byte in it can
    /// only be whitespace between tokens, which becomes a space.
    #[inline]
    fn write_raw_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        write_escaped(writer, fragment, &RAW_MAYBE)
    }
}

/// Writes `text` with each character of [`must_escape`] whose first byte
/// `maybe` flags as `\uXXXX`, C0 (raw text's whitespace) as a space.
fn write_escaped<W: ?Sized + io::Write>(
    writer: &mut W,
    text: &str,
    maybe: &[bool; 256],
) -> io::Result<()> {
    let bytes = text.as_bytes();
    let mut run = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&b| maybe[usize::from(b)]) {
        at += offset;
        // `at` is a character boundary: an ASCII byte or a lead byte.
        let c = text[at..].chars().next().expect("a character starts here");
        let len = c.len_utf8();
        if must_escape(c) {
            writer.write_all(&bytes[run..at])?;
            if c < ' ' {
                writer.write_all(b" ")?;
            } else {
                write_u_escape(writer, c)?;
            }
            run = at + len;
        }
        at += len;
    }
    writer.write_all(&bytes[run..])
}

/// `\uXXXX` (lower-case hex, as serde_json writes C0) for a character of
/// the Basic Multilingual Plane (every character [`must_escape`] is).
fn write_u_escape<W: ?Sized + io::Write>(writer: &mut W, c: char) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let code = u32::from(c);
    debug_assert!(code <= 0xffff);
    let nibble = |shift: u32| HEX[((code >> shift) & 0xf) as usize];
    writer.write_all(&[b'\\', b'u', nibble(12), nibble(8), nibble(4), nibble(0)])
}

/// Serializes `value` as compact JSON into `writer` with [`LineSafeFormatter`].
pub fn to_writer<W: io::Write, T: ?Sized + Serialize>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(writer, LineSafeFormatter);
    value.serialize(&mut serializer)
}

/// `value` as compact JSON text with [`LineSafeFormatter`].
pub fn to_string<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    to_writer(&mut out, value)?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;
    use serde_json::Value;

    /// Every character that must be escaped, and neighbours that share
    /// their lead bytes but must not be.
    const HOSTILE: &str = "a\u{0}b\n\r\t\u{1b}[31m\u{7f}\u{80}\u{85}\u{9b}\u{9f}\u{a0}é\u{600}\u{61b}\u{61c}\u{61d}\u{200d}\u{200e}\u{200f}\u{2010}\u{2028}\u{2029}\u{2029}\u{202a}\u{202e}\u{202f}\u{2065}\u{2066}\u{2069}\u{206a}—€漢🙂\"\\";

    /// `value` as canonical JSON attributes (`{"k": value, "nested": {value: [value]}}`).
    pub(crate) fn attributes_holding(value: &str) -> String {
        serde_json::to_string(&serde_json::json!({ "k": value, "nested": { value: [value] } }))
            .unwrap()
    }

    #[test]
    fn escapes_what_serde_json_leaves_raw() {
        let json = to_string(HOSTILE).unwrap();
        assert_eq!(
            json,
            "\"a\\u0000b\\n\\r\\t\\u001b[31m\\u007f\\u0080\\u0085\\u009b\\u009f\u{a0}é\u{600}\u{61b}\\u061c\u{61d}\u{200d}\\u200e\\u200f\u{2010}\\u2028\\u2029\\u2029\\u202a\\u202e\u{202f}\u{2065}\\u2066\\u2069\u{206a}—€漢🙂\\\"\\\\\""
        );
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), HOSTILE);
    }

    #[test]
    fn keys_and_raw_values_are_escaped_too() {
        let raw = serde_json::to_string(&serde_json::json!({ HOSTILE: [HOSTILE, 1] })).unwrap();
        let raw: &RawValue = serde_json::from_str(&raw).unwrap();
        let value = serde_json::json!({ HOSTILE: HOSTILE });
        for json in [to_string(raw).unwrap(), to_string(&value).unwrap()] {
            assert!(!json.chars().any(must_escape), "{json}");
        }
        let back: Value = serde_json::from_str(&to_string(raw).unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({ HOSTILE: [HOSTILE, 1] }));
    }

    #[test]
    fn whitespace_between_raw_tokens_becomes_a_space() {
        let raw: &RawValue = serde_json::from_str("{\"a\":\t[1,\r\n2]}").unwrap();
        assert_eq!(to_string(raw).unwrap(), "{\"a\": [1,  2]}");
    }

    /// Text dense in what must be escaped and in its lead bytes'
    /// neighbours, or any text at all: for the property tests of every
    /// text output.
    pub(crate) fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\\x7f-\\u{a0}\\u{5ff}-\\u{63f}\\u{2000}-\\u{206f}\\u{2fff}\"\\\\a-z é漢🙂]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn any_value_reads_back_the_same_with_nothing_raw(
            key in text(),
            value in text(),
            items in prop::collection::vec(text(), 0..4),
        ) {
            let value = serde_json::json!({ key.clone(): value, "items": items, "n": 7 });
            let json = to_string(&value).unwrap();
            prop_assert!(!json.chars().any(must_escape), "{json:?}");
            prop_assert_eq!(&serde_json::from_str::<Value>(&json).unwrap(), &value);
            // The same through a raw value (canonical attributes).
            let text = serde_json::to_string(&value).unwrap();
            let raw: &RawValue = serde_json::from_str(&text).unwrap();
            let json = to_string(raw).unwrap();
            prop_assert!(!json.chars().any(must_escape), "{json:?}");
            prop_assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), value);
        }

        #[test]
        fn text_that_needs_nothing_is_what_serde_json_writes(value in any::<String>()) {
            let clean: String = value.chars().filter(|&c| !must_escape(c)).collect();
            prop_assert_eq!(to_string(&clean).unwrap(), serde_json::to_string(&clean).unwrap());
        }
    }
}
