//! Segment files: their names, and what a crash can leave at their end.
//!
//! A segment is named `auditrail-<node>-<first seq, 20 digits>.ndjson`
//! (`.ndjson.zst` or `.ndjson.gz` once closed and compressed), so `ls`
//! sorts one node's segments by seq, which is also the order they were
//! written in. Characters of the node id that do not belong in a file name
//! are written as `%XX`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// What a segment file holds, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encoding {
    /// Still plain NDJSON: the open segment, or a closed one not yet (or
    /// never, with `compression = "none"`) compressed.
    Plain,
    Zstd,
    Gzip,
}

impl Encoding {
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Plain => ".ndjson",
            Encoding::Zstd => ".ndjson.zst",
            Encoding::Gzip => ".ndjson.gz",
        }
    }
}

/// A segment as its file name describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub node: String,
    pub first_seq: u64,
    pub encoding: Encoding,
}

const PREFIX: &str = "auditrail-";

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!(
            "{PREFIX}{}-{:020}{}",
            escape(&self.node),
            self.first_seq,
            self.encoding.suffix()
        )
    }

    /// The name of a segment file; `None` for any other file (a temporary
    /// file of a compression, something an operator put there).
    pub fn parse(file_name: &str) -> Option<SegmentName> {
        let rest = file_name.strip_prefix(PREFIX)?;
        // Longest suffix first: ".ndjson" is a suffix of neither other.
        let (rest, encoding) = [Encoding::Zstd, Encoding::Gzip, Encoding::Plain]
            .into_iter()
            .find_map(|e| rest.strip_suffix(e.suffix()).map(|r| (r, e)))?;
        let (node, seq) = rest.rsplit_once('-')?;
        if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SegmentName {
            node: unescape(node)?,
            first_seq: seq.parse().ok()?,
            encoding,
        })
    }

    /// This segment under another encoding (the file it is compressed to).
    pub fn with_encoding(&self, encoding: Encoding) -> SegmentName {
        SegmentName {
            encoding,
            ..self.clone()
        }
    }
}

fn escape(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // "." and ".." are names the directory already has a meaning for.
    if out.bytes().all(|b| b == b'.') {
        out = out.replace('.', "%2E");
    }
    out
}

fn unescape(escaped: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// How far back the tail is scanned at a time.
const CHUNK: u64 = 64 * 1024;

/// The byte just after the last `\n` of the `len` bytes of `file` (0 when
/// there is none): everything past it is a torn line.
pub fn complete_len(file: &mut File, len: u64) -> io::Result<u64> {
    find_newline_before(file, len).map(|at| at.map_or(0, |i| i + 1))
}

/// The last complete line of the first `complete` bytes of `file` (which
/// end in `\n`), without its newline; `None` when there is none.
pub fn last_line(file: &mut File, complete: u64) -> io::Result<Option<Vec<u8>>> {
    if complete == 0 {
        return Ok(None);
    }
    let start = find_newline_before(file, complete - 1)?.map_or(0, |i| i + 1);
    let mut line = vec![0; (complete - 1 - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Some(line))
}

/// The offset of the last `\n` among the first `end` bytes of `file`.
fn find_newline_before(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    let mut chunk_end = end;
    let mut buffer = vec![0; CHUNK as usize];
    while chunk_end > 0 {
        let chunk_start = chunk_end.saturating_sub(CHUNK);
        let part = &mut buffer[..(chunk_end - chunk_start) as usize];
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(chunk_start + i as u64));
        }
        chunk_end = chunk_start;
    }
    Ok(None)
}

/// fsync of a directory, so that files created, renamed or removed in it
/// survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and whatever of its parents is missing, so that it
/// survives a power cut: each new directory's entry is fsync'd in its
/// parent. The parent of `dir` is fsync'd even when `dir` already exists:
/// a run killed before making the entry durable left a directory that a
/// power cut would still take away, with every segment in it.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    for new in missing.iter().rev() {
        match fs::create_dir(new) {
            Ok(()) => {}
            // Another process (or a racing start) made it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // Each directory's entry lives in its parent: fsync the parent of
    // `dir`, and upwards as long as the parent is new too.
    let mut child = dir;
    loop {
        let parent = match child.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
        if !missing.contains(&parent) {
            return Ok(());
        }
        child = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_durable_dir_is_made_with_its_missing_parents_and_may_exist_already() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/archive");
        create_dir_durably(&dir).unwrap();
        assert!(dir.is_dir());
        create_dir_durably(&dir).unwrap();
        let file = root.path().join("a/file");
        fs::write(&file, b"x").unwrap();
        assert!(
            create_dir_durably(&file.join("below")).is_err(),
            "under a file"
        );
    }

    #[test]
    fn names_sort_by_first_seq_and_read_back() {
        let names: Vec<String> = [10, 9, 100_000_000_000, 1]
            .into_iter()
            .map(|seq| {
                SegmentName {
                    node: "node-a".into(),
                    first_seq: seq,
                    encoding: Encoding::Plain,
                }
                .file_name()
            })
            .collect();
        assert_eq!(names[3], "auditrail-node-a-00000000000000000001.ndjson");
        let mut sorted = names.clone();
        sorted.sort();
        let seqs: Vec<u64> = sorted
            .iter()
            .map(|n| SegmentName::parse(n).unwrap().first_seq)
            .collect();
        assert_eq!(seqs, [1, 9, 10, 100_000_000_000]);
    }

    #[test]
    fn every_encoding_and_odd_node_ids_round_trip() {
        for node in ["n1", "host-1.example", "a/b c%", "..", "日本"] {
            for encoding in [Encoding::Plain, Encoding::Zstd, Encoding::Gzip] {
                let name = SegmentName {
                    node: node.into(),
                    first_seq: 42,
                    encoding,
                };
                let file_name = name.file_name();
                assert!(!file_name.contains('/') && file_name != "..", "{file_name}");
                assert_eq!(SegmentName::parse(&file_name), Some(name), "{file_name}");
            }
        }
    }

    #[test]
    fn other_files_are_not_segments() {
        for other in [
            "auditrail-n1-00000000000000000001.ndjson.zst.tmp",
            "auditrail-n1-1.ndjson",
            "auditrail-n1-0000000000000000000x.ndjson",
            "notes.txt",
            "auditrail-00000000000000000001.ndjson",
        ] {
            assert_eq!(SegmentName::parse(other), None, "{other}");
        }
    }

    fn file_with(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(content).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn the_tail_after_the_last_newline_is_torn() {
        let long = "x".repeat(200_000);
        for (content, complete, last) in [
            ("", 0, None),
            ("{\"seq\":1", 0, None),
            ("a\n", 2, Some("a")),
            ("a\nb\n{\"se", 4, Some("b")),
            (&*format!("a\n{long}\n{long}"), 200_003, Some(long.as_str())),
        ] {
            let (_tmp, mut file) = file_with(content.as_bytes());
            let len = content.len() as u64;
            assert_eq!(complete_len(&mut file, len).unwrap(), complete);
            let line = last_line(&mut file, complete).unwrap();
            assert_eq!(line.as_deref(), last.map(str::as_bytes));
        }
    }
}
