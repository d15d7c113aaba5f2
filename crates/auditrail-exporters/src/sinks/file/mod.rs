//! The file sink: rotating NDJSON segments in a local directory.
//!
//! Each line is one event in the sink's `format`: the canonical JSON, or
//! OCSF (`crate::encoding`). Both keep `node`, `seq`, `prev_hash` and
//! `hash` (OCSF under `unmapped.auditrail`), so a set of segments can be
//! checked against the chain offline. A segment is rotated by size
//! and by age; a closed one is compressed by [`FileSink::maintain`]
//! (`compress.rs`).
//!
//! **Durable before the cursor moves.** `export` returns only after the
//! bytes it wrote are fdatasync'd, and after the directory is fsync'd
//! when it created a segment.
//!
//! **Exactly once.** The delivery loop sends a batch again after a crash
//! or a retry. `prepare` reads where each node's newest segment ends,
//! truncates a torn last line (a crash mid-write), and from then on
//! `export` skips every event whose seq is not above the highest written.
//! That needs the batches in seq order, hence delivery concurrency 1.
//!
//! **Checkpoints.** With `format = "json"` each signed checkpoint is one
//! line of the node's segment stream, written once every event it covers
//! is (`read.rs` has the line's shape, and reads segments back for
//! `auditrail verify`). A segment that holds no event yet (created for a
//! checkpoint when none was open) is named for the next seq and is not
//! rotated until an event is in it, so two segments never share a name.
//! OCSF files hold no checkpoint lines: an OCSF reader would take them for
//! malformed events.

mod compress;
mod read;
mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use bytesize::ByteSize;
use serde::Deserialize;

use crate::encoding::LineFormat;
use crate::{
    node_of_origin, ExportError, Exporter, HeldSeq, ReadBack, SignedCheckpoint, SinkContext, Walk,
};
pub use compress::Compression;
use compress::{compress_segment, TEMPORARY_SUFFIX};
pub use read::{read_line, write_checkpoint_line, FileWalk, Line, SegmentFiles, CHECKPOINT_KEY};
pub use segment::{Encoding, SegmentName};

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The directory of the segments; created when missing.
    pub path: PathBuf,
    /// A segment is closed before it would grow past this...
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: ByteSize,
    /// ...or once it has been open this long.
    #[serde(default = "default_rotate_interval", with = "humantime_serde")]
    pub rotate_interval: Duration,
    /// What closed segments are compressed with.
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub format: LineFormat,
}

fn default_rotate_bytes() -> ByteSize {
    ByteSize::mib(100)
}

fn default_rotate_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Writes batches into rotating segments under one directory.
pub struct FileSink {
    segments: Arc<Mutex<Segments>>,
    format: LineFormat,
}

/// The directory and, per node, where writing goes on.
struct Segments {
    dir: PathBuf,
    rotate_bytes: u64,
    rotate_interval: Duration,
    compression: Compression,
    /// `None` until `prepare` has read the directory (and again after a
    /// failed write, so the next attempt recovers the way a restart does).
    nodes: Option<BTreeMap<String, NodeSegments>>,
    /// Per origin, the largest checkpoint written (as far as this process
    /// knows): one sent again is not written twice.
    checkpointed: BTreeMap<String, u64>,
}

#[derive(Default)]
struct NodeSegments {
    /// The highest seq of this node in the directory, fsync'd.
    highest: u64,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    name: SegmentName,
    file: File,
    /// Bytes in the file plus those in `pending`.
    len: u64,
    /// Lines of the current batch, written with one call before the sync.
    pending: Vec<u8>,
    opened: SystemTime,
    /// Whether it holds an event (not only checkpoint lines): only then
    /// may it be closed, since the next segment is named for the next seq.
    holds_events: bool,
}

/// A batch encoded before it goes to the blocking writer: the lines one
/// after another, and for each event its node, seq and where its line ends.
struct EncodedBatch {
    lines: Vec<u8>,
    events: Vec<(String, u64, usize)>,
}

impl FileSink {
    pub fn new(config: &FileConfig, context: &SinkContext) -> Result<Self, ExportError> {
        if config.path.as_os_str().is_empty() {
            return Err(ExportError::misconfigured("config", "path is empty"));
        }
        if config.rotate_bytes.as_u64() == 0 || config.rotate_interval.is_zero() {
            return Err(ExportError::misconfigured(
                "config",
                "rotate_bytes and rotate_interval must be above zero",
            ));
        }
        let _ = context;
        Ok(FileSink {
            segments: Arc::new(Mutex::new(Segments {
                dir: config.path.clone(),
                rotate_bytes: config.rotate_bytes.as_u64(),
                rotate_interval: config.rotate_interval,
                compression: config.compression,
                nodes: None,
                checkpointed: BTreeMap::new(),
            })),
            format: config.format.clone(),
        })
    }

