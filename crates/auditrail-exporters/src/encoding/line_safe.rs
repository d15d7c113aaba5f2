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
//! decodes back to the same string. [`write`] is what the sinks call: it
//! keeps serde_json's plain output for the lines that hold none of them
//! (nearly all), and uses the formatter for the others.

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

/// serde_json's compact output, with the characters of [`must_escape`]
/// written as `\uXXXX` in strings, in object keys, and in raw values
/// ([`serde_json::value::RawValue`], such as the canonical attributes).
/// Strings that hold none of them (nearly all) are written as they are,
/// after one vectorized pass over their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineSafeFormatter;

impl Formatter for LineSafeFormatter {
    #[inline]
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        write_escaped::<W, false>(writer, fragment)
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
        write_escaped::<W, true>(writer, fragment)
    }
}

/// Writes `text` with each character of [`must_escape`] as `\uXXXX`; in
/// `RAW` JSON text, a C0 byte (whitespace between tokens) as a space.
#[inline]
fn write_escaped<W: ?Sized + io::Write, const RAW: bool>(
    writer: &mut W,
    text: &str,
) -> io::Result<()> {
    // Printable ASCII needs nothing. One pass without an early exit, which
    // the compiler turns into vector compares (a byte-at-a-time scan made
    // encoding an event 60% slower, `file_sink_bench`).
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .fold(false, |other, &b| other | (b.wrapping_sub(0x20) >= 0x5f))
    {
        return writer.write_all(bytes);
    }
    write_escaped_slow::<W, RAW>(writer, text)
}

/// Whether `byte` can start a character [`must_escape`] that serde_json
/// has not escaped: DEL or a lead byte of [`may_start`] (serde_json passes
/// C0, `"` and `\` to `write_char_escape`, never in a fragment); in raw
/// text, C0 too.
#[inline(always)]
fn flagged<const RAW: bool>(byte: u8) -> bool {
    (byte == 0x7f) | (byte == 0xC2) | (byte == 0xD8) | (byte == 0xE2) | (RAW & (byte < 0x20))
}

/// The first byte at or after `at` that is [`flagged`]: 16-byte blocks
/// without one are skipped whole (non-ASCII text, such as a CJK prompt,
/// mostly has none).
#[inline]
fn next_flagged<const RAW: bool>(bytes: &[u8], mut at: usize) -> Option<usize> {
    while let Some(block) = bytes.get(at..at + 16) {
        if block.iter().fold(false, |any, &b| any | flagged::<RAW>(b)) {
            break;
        }
        at += 16;
    }
    bytes[at..]
        .iter()
        .position(|&b| flagged::<RAW>(b))
        .map(|offset| at + offset)
}

#[inline(never)]
fn write_escaped_slow<W: ?Sized + io::Write, const RAW: bool>(
    writer: &mut W,
    text: &str,
) -> io::Result<()> {
    let bytes = text.as_bytes();
    let mut run = 0;
    let mut at = 0;
    while let Some(found) = next_flagged::<RAW>(bytes, at) {
        at = found;
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

/// Appends `value` as compact JSON to `out`, with every character of
/// [`must_escape`] escaped: what every JSON line of the sinks is written
/// with.
///
/// The fast path: serde_json's own compact output, then one look over the
/// bytes written ([`holds_raw`]); only a line that holds such a character
/// is written again with [`LineSafeFormatter`]. Escaping fragment by
/// fragment made encoding an event 20-35% slower (`file_sink_bench`'s
/// events, ~30 strings each); the look costs ~5%.
pub fn write<T: ?Sized + Serialize>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let start = out.len();
    serde_json::to_writer(&mut *out, value)?;
    if holds_raw(&out[start..]) {
        out.truncate(start);
        to_writer(&mut *out, value)?;
    }
    Ok(())
}

/// Whether UTF-8 `text` holds a character that [`must_escape`], read from
/// the bytes without decoding: C0 and DEL; C1 (0xC2 0x80-0x9F); U+061C
/// (0xD8 0x9C); U+200E/F, U+2028-U+202E (0xE2 0x80 0x8E/0x8F/0xA8-0xAE)
/// and U+2066-U+2069 (0xE2 0x81 0xA6-0xA9).
pub fn holds_raw(text: &[u8]) -> bool {
    // Printable ASCII holds none. One pass without an early exit, which the
    // compiler turns into vector compares.
    if !text
        .iter()
        .fold(false, |other, &b| other | (b.wrapping_sub(0x20) >= 0x5f))
    {
        return false;
    }
    let mut at = 0;
    while let Some(found) = next_flagged::<true>(text, at) {
        let next = |n: usize| text.get(found + n).copied().unwrap_or(0);
        let raw = match text[found] {
            0xC2 => (0x80..=0x9f).contains(&next(1)),
            0xD8 => next(1) == 0x9c,
            0xE2 => match next(1) {
                0x80 => matches!(next(2), 0x8e | 0x8f | 0xa8..=0xae),
                0x81 => (0xa6..=0xa9).contains(&next(2)),
                _ => false,
            },
            _ => true, // C0 or DEL
        };
        if raw {
            return true;
        }
        at = found + 1;
    }
    false
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
    write(&mut out, value)?;
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
        fn the_byte_scan_agrees_with_the_definition(value in text()) {
            // serde_json's string, then every character that must be
            // escaped and is still raw (all but C0) as `\uXXXX`.
            let mut reference = String::new();
            for c in serde_json::to_string(&value).unwrap().chars() {
                if must_escape(c) {
                    reference.push_str(&format!("\\u{:04x}", u32::from(c)));
                } else {
                    reference.push(c);
                }
            }
            prop_assert_eq!(to_string(&value).unwrap(), reference);
        }

        #[test]
        fn holds_raw_agrees_with_the_definition(value in text()) {
            prop_assert_eq!(holds_raw(value.as_bytes()), value.chars().any(must_escape));
        }

        #[test]
        fn the_formatter_and_the_fast_path_write_the_same(value in text()) {
            let mut formatted = Vec::new();
            to_writer(&mut formatted, &value).unwrap();
            let mut written = b"before ".to_vec();
            write(&mut written, &value).unwrap();
            prop_assert_eq!(&written[7..], &formatted[..]);
        }

        #[test]
        fn text_that_needs_nothing_is_what_serde_json_writes(value in any::<String>()) {
            let clean: String = value.chars().filter(|&c| !must_escape(c)).collect();
            prop_assert_eq!(to_string(&clean).unwrap(), serde_json::to_string(&clean).unwrap());
        }
    }
}
