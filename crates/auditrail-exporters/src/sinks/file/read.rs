//! Segments read back: the checkpoint lines the sink writes among its
//! events, and the events and checkpoints of a set of segment files, for
//! `auditrail verify --file` and `verify --sink` of a file sink.
//!
//! **Checkpoint lines.** A signed checkpoint is one line,
//! `{"auditrail_checkpoint":{"origin":…,"tree_size":…,"first_seq":…,"last_seq":…,"note":"<signed note>"}}`,
//! written after the events it covers. Its one top-level key is no
//! canonical field, so no event line (whose keys are the canonical fields,
//! or OCSF's) can be read as one, nor one as an event. Only `note` counts
//! when it is read back: the other fields are there for `jq` and people.
//!
//! **Events** are read back from either format (`json`: the canonical
//! fields; `ocsf`: `unmapped.auditrail` and `message`), into the exact
//! event the spool hashed: strings are JSON strings (decoded exactly), and
//! the attribute objects are the canonical JSON text itself, with the
//! escapes the line-safe writer added taken out again (`line_safe`: it
//! writes a raw DEL, C1, U+2028/U+2029 or bidi control inside them as
//! `\uXXXX`, which the canonical JSON never does).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::compress::open_segment;
use super::segment::{Encoding, SegmentName};
use crate::encoding::line_safe;
use crate::fields::Field;
use crate::{node_of_origin, ExportError, ReadBack, SignedCheckpoint, Stored, Walk};

/// The one top-level key of a checkpoint line.
pub const CHECKPOINT_KEY: &str = "auditrail_checkpoint";

/// Appends the checkpoint line of `signed` (with its newline) to `out`.
pub fn write_checkpoint_line(signed: &SignedCheckpoint, out: &mut Vec<u8>) {
    let c = &signed.checkpoint;
    let line = serde_json::json!({
        CHECKPOINT_KEY: {
            "origin": c.origin,
            "tree_size": c.size,
            "first_seq": c.first_seq,
            "last_seq": c.last_seq(),
            "note": signed.note,
        }
    });
    line_safe::write(out, &line).expect("serializing into a Vec cannot fail");
    out.push(b'\n');
}

/// What one line of a segment holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Event(Box<AuditEvent>),
    /// A checkpoint line's signed note.
    Checkpoint(String),
    /// Neither: why.
    Unreadable(String),
}

/// Reads one line (without its newline).
pub fn read_line(line: &[u8]) -> Line {
    let fields: BTreeMap<String, &RawValue> = match serde_json::from_slice(line) {
        Ok(fields) => fields,
        Err(e) => return Line::Unreadable(format!("not a JSON object ({e})")),
    };
    if let Some(raw) = fields.get(CHECKPOINT_KEY) {
        #[derive(Deserialize)]
        struct Note {
            note: String,
        }
        return match serde_json::from_str::<Note>(raw.get()) {
            Ok(n) => Line::Checkpoint(n.note),
            Err(e) => Line::Unreadable(format!("a checkpoint line without its note ({e})")),
        };
    }
    match event_of(&fields) {
        Ok(event) => Line::Event(Box::new(event)),
        Err(e) => Line::Unreadable(e),
    }
}

/// The event of a `json` line, or of an `ocsf` one.
fn event_of(fields: &BTreeMap<String, &RawValue>) -> Result<AuditEvent, String> {
    #[derive(Deserialize)]
    struct Unmapped<'a> {
        #[serde(borrow)]
        auditrail: BTreeMap<String, &'a RawValue>,
    }
    let ocsf;
    let (canonical, body) = match fields.get("unmapped") {
        Some(raw) if !fields.contains_key("seq") => {
            ocsf = serde_json::from_str::<Unmapped>(raw.get())
                .map_err(|e| format!("an OCSF line without `unmapped.auditrail` ({e})"))?;
            // OCSF leaves `message` out when the body is empty.
            let body = fields.get("message").map_or("\"\"", |m| m.get());
            (&ocsf.auditrail, Some(body))
        }
        _ => (fields, None),
    };
    let mut event = AuditEvent::default();
    for field in Field::stored() {
        let raw = match (field, body) {
            (Field::Body, Some(body)) => body,
            _ => canonical
                .get(field.name())
                .ok_or_else(|| format!("no `{}`: not an auditrail event", field.name()))?
                .get(),
        };
        let text = if raw.starts_with('"') {
            serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?
        } else if matches!(field, Field::Attributes | Field::ResourceAttributes) {
            unescape_raw(raw)
        } else {
            raw.to_owned()
        };
        field.set(&mut event, text)?;
    }
    Ok(event)
}