    /// Runs `work` on the segments on a blocking thread.
    async fn with_segments<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Segments) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<T, ExportError> {
        let segments = self.segments.clone();
        tokio::task::spawn_blocking(move || {
            let mut segments = segments.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut segments)
        })
        .await
        .map_err(|e| ExportError::retryable("io", format!("file sink task: {e}")))?
    }

    fn encode(&self, events: &[AuditEvent]) -> EncodedBatch {
        let mut lines = Vec::with_capacity(events.len() * 1024);
        let events = events
            .iter()
            .map(|event| {
                self.format.write_line(event, &mut lines);
                (event.node.clone(), event.seq, lines.len())
            })
            .collect();
        EncodedBatch { lines, events }
    }
}

fn io_error(what: impl std::fmt::Display, error: io::Error) -> ExportError {
    ExportError::retryable("io", format!("{what}: {error}"))
}

impl Segments {
    /// Reads the directory: removes leftovers of an interrupted compression,
    /// truncates each node's newest segment after its last complete line,
    /// and learns each node's highest seq.
    fn recover(&mut self) -> Result<(), ExportError> {
        let dir = self.dir.clone();
        segment::create_dir_durably(&dir).map_err(|e| {
            ExportError::misconfigured("config", format!("creating {}: {e}", dir.display()))
        })?;
        for entry in fs::read_dir(&dir).map_err(|e| {
            ExportError::misconfigured("config", format!("reading {}: {e}", dir.display()))
        })? {
            let entry = entry.map_err(|e| io_error(dir.display(), e))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("auditrail-") && file_name.ends_with(TEMPORARY_SUFFIX) {
                // Never complete: the rename that would finish it did not happen.
                fs::remove_file(entry.path()).map_err(|e| io_error(&file_name, e))?;
            }
        }
        let names = segment_names(&dir)?;
        let mut newest: BTreeMap<String, SegmentName> = BTreeMap::new();
        for name in &names {
            let compressed_copy = [Encoding::Zstd, Encoding::Gzip].into_iter().find(|e| {
                name.encoding == Encoding::Plain && names.contains(&name.with_encoding(*e))
            });
            if let Some(encoding) = compressed_copy {
                // A crash between writing the compressed copy and removing
                // the plain one; the compressed copy is complete, so this
                // only removes the plain one.
                compress_segment(&dir, name, encoding)
                    .map_err(|e| io_error(name.file_name(), e))?;
                continue;
            }
            // Sorted by first seq: the last one seen is the newest.
            newest.insert(name.node.clone(), name.clone());
        }
        let mut nodes = BTreeMap::new();
        for (node, name) in newest {
            let (highest, open) = self.recover_newest(&name)?;
            nodes.insert(node, NodeSegments { highest, open });
        }
        segment::sync_dir(&dir).map_err(|e| io_error(dir.display(), e))?;
        self.nodes = Some(nodes);
        Ok(())
    }

    /// The highest seq in a node's newest segment, and that segment opened
    /// for appending when it is plain (it was open when writing stopped).
    fn recover_newest(
        &mut self,
        name: &SegmentName,
    ) -> Result<(u64, Option<OpenSegment>), ExportError> {
        let path = self.dir.join(name.file_name());
        let what = path.display();
        if name.encoding != Encoding::Plain {
            let reader =
                compress::open_segment(&path, name.encoding).map_err(|e| io_error(&what, e))?;
            let mut last = None;
            for line in io::BufRead::split(io::BufReader::new(reader), b'\n') {
                let line = line.map_err(|e| io_error(&what, e))?;
                if !is_checkpoint_line(&line) {
                    last = Some(line);
                }
            }
            let highest =
                last.map_or(Ok(name.first_seq.saturating_sub(1)), |l| seq_of(&l, &path))?;
            return Ok((highest, None));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&what, e))?;
        let metadata = file.metadata().map_err(|e| io_error(&what, e))?;
        let complete =
            segment::complete_len(&mut file, metadata.len()).map_err(|e| io_error(&what, e))?;
        if complete < metadata.len() {
            tracing::warn!(segment = %what, torn_bytes = metadata.len() - complete,
                "the last line of the segment was torn by a crash mid-write; it is cut off and written again");
            file.set_len(complete).map_err(|e| io_error(&what, e))?;
            file.sync_data().map_err(|e| io_error(&what, e))?;
        }
        // The last event line: checkpoint lines may follow it.
        let mut end = complete;
        let mut last_event = None;
        while let Some(line) = segment::last_line(&mut file, end).map_err(|e| io_error(&what, e))? {
            end -= line.len() as u64 + 1;
            match read::read_line(&line) {
                Line::Checkpoint(note) => {
                    if let Some(signed) = SignedCheckpoint::of_note(note) {
                        let c = signed.checkpoint;
                        let known = self.checkpointed.entry(c.origin).or_default();
                        *known = (*known).max(c.size);
                    }
                }
                _ => {
                    last_event = Some(line);
                    break;
                }
            }
        }
        let holds_events = last_event.is_some();
        let highest = match last_event {
            Some(line) => seq_of(&line, &path)?,
            // Created, but no event written yet: its name says what comes first.
            None => name.first_seq.saturating_sub(1),
        };
        let opened = metadata
            .created()
            .or_else(|_| metadata.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let open = OpenSegment {
            name: name.clone(),
            file,
            len: complete,
            pending: Vec::new(),
            opened,
            holds_events,
        };
        Ok((highest, Some(open)))
    }

