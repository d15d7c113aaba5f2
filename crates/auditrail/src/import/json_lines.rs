//! JSON lines from a file: an app's stdout log (`--json-lines`) or the seed
//! uploader's NDJSON queue (`--ndjson-queue`), one JSON object a line.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{Item, Page, Source};

pub struct JsonLines {
    label: String,
    reader: BufReader<File>,
    size: u64,
    bytes_read: u64,
    line_number: u64,
    source_id: String,
    /// How often each line's content was seen so far (by a digest of it),
    /// to tell identical lines apart in their ids.
    seen: HashMap<[u8; 16], u32>,
    buffer: Vec<u8>,
}

impl JsonLines {
    pub fn open(path: &Path, source_id: &str) -> anyhow::Result<JsonLines> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        Ok(JsonLines {
            label: path.display().to_string(),
            reader: BufReader::with_capacity(1 << 20, file),
            size,
            bytes_read: 0,
            line_number: 0,
            source_id: source_id.to_owned(),
            seen: HashMap::new(),
            buffer: Vec::new(),
        })
    }

    /// What makes a line the same record in every import: its content and
    /// how many identical lines came before it (so a file that grew since
    /// the last import gives its old lines the same ids, and two identical
    /// lines are still two records).
    fn identity(&mut self, line: &[u8]) -> Vec<u8> {
        let digest: [u8; 16] = Sha256::digest(line)[..16].try_into().expect("16 bytes");
        let occurrence = self.seen.entry(digest).or_insert(0);
        let mut identity = format!("line\0{}\0{occurrence}\0", self.source_id).into_bytes();
        *occurrence += 1;
        identity.extend_from_slice(line);
        identity
    }
}

impl Source for JsonLines {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn total(&self) -> u64 {
        self.size
    }

    async fn next_page(&mut self, max: usize) -> anyhow::Result<Option<Page>> {
        let mut items = Vec::new();
        while items.len() < max {
            self.buffer.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .with_context(|| format!("reading {}", self.label))?;
            if n == 0 {
                break;
            }
            self.bytes_read += n as u64;
            self.line_number += 1;
            let line = std::mem::take(&mut self.buffer);
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = match serde_json::from_slice::<serde_json::Value>(content) {
                Ok(serde_json::Value::Object(record)) => Ok(record),
                Ok(other) => Err(format!(
                    "not a JSON object but {}",
                    match other {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        serde_json::Value::Number(_) => "a number",
                        _ => "a literal",
                    }
                )),
                Err(e) => Err(format!("not JSON: {e}")),
            };
            items.push(Item {
                origin: format!("{}:{}", self.label, self.line_number),
                identity: self.identity(content),
                record,
            });
            self.buffer = line;
        }
        Ok((!items.is_empty()).then_some(Page {
            items,
            position: self.bytes_read,
        }))
    }
}