/// Raw JSON text as the line-safe writer left it, back to the text it was
/// given: inside strings, each `\uXXXX` of a character the writer escapes
/// and JSON does not (DEL, C1, U+2028/U+2029, the bidi controls) is the
/// character again. Every other escape is the canonical text's own.
fn unescape_raw(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if in_string && c == '\\' {
            let escaped = rest
                .strip_prefix("\\u")
                .and_then(|r| r.get(..4))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .and_then(char::from_u32)
                .filter(|&e| e as u32 >= 0x7f && line_safe::must_escape(e));
            if let Some(e) = escaped {
                out.push(e);
                rest = &rest[6..];
                continue;
            }
            // `\"`, `\\`, `\n`, `\u0001`...: as they are.
            let mut two = rest.chars();
            two.next();
            let next = two.next().map_or(0, char::len_utf8);
            out.push_str(&rest[..1 + next]);
            rest = &rest[1 + next..];
            continue;
        }
        if c == '"' {
            in_string = !in_string;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The `seq` at the start of a line cut short, when it is there.
fn seq_prefix(line: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(&line[..line.len().min(512)]);
    let after = &text[text.find("\"seq\":")? + 6..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One file of a [`SegmentFiles`].
#[derive(Debug, Clone)]
struct SegmentFile {
    path: PathBuf,
    encoding: Encoding,
    /// The node and first seq its name says, when it is named as segments
    /// are.
    named: Option<(String, u64)>,
}

impl SegmentFile {
    fn of(path: PathBuf) -> SegmentFile {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(SegmentName::parse);
        let encoding = match &name {
            Some(name) => name.encoding,
            None => match path.extension().and_then(|e| e.to_str()) {
                Some("zst") => Encoding::Zstd,
                Some("gz") => Encoding::Gzip,
                _ => Encoding::Plain,
            },
        };
        SegmentFile {
            path,
            encoding,
            named: name.map(|n| (n.node, n.first_seq)),
        }
    }

    fn node(&self) -> Option<&str> {
        self.named.as_ref().map(|(node, _)| node.as_str())
    }
}

/// A set of segment files, read back as a store: a file sink's directory,
/// or the files `auditrail verify --file` names (a file not named as a
/// segment is read all the same, its node taken from its lines).
#[derive(Debug, Clone)]
pub struct SegmentFiles {
    files: Vec<SegmentFile>,
}

fn io_error(path: &Path, e: io::Error) -> ExportError {
    ExportError::retryable("io", format!("{}: {e}", path.display()))
}

impl SegmentFiles {
    /// Every segment in `dir`, in seq order per node.
    pub fn in_dir(dir: &Path) -> Result<SegmentFiles, ExportError> {
        let names = super::segment_names(dir)?;
        Ok(SegmentFiles {
            files: names
                .into_iter()
                .map(|n| SegmentFile::of(dir.join(n.file_name())))
                .collect(),
        })
    }

    /// `paths`: files, or directories standing for the segments in them.
    /// Files named as segments are read in seq order per node (as `ls`
    /// lists them), whatever order they are given in; others where they
    /// are given.
    pub fn of_paths(paths: &[PathBuf]) -> Result<SegmentFiles, ExportError> {
        let mut files = Vec::new();
        for path in paths {
            let metadata = fs::metadata(path).map_err(|e| io_error(path, e))?;
            if metadata.is_dir() {
                files.extend(SegmentFiles::in_dir(path)?.files);
            } else {
                files.push(SegmentFile::of(path.clone()));
            }
        }
        // A stable sort of the named ones among their own places.
        let mut named: Vec<SegmentFile> = files
            .iter()
            .filter(|f| f.named.is_some())
            .cloned()
            .collect();
        named.sort_by(|a, b| a.named.cmp(&b.named).then(a.encoding.cmp(&b.encoding)));
        let mut named = named.into_iter();
        for file in files.iter_mut().filter(|f| f.named.is_some()) {
            *file = named.next().expect("as many as taken out");
        }
        Ok(SegmentFiles { files })
    }

    /// Whether it holds no file at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files that may hold `node`'s events: named for it, or not named.
    fn of_node(&self, node: &str) -> Vec<SegmentFile> {
        self.files
            .iter()
            .filter(|f| f.node().is_none_or(|n| n == node))
            .cloned()
            .collect()
    }

    fn lines(&self, files: Vec<SegmentFile>) -> Lines {
        Lines {
            files: files.into_iter(),
            current: None,
        }
    }

    /// Every line of `node`'s files, each as read, in order.
    fn each_line(
        &self,
        node: Option<&str>,
        mut each: impl FnMut(&SegmentFile, RawLine) -> bool,
    ) -> Result<(), ExportError> {
        let files = match node {
            Some(node) => self.of_node(node),
            None => self.files.clone(),
        };
        let mut lines = self.lines(files);
        while let Some((file, line)) = lines.next()? {
            if !each(&file, line) {
                break;
            }
        }
        Ok(())
    }
}

/// A line as read from a file.
struct RawLine {
    number: u64,
    bytes: Vec<u8>,
    /// The file ended without a newline after it.
    torn: bool,
    /// A read error (a compressed file cut short or damaged) ended the file
    /// here.
    error: Option<String>,
}

struct Lines {
    files: std::vec::IntoIter<SegmentFile>,
    current: Option<OpenFile>,
}

/// The file [`Lines`] reads now, and the number of its last line read.
struct OpenFile {
    file: SegmentFile,
    reader: BufReader<Box<dyn io::Read + Send>>,
    number: u64,
}

impl Lines {
    fn next(&mut self) -> Result<Option<(SegmentFile, RawLine)>, ExportError> {
        loop {
            let Some(OpenFile {
                file,
                reader,
                number,
            }) = self.current.as_mut()
            else {
                let Some(file) = self.files.next() else {
                    return Ok(None);
                };
                let reader =
                    open_segment(&file.path, file.encoding).map_err(|e| io_error(&file.path, e))?;
                self.current = Some(OpenFile {
                    file,
                    reader: BufReader::new(reader),
                    number: 0,
                });
                continue;
            };
            let mut bytes = Vec::new();
            *number += 1;
            let line = match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => None,
                Ok(_) => {
                    let torn = bytes.last() != Some(&b'\n');
                    if !torn {
                        bytes.pop();
                    }
                    Some(RawLine {
                        number: *number,
                        bytes,
                        torn,
                        error: None,
                    })
                }
                Err(e) => Some(RawLine {
                    number: *number,
                    bytes,
                    torn: true,
                    error: Some(e.to_string()),
                }),
            };
            let file = file.clone();
            match line {
                Some(line) => {
                    if line.torn {
                        self.current = None;
                    }
                    return Ok(Some((file, line)));
                }
                None => self.current = None,
            }
        }
    }
}

/// The walk of one node through a [`SegmentFiles`]; see [`ReadBack::walk`].
pub struct FileWalk {
    node: String,
    lines: Lines,
}

/// Lines read per page of a walk.
const WALK_PAGE: usize = 5_000;

#[async_trait]
impl Walk for FileWalk {
    // Reads local files on the caller's thread: only `verify` walks, and
    // it waits for nothing else meanwhile.
    async fn next_page(&mut self) -> Result<Vec<Stored>, ExportError> {
        let mut page = Vec::new();
        while page.len() < WALK_PAGE {
            let Some((file, line)) = self.lines.next()? else {
                break;
            };
            let at = format!("{} line {}", file.path.display(), line.number);
            if let Some(error) = line.error {
                page.push(Stored::Unreadable {
                    seq: seq_prefix(&line.bytes),
                    detail: format!("{at}: the file cannot be read on from here: {error}"),
                });
                continue;
            }
            if line.torn {
                page.push(Stored::Unreadable {
                    seq: seq_prefix(&line.bytes),
                    detail: format!(
                        "{at} is cut off mid-line (the file does not end in a newline): the segment was \
                         truncated, or a crash interrupted this write and the sink has not started since"
                    ),
                });
                continue;
            }
            match read_line(&line.bytes) {
                Line::Event(event) if event.node == self.node => page.push(Stored::Event(event)),
                Line::Event(event) if file.node() == Some(self.node.as_str()) => {
                    page.push(Stored::Unreadable {
                        seq: Some(event.seq),
                        detail: format!(
                            "{at}: an event of node {:?} in a segment of node {:?}",
                            event.node, self.node
                        ),
                    })
                }
                // Another node's, in a file not named for one.
                Line::Event(_) | Line::Checkpoint(_) => {}
                Line::Unreadable(why) => page.push(Stored::Unreadable {
                    seq: seq_prefix(&line.bytes),
                    detail: format!("{at}: {why}"),
                }),
            }
        }
        Ok(page)
    }
}

impl SegmentFiles {
    /// The walk of `node`'s events, in file order.
    pub fn walk_node(&self, node: &str) -> FileWalk {
        FileWalk {
            node: node.to_owned(),
            lines: self.lines(self.of_node(node)),
        }
    }
}

#[async_trait]
impl ReadBack for SegmentFiles {
    /// The nodes of the files' names, and of the events in files not named
    /// as segments; `""` for such a file that holds no event at all (its
    /// lines are then walked, and named, as node `""`'s).
    async fn nodes(&self) -> Result<Vec<String>, ExportError> {
        let mut nodes: Vec<String> = self
            .files
            .iter()
            .filter_map(|f| f.node())
            .map(str::to_owned)
            .collect();
        let unnamed: Vec<SegmentFile> = self
            .files
            .iter()
            .filter(|f| f.named.is_none())
            .cloned()
            .collect();
        for file in unnamed {
            let mut lines = self.lines(vec![file]);
            let mut any = false;
            while let Some((_, line)) = lines.next()? {
                if let Line::Event(event) = read_line(&line.bytes) {
                    nodes.push(event.node);
                    any = true;
                }
            }
            if !any {
                nodes.push(String::new());
            }
        }
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// `node`'s events above `after`, in file order (which is seq order
    /// unless lines were moved). The files that end before `after` are not
    /// read.
    async fn events(
        &self,
        node: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ExportError> {
        let mut files = self.of_node(node);
        // A named file whose next one starts at or below `after + 1` holds
        // nothing above `after`.
        let starts: Vec<Option<u64>> = files
            .iter()
            .map(|f| f.named.as_ref().map(|(_, s)| *s))
            .collect();
        let mut keep = starts.iter().enumerate().map(|(i, _)| {
            starts[i].is_none()
                || starts
                    .get(i + 1)
                    .copied()
                    .flatten()
                    .is_none_or(|next| next > after + 1)
        });
        files.retain(|_| keep.next().unwrap_or(true));
        let mut events = Vec::new();
        let mut lines = self.lines(files);
        while events.len() < limit {
            let Some((_, line)) = lines.next()? else {
                break;
            };
            if let Line::Event(event) = read_line(&line.bytes) {
                if event.node == node && event.seq > after {
                    events.push(*event);
                }
            }
        }
        Ok(events)
    }

    /// The checkpoint lines of `node`'s files whose origin names `node`
    /// (and those that cannot be read, in files named for it), in file
    /// order; a line written twice (a checkpoint sent again after a crash)
    /// once.
    async fn checkpoints(&self, node: &str) -> Result<Vec<String>, ExportError> {
        let mut notes: Vec<String> = Vec::new();
        self.each_line(Some(node), |file, line| {
            if let Line::Checkpoint(note) = read_line(&line.bytes) {
                let ours = match auditrail_integrity::Checkpoint::parse_unverified(&note) {
                    Ok(c) => node_of_origin(&c.origin) == node,
                    Err(_) => file.node() == Some(node),
                };
                if ours && !notes.contains(&note) {
                    notes.push(note);
                }
            }
            true
        })?;
        Ok(notes)
    }

    async fn walk<'a>(&'a self, node: &str) -> Result<Box<dyn Walk + 'a>, ExportError> {
        Ok(Box::new(self.walk_node(node)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::LineFormat;

    fn event() -> AuditEvent {
        AuditEvent {
            node: "n1".into(),
            seq: 9,
            event_id: "e-9".into(),
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: -3,
            trace_flags: 1,
            body: "a \u{202e}cat\u{7f}\nin a hat".into(),
            attributes: "{\"bidi\":\"x\u{202e}y\",\"del\":\"\u{7f}\u{85}\",\"esc\":\"\\\\u202e \\n \\u0001\",\"n\":1.5,\"sep\":\"\u{2028}\"}".into(),
            resource_attributes: r#"{"service.name":"ui"}"#.into(),
            prev_hash: [1; 32],
            hash: [2; 32],
            ..AuditEvent::default()
        }
    }

    #[test]
    fn event_lines_of_both_formats_read_back_exactly() {
        let e = event();
        for format in [LineFormat::Json, LineFormat::from_name("ocsf").unwrap()] {
            let line = format.encode(&e);
            assert!(!line.contains('\u{202e}'), "escaped: {line}");
            assert_eq!(
                read_line(line.as_bytes()),
                Line::Event(Box::new(e.clone())),
                "{line}"
            );
        }
        let empty = AuditEvent {
            body: String::new(),
            attributes: String::new(),
            ..event()
        };
        for format in [LineFormat::Json, LineFormat::from_name("ocsf").unwrap()] {
            let line = format.encode(&empty);
            assert_eq!(
                read_line(line.as_bytes()),
                Line::Event(Box::new(empty.clone())),
                "{line}"
            );
        }
    }

    #[test]
    fn checkpoint_lines_round_trip_and_are_never_events() {
        let key = auditrail_integrity::SignerKey::generate("auditrail-test").unwrap();
        let checkpoint = auditrail_integrity::Checkpoint {
            origin: "auditrail/n1/0123abcd".into(),
            size: 40,
            root: [3; 32],
            first_seq: 1,
            chain: [4; 32],
            previous: 30,
            time_unix_nano: 1_700_000_000_000_000_000,
        };
        let note = checkpoint.sign(&key).unwrap();
        let signed = SignedCheckpoint::of_note(note.clone()).unwrap();
        let mut out = Vec::new();
        write_checkpoint_line(&signed, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert!(out.ends_with(b"\n"));
        let line = &out[..out.len() - 1];
        assert_eq!(read_line(line), Line::Checkpoint(note.clone()));
        assert!(crate::encoding::seq_of_line(line).is_err(), "no seq");
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(value[CHECKPOINT_KEY]["tree_size"], 40);
        assert_eq!(value[CHECKPOINT_KEY]["origin"], "auditrail/n1/0123abcd");
        assert_eq!(
            auditrail_integrity::Checkpoint::open(&note, &key.verifier()).unwrap(),
            checkpoint
        );
        // An event whose body and attributes hold a checkpoint line's text
        // is still an event.
        let mimic = AuditEvent {
            body: String::from_utf8(line.to_vec()).unwrap(),
            attributes: format!("{{\"{CHECKPOINT_KEY}\":{{\"note\":\"x\"}}}}"),
            ..event()
        };
        let encoded = LineFormat::Json.encode(&mimic);
        assert_eq!(read_line(encoded.as_bytes()), Line::Event(Box::new(mimic)));
    }

    #[test]
    fn other_lines_are_unreadable_and_a_cut_line_keeps_its_seq() {
        for bad in [
            &b"not json"[..],
            b"{\"seq\":1}",
            b"[1]",
            b"{\"auditrail_checkpoint\":{}}",
        ] {
            assert!(matches!(read_line(bad), Line::Unreadable(_)), "{bad:?}");
        }
        let line = LineFormat::Json.encode(&event());
        assert_eq!(seq_prefix(&line.as_bytes()[..40]), Some(9));
        assert_eq!(seq_prefix(b"{\"node\":\"n1\",\"se"), None);
    }
}