    /// Appends the events of `batch` that are not written yet, rotating as
    /// the limits say, and syncs what it wrote.
    #[cfg(test)]
    fn write(&mut self, batch: EncodedBatch, now: SystemTime) -> Result<(), ExportError> {
        let mut chunks = std::iter::once(batch);
        self.write_chunks(|| chunks.next(), now)
    }

    /// [`Segments::write`] for a batch that comes in chunks (as `next`
    /// yields them): each chunk is written as it comes, and everything is
    /// synced once the last one is in.
    fn write_chunks(
        &mut self,
        next: impl FnMut() -> Option<EncodedBatch>,
        now: SystemTime,
    ) -> Result<(), ExportError> {
        let result = self.write_then_sync(next, now);
        if result.is_err() {
            // What reached the file is unknown (a short write, a failed
            // fsync): forget it all and read the directory again first.
            self.nodes = None;
        }
        result
    }

    fn write_then_sync(
        &mut self,
        mut next: impl FnMut() -> Option<EncodedBatch>,
        now: SystemTime,
    ) -> Result<(), ExportError> {
        if self.nodes.is_none() {
            self.recover()?;
        }
        // Per node, the highest seq this batch wrote (not synced yet).
        let mut written = BTreeMap::new();
        let mut created = false;
        while let Some(chunk) = next() {
            created |= self.append(&chunk, now, &mut written)?;
        }
        let nodes = self.nodes.as_mut().expect("recovered above");
        for (node, highest) in written {
            let state = nodes.get_mut(&node).expect("written nodes exist");
            if let Some(open) = &state.open {
                open.file
                    .sync_data()
                    .map_err(|e| io_error(open.name.file_name(), e))?;
            }
            state.highest = highest;
        }
        if created {
            segment::sync_dir(&self.dir).map_err(|e| io_error(self.dir.display(), e))?;
        }
        Ok(())
    }

    /// Writes (without the final sync) the events of `chunk` above what
    /// `written` and the files hold, rotating as the limits say. Returns
    /// whether it created a segment.
    fn append(
        &mut self,
        chunk: &EncodedBatch,
        now: SystemTime,
        written: &mut BTreeMap<String, u64>,
    ) -> Result<bool, ExportError> {
        let limits = (self.rotate_bytes, self.rotate_interval);
        let dir = &self.dir;
        let nodes = self.nodes.as_mut().expect("recovered before appending");
        let mut created = false;
        let mut start = 0;
        for (node, seq, end) in &chunk.events {
            let line = &chunk.lines[start..*end];
            start = *end;
            let state = nodes.entry(node.clone()).or_default();
            let highest = written.get(node).copied().unwrap_or(state.highest);
            if *seq <= highest {
                continue;
            }
            let (open, new) = state.segment_for(dir, node, *seq, line.len() as u64, limits, now)?;
            created |= new;
            open.pending.extend_from_slice(line);
            open.len += line.len() as u64;
            open.holds_events = true;
            written.insert(node.clone(), *seq);
        }
        for state in nodes.values_mut() {
            if let Some(open) = state.open.as_mut() {
                open.write_pending()?;
            }
        }
        Ok(created)
    }

    /// Writes checkpoint lines (each after the events it covers, which the
    /// delivery loop has confirmed) into their node's open segment, skips
    /// those written already, and syncs.
    fn write_checkpoints(
        &mut self,
        checkpoints: Vec<SignedCheckpoint>,
        now: SystemTime,
    ) -> Result<(), ExportError> {
        let result = self.checkpoints_then_sync(&checkpoints, now);
        match result {
            Ok(()) => {
                for signed in checkpoints {
                    let c = signed.checkpoint;
                    let known = self.checkpointed.entry(c.origin).or_default();
                    *known = (*known).max(c.size);
                }
            }
            Err(_) => self.nodes = None,
        }
        result
    }

    fn checkpoints_then_sync(
        &mut self,
        checkpoints: &[SignedCheckpoint],
        now: SystemTime,
    ) -> Result<(), ExportError> {
        if self.nodes.is_none() {
            self.recover()?;
        }
        let limits = (self.rotate_bytes, self.rotate_interval);
        let dir = &self.dir;
        let nodes = self.nodes.as_mut().expect("recovered above");
        let mut created = false;
        let mut touched = Vec::new();
        for signed in checkpoints {
            let c = &signed.checkpoint;
            if self
                .checkpointed
                .get(&c.origin)
                .is_some_and(|&size| size >= c.size)
            {
                continue;
            }
            let mut line = Vec::new();
            write_checkpoint_line(signed, &mut line);
            let node = node_of_origin(&c.origin).to_owned();
            let state = nodes.entry(node.clone()).or_default();
            let next_seq = state.highest + 1;
            let (open, new) =
                state.segment_for(dir, &node, next_seq, line.len() as u64, limits, now)?;
            created |= new;
            open.len += line.len() as u64;
            open.pending.extend_from_slice(&line);
            if !touched.contains(&node) {
                touched.push(node);
            }
        }
        for node in touched {
            let open = nodes
                .get_mut(&node)
                .and_then(|state| state.open.as_mut())
                .expect("written into just now");
            open.write_pending()?;
            open.file
                .sync_data()
                .map_err(|e| io_error(open.name.file_name(), e))?;
        }
        if created {
            segment::sync_dir(dir).map_err(|e| io_error(dir.display(), e))?;
        }
        Ok(())
    }

    /// Closes the segments open for `rotate_interval` or longer, and names
    /// every closed segment still plain, to be compressed.
    fn close_expired(&mut self, now: SystemTime) -> Result<Vec<SegmentName>, ExportError> {
        let limits = (self.rotate_bytes, self.rotate_interval);
        let Some(nodes) = self.nodes.as_mut() else {
            // Not prepared yet: which segment is open is not known.
            return Ok(Vec::new());
        };
        for state in nodes.values_mut() {
            if state
                .open
                .as_ref()
                .is_some_and(|open| open.is_due(0, limits, now))
            {
                // Everything in it was synced by the export that wrote it.
                state.open = None;
            }
        }
        let open: Vec<&SegmentName> = nodes
            .values()
            .filter_map(|state| state.open.as_ref().map(|open| &open.name))
            .collect();
        let closed = segment_names(&self.dir)?
            .into_iter()
            .filter(|name| name.encoding == Encoding::Plain && !open.contains(&name))
            .collect();
        Ok(closed)
    }
}

impl NodeSegments {
    /// The segment a line of `line_len` bytes goes into: the open one, or
    /// (when there is none, or it is due for rotation) a new one starting
    /// at `first_seq`; and whether it was created.
    fn segment_for(
        &mut self,
        dir: &Path,
        node: &str,
        first_seq: u64,
        line_len: u64,
        limits: (u64, Duration),
        now: SystemTime,
    ) -> Result<(&mut OpenSegment, bool), ExportError> {
        if let Some(open) = self.open.as_mut() {
            if open.is_due(line_len, limits, now) {
                open.write_pending()?;
                open.file
                    .sync_data()
                    .map_err(|e| io_error(open.name.file_name(), e))?;
                self.open = None;
            }
        }
        match self.open {
            Some(ref mut open) => Ok((open, false)),
            None => Ok((
                self.open
                    .insert(OpenSegment::create(dir, node, first_seq, now)?),
                true,
            )),
        }
    }
}

impl OpenSegment {
    /// Creates (or, after a crash left it empty, reopens) the segment of
    /// `node` starting at `first_seq`. The directory still needs an fsync.
    fn create(
        dir: &Path,
        node: &str,
        first_seq: u64,
        now: SystemTime,
    ) -> Result<Self, ExportError> {
        let name = SegmentName {
            node: node.to_owned(),
            first_seq,
            encoding: Encoding::Plain,
        };
        let path = dir.join(name.file_name());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| io_error(path.display(), e))?;
        Ok(OpenSegment {
            name,
            file,
            len: 0,
            pending: Vec::new(),
            opened: now,
            holds_events: false,
        })
    }

    /// Whether a line of `line_len` more bytes must go to a new segment.
    /// A segment without an event takes any line, however long: the next
    /// one would have the same name.
    fn is_due(
        &self,
        line_len: u64,
        (rotate_bytes, rotate_interval): (u64, Duration),
        now: SystemTime,
    ) -> bool {
        self.holds_events
            && self.len > 0
            && (self.len + line_len > rotate_bytes
                || now.duration_since(self.opened).unwrap_or_default() >= rotate_interval)
    }

    /// Writes the lines gathered for this segment, and has the kernel
    /// start writing them to disk now, so the fdatasync that ends the
    /// batch finds little left to do while the next chunk was encoded.
    /// (`sync_file_range` only starts the writeback: durability still
    /// comes from that fdatasync.)
    fn write_pending(&mut self) -> Result<(), ExportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let offset = self.len - self.pending.len() as u64;
        self.file
            .write_all(&self.pending)
            .map_err(|e| io_error(self.name.file_name(), e))?;
        start_writeback(&self.file, offset, self.pending.len() as u64);
        self.pending.clear();
        Ok(())
    }
}

/// Starts writing `len` bytes at `offset` of `file` back to disk without
/// waiting. Only a hint: a failure changes nothing (the fdatasync after it
/// reports real errors).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) on a descriptor this process owns; it
    // reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Every segment in `dir`.
fn segment_names(dir: &Path) -> Result<Vec<SegmentName>, ExportError> {
    let entries = fs::read_dir(dir).map_err(|e| io_error(dir.display(), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir.display(), e))?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether a segment line is a checkpoint line (cheaply: by its start).
fn is_checkpoint_line(line: &[u8]) -> bool {
    line.starts_with(format!("{{\"{CHECKPOINT_KEY}\":").as_bytes())
}

/// The `seq` of a line in any `format`.
fn seq_of(line: &[u8], path: &Path) -> Result<u64, ExportError> {
    crate::encoding::seq_of_line(line).map_err(|e| {
        ExportError::misconfigured(
            "segment",
            format!(
                "the last line of {} is not an auditrail event ({e}); the sink cannot tell what it already wrote. \
                 Move the file aside (or point `path` elsewhere)",
                path.display()
            ),
        )
    })
}

#[async_trait]
impl Exporter for FileSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        self.with_segments(Segments::recover).await
    }

    /// Encodes the batch in chunks here while a blocking thread writes the
    /// chunks before: the encoding (CPU) and the disk work overlap, and one
    /// fdatasync ends the batch.
    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        let (chunks, mut encoded) = tokio::sync::mpsc::channel::<EncodedBatch>(2);
        let now = SystemTime::now();
        let writer = self
            .with_segments(move |segments| segments.write_chunks(|| encoded.blocking_recv(), now));
        let encoder = async {
            for chunk in events.chunks(CHUNK_EVENTS) {
                if chunks.send(self.encode(chunk)).await.is_err() {
                    // The writer failed; its error is the answer.
                    break;
                }
            }
            drop(chunks);
        };
        let (written, ()) = tokio::join!(writer, encoder);
        written
    }

    async fn highest_seq(&self, node: &str) -> Result<HeldSeq, ExportError> {
        let node = node.to_owned();
        self.with_segments(move |segments| {
            if segments.nodes.is_none() {
                segments.recover()?;
            }
            let nodes = segments.nodes.as_ref().expect("recovered above");
            Ok(HeldSeq::Highest(nodes.get(&node).map_or(0, |n| n.highest)))
        })
        .await
    }

    /// Closes segments past `rotate_interval` even when no events come,
    /// and compresses closed segments. Compression runs outside the lock
    /// the writer takes: a closed segment is never written again.
    async fn maintain(&self, now: SystemTime) -> Result<(), ExportError> {
        let closed = self.with_segments(move |s| s.close_expired(now)).await?;
        let (dir, compression) = {
            let segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
            (segments.dir.clone(), segments.compression)
        };
        if compression == Compression::None || closed.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            for name in closed {
                compress_segment(&dir, &name, compression.encoding())
                    .map_err(|e| io_error(format!("compressing {}", name.file_name()), e))?;
                tracing::debug!(segment = %name.file_name(), "closed segment compressed");
            }
            Ok(())
        })
        .await
        .map_err(|e| ExportError::retryable("io", format!("file sink compression task: {e}")))?
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        let rotate_interval = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rotate_interval;
        Some(MAINTENANCE_EVERY.min(rotate_interval))
    }

    /// With `format = "json"` only: an OCSF reader would take a checkpoint
    /// line for a malformed event.
    fn holds_checkpoints(&self) -> bool {
        self.format == LineFormat::Json
    }

    async fn export_checkpoints(
        &self,
        checkpoints: &[SignedCheckpoint],
    ) -> Result<(), ExportError> {
        let checkpoints = checkpoints.to_vec();
        let now = SystemTime::now();
        self.with_segments(move |segments| segments.write_checkpoints(checkpoints, now))
            .await
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        Some(self)
    }
}

impl FileSink {
    /// The segments in the directory now.
    fn stored(&self) -> Result<SegmentFiles, ExportError> {
        let dir = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dir
            .clone();
        SegmentFiles::in_dir(&dir)
    }
}

/// The directory's segments read back (see `read.rs`), as they are when
/// asked.
#[async_trait]
impl ReadBack for FileSink {
    async fn nodes(&self) -> Result<Vec<String>, ExportError> {
        self.stored()?.nodes().await
    }

    async fn events(
        &self,
        node: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ExportError> {
        self.stored()?.events(node, after, limit).await
    }

    async fn checkpoints(&self, node: &str) -> Result<Vec<String>, ExportError> {
        self.stored()?.checkpoints(node).await
    }

    async fn walk<'a>(&'a self, node: &str) -> Result<Box<dyn Walk + 'a>, ExportError> {
        Ok(Box::new(self.stored()?.walk_node(node)))
    }
}

/// Events encoded (and written) at a time within a batch.
const CHUNK_EVENTS: usize = 2000;

/// How often idle segments are closed and closed ones compressed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn event(node: &str, seq: u64) -> AuditEvent {
        AuditEvent {
            node: node.into(),
            seq,
            event_id: format!("e-{seq}"),
            body: format!("prompt {seq}: a banana in a spacesuit"),
            attributes: "{}".into(),
            resource_attributes: "{}".into(),
            hash: [seq as u8; 32],
            ..AuditEvent::default()
        }
    }

    fn events(first: u64, last: u64) -> Vec<AuditEvent> {
        (first..=last).map(|seq| event("n1", seq)).collect()
    }

    fn sink(dir: &Path, extra: &str) -> FileSink {
        let toml = format!("path = {:?}\n{extra}", dir.display().to_string());
        let config: FileConfig = toml::from_str(&toml).unwrap();
        let context = SinkContext {
            name: "archive".into(),
            retention: Duration::from_secs(60),
        };
        FileSink::new(&config, &context).unwrap()
    }

    /// A prepared sink on `dir` that has written seqs `first..=last`.
    async fn written(dir: &Path, extra: &str, first: u64, last: u64) -> FileSink {
        let sink = sink(dir, extra);
        sink.prepare().await.unwrap();
        sink.export(&events(first, last)).await.unwrap();
        sink
    }

    /// Every file in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Every line of every segment in `dir`, in file order.
    fn lines(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for name in segment_names(dir).unwrap() {
            let mut text = String::new();
            compress::open_segment(&dir.join(name.file_name()), name.encoding)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "{name:?}");
            out.extend(text.lines().map(str::to_owned));
        }
        out
    }

    /// The seqs of every line of every segment in `dir`, in file order.
    fn seqs(dir: &Path) -> Vec<u64> {
        lines(dir)
            .iter()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["hash"].as_str().map(str::len), Some(64), "{line}");
                value["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn events_already_written_are_skipped_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = sink(dir.path(), "");
        first.prepare().await.unwrap();
        assert_eq!(first.highest_seq("n1").await.unwrap(), HeldSeq::Highest(0));
        first.export(&events(1, 10)).await.unwrap();
        // The loop retries a batch whose answer it did not see.
        first.export(&events(6, 15)).await.unwrap();
        drop(first);
        let again = sink(dir.path(), "");
        again.prepare().await.unwrap();
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(15));
        assert_eq!(
            again.highest_seq("other").await.unwrap(),
            HeldSeq::Highest(0)
        );
        // A crash before the cursor moved: everything is sent again.
        again.export(&events(1, 20)).await.unwrap();
        assert_eq!(seqs(dir.path()), (1..=20).collect::<Vec<_>>());
        assert_eq!(
            files(dir.path()),
            ["auditrail-n1-00000000000000000001.ndjson"]
        );
    }

    #[tokio::test]
    async fn a_batch_of_many_chunks_rotates_and_resends_within_it() {
        let dir = tempfile::tempdir().unwrap();
        // Chunks of 2,000 events; segments of about 700 lines.
        let first = written(dir.path(), "rotate_bytes = \"500KiB\"", 1, 4500).await;
        assert!(segment_names(dir.path()).unwrap().len() >= 6);
        // A resend overlapping the end, and new events, in one batch.
        first.export(&events(3000, 9000)).await.unwrap();
        assert_eq!(seqs(dir.path()), (1..=9000).collect::<Vec<_>>());
        drop(first);
        let again = sink(dir.path(), "");
        again.prepare().await.unwrap();
        assert_eq!(
            again.highest_seq("n1").await.unwrap(),
            HeldSeq::Highest(9000)
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = written(dir.path(), "", 1, 5).await;
        drop(first);
        // A crash in the middle of writing seq 6.
        let path = dir.path().join("auditrail-n1-00000000000000000001.ndjson");
        let mut line = Vec::new();
        LineFormat::Json.write_line(&event("n1", 6), &mut line);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&line[..line.len() / 2]).unwrap();
        drop(file);

        let again = sink(dir.path(), "");
        again.prepare().await.unwrap();
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(5));
        again.export(&events(1, 8)).await.unwrap();
        assert_eq!(seqs(dir.path()), (1..=8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn segments_rotate_by_size_and_closed_ones_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        // About 700 bytes a line: three lines fit in 2500 bytes.
        let sink = written(
            dir.path(),
            "rotate_bytes = 2500\ncompression = \"zstd\"",
            1,
            10,
        )
        .await;
        let before = files(dir.path());
        assert!(before.len() >= 3, "{before:?}");
        for name in segment_names(dir.path()).unwrap() {
            let len = fs::metadata(dir.path().join(name.file_name()))
                .unwrap()
                .len();
            assert!(len <= 2500, "{name:?}: {len}");
        }
        sink.maintain(SystemTime::now()).await.unwrap();
        let after = files(dir.path());
        let (open, closed): (Vec<_>, Vec<_>) = after.iter().partition(|n| n.ends_with(".ndjson"));
        assert_eq!(open.len(), 1, "only the open segment is plain: {after:?}");
        assert_eq!(open[0], before.last().unwrap(), "the newest one");
        assert!(
            closed.iter().all(|n| n.ends_with(".ndjson.zst")),
            "{after:?}"
        );
        assert_eq!(seqs(dir.path()), (1..=10).collect::<Vec<_>>());
        // Restarted: it goes on after seq 10 whatever is compressed.
        drop(sink);
        let again = self::sink(dir.path(), "rotate_bytes = 2500");
        again.prepare().await.unwrap();
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(10));
    }

    #[tokio::test]
    async fn segments_rotate_by_age_even_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let sink = written(
            dir.path(),
            "rotate_interval = \"1h\"\ncompression = \"gzip\"",
            1,
            3,
        )
        .await;
        let later = SystemTime::now() + Duration::from_secs(3601);
        // Maintenance closes the old segment with no event coming.
        sink.maintain(later).await.unwrap();
        assert_eq!(
            files(dir.path()),
            ["auditrail-n1-00000000000000000001.ndjson.gz"]
        );
        sink.export(&events(4, 5)).await.unwrap();
        assert_eq!(
            files(dir.path()),
            [
                "auditrail-n1-00000000000000000001.ndjson.gz",
                "auditrail-n1-00000000000000000004.ndjson"
            ]
        );
        // A write after the interval starts a new segment too.
        sink.with_segments(move |s| {
            s.write(
                EncodedBatch {
                    lines: Vec::new(),
                    events: Vec::new(),
                },
                later,
            )
        })
        .await
        .unwrap();
        let batch = sink.encode(&events(6, 6));
        sink.with_segments(move |s| s.write(batch, later + Duration::from_secs(3600)))
            .await
            .unwrap();
        assert_eq!(
            files(dir.path()).last().unwrap(),
            "auditrail-n1-00000000000000000006.ndjson"
        );
        assert_eq!(seqs(dir.path()), (1..=6).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn interrupted_compressions_are_finished_or_undone_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = written(dir.path(), "rotate_bytes = 2500", 1, 6).await;
        drop(first);
        let names = segment_names(dir.path()).unwrap();
        assert!(names.len() >= 2, "{names:?}");
        // The first segment: compressed and renamed, plain one not removed.
        let plain = dir.path().join(names[0].file_name());
        let zst = dir
            .path()
            .join(names[0].with_encoding(Encoding::Zstd).file_name());
        compress::write_synced(
            &zst,
            &zstd::encode_all(&fs::read(&plain).unwrap()[..], 3).unwrap(),
        )
        .unwrap();
        // The second: a temporary file, never renamed.
        let tmp = dir.path().join(format!(
            "{}.tmp",
            names[1].with_encoding(Encoding::Zstd).file_name()
        ));
        compress::write_synced(&tmp, b"partial").unwrap();

        let again = sink(dir.path(), "rotate_bytes = 2500");
        again.prepare().await.unwrap();
        assert!(!plain.exists() && zst.exists());
        assert!(!tmp.exists());
        assert!(dir.path().join(names[1].file_name()).exists());
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(6));
        assert_eq!(seqs(dir.path()), (1..=6).collect::<Vec<_>>());
    }

    /// A signed checkpoint of `n1`'s seqs 1..=`size`.
    fn checkpoint(size: u64, previous: u64) -> SignedCheckpoint {
        static KEY: std::sync::OnceLock<auditrail_integrity::SignerKey> =
            std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| auditrail_integrity::SignerKey::generate("test").unwrap());
        let checkpoint = auditrail_integrity::Checkpoint {
            origin: "auditrail/n1/0123abcd".into(),
            size,
            root: [size as u8; 32],
            first_seq: 1,
            chain: [size as u8; 32],
            previous,
            time_unix_nano: 1,
        };
        SignedCheckpoint::of_note(checkpoint.sign(key).unwrap()).unwrap()
    }

    /// Every line of every segment in `dir`, in order: `e<seq>` for an
    /// event, `c<size>` for a checkpoint.
    fn stream(dir: &Path) -> Vec<String> {
        lines(dir)
            .iter()
            .map(|line| match read_line(line.as_bytes()) {
                Line::Event(e) => format!("e{}", e.seq),
                Line::Checkpoint(note) => format!(
                    "c{}",
                    SignedCheckpoint::of_note(note).unwrap().checkpoint.size
                ),
                Line::Unreadable(why) => panic!("{why}: {line}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn checkpoint_lines_follow_their_events_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = written(dir.path(), "", 1, 3).await;
        assert!(first.holds_checkpoints());
        first.export_checkpoints(&[checkpoint(3, 0)]).await.unwrap();
        // Sent again (its delivery was not recorded): written once.
        first.export_checkpoints(&[checkpoint(3, 0)]).await.unwrap();
        drop(first);
        // Restarted with a checkpoint line last: it goes on after seq 3,
        // and knows that checkpoint is written.
        let again = sink(dir.path(), "");
        again.prepare().await.unwrap();
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(3));
        again.export_checkpoints(&[checkpoint(3, 0)]).await.unwrap();
        again.export(&events(1, 5)).await.unwrap();
        again.export_checkpoints(&[checkpoint(5, 3)]).await.unwrap();
        assert_eq!(
            stream(dir.path()),
            ["e1", "e2", "e3", "c3", "e4", "e5", "c5"]
        );

        // Read back: the events in file order, the checkpoints oldest first.
        let files = SegmentFiles::in_dir(dir.path()).unwrap();
        assert_eq!(files.nodes().await.unwrap(), ["n1"]);
        let notes = again.checkpoints("n1").await.unwrap();
        assert_eq!(notes, [checkpoint(3, 0).note, checkpoint(5, 3).note]);
        let sizes: Vec<u64> = notes
            .iter()
            .map(|n| {
                SignedCheckpoint::of_note(n.clone())
                    .unwrap()
                    .checkpoint
                    .size
            })
            .collect();
        assert_eq!(sizes, [3, 5]);
        let mut walk = again.walk("n1").await.unwrap();
        let page = walk.next_page().await.unwrap();
        let seqs: Vec<u64> = page
            .iter()
            .map(|r| match r {
                crate::Stored::Event(e) => e.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert!(walk.next_page().await.unwrap().is_empty());
        assert_eq!(again.events("n1", 3, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_checkpoint_with_no_segment_open_starts_one_that_events_go_on_in() {
        let dir = tempfile::tempdir().unwrap();
        let sink = written(dir.path(), "compression = \"zstd\"", 1, 3).await;
        let later = SystemTime::now() + Duration::from_secs(3601);
        sink.maintain(later).await.unwrap();
        sink.export_checkpoints(&[checkpoint(3, 0)]).await.unwrap();
        assert_eq!(
            files(dir.path()),
            [
                "auditrail-n1-00000000000000000001.ndjson.zst",
                "auditrail-n1-00000000000000000004.ndjson"
            ]
        );
        // Holding no event, it is not closed however old.
        sink.maintain(later + Duration::from_secs(7200))
            .await
            .unwrap();
        drop(sink);
        let again = self::sink(dir.path(), "compression = \"zstd\"");
        again.prepare().await.unwrap();
        assert_eq!(again.highest_seq("n1").await.unwrap(), HeldSeq::Highest(3));
        again.export(&events(4, 4)).await.unwrap();
        assert_eq!(
            files(dir.path()),
            [
                "auditrail-n1-00000000000000000001.ndjson.zst",
                "auditrail-n1-00000000000000000004.ndjson"
            ]
        );
        assert_eq!(stream(dir.path()), ["e1", "e2", "e3", "c3", "e4"]);
    }

    #[tokio::test]
    async fn ocsf_files_hold_no_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!sink(dir.path(), "format = \"ocsf\"").holds_checkpoints());
    }

    #[tokio::test]
    async fn an_unreadable_last_line_stops_the_sink_instead_of_guessing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auditrail-n1-00000000000000000001.ndjson");
        compress::write_synced(&path, b"not json\n").unwrap();
        let error = sink(dir.path(), "").prepare().await.unwrap_err();
        assert_eq!(error.class, crate::ErrorClass::Misconfigured);
        assert!(error.message.contains("not an auditrail event"), "{error}");
    }
}
