//! Compressing a closed segment without ever having neither copy.
//!
//! The compressed copy is written to `<name>.tmp`, fsync'd, renamed to its
//! final name and the directory fsync'd; only then is the plain segment
//! removed (and the directory fsync'd again). So after a crash at any
//! point the directory holds the plain segment, or the complete compressed
//! one, or both; a `.tmp` is never complete and is removed on start.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read};
use std::path::Path;

use serde::Deserialize;

use super::segment::{sync_dir, Encoding, SegmentName};

/// `compression`: how closed segments are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// zstd level 3: about as fast as writing, and audit JSON shrinks ~10x.
    #[default]
    Zstd,
    Gzip,
    /// Closed segments stay plain NDJSON.
    None,
}

impl Compression {
    /// The encoding a closed segment ends up in.
    pub fn encoding(self) -> Encoding {
        match self {
            Compression::Zstd => Encoding::Zstd,
            Compression::Gzip => Encoding::Gzip,
            Compression::None => Encoding::Plain,
        }
    }
}

pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// Compresses the plain segment `plain` in `dir` into `to`, then removes
/// the plain one. A compressed copy that already exists is complete (it
/// was renamed into place after its fsync), so then only the plain one is
/// removed: a crash came between the two.
pub fn compress_segment(dir: &Path, plain: &SegmentName, to: Encoding) -> io::Result<()> {
    let plain_path = dir.join(plain.file_name());
    let compressed = plain.with_encoding(to);
    let final_path = dir.join(compressed.file_name());
    if !final_path.exists() {
        let tmp_path = dir.join(format!("{}{TEMPORARY_SUFFIX}", compressed.file_name()));
        let mut input = BufReader::new(File::open(&plain_path)?);
        let output = File::create(&tmp_path)?;
        let output = match to {
            Encoding::Zstd => {
                let mut encoder = zstd::stream::Encoder::new(BufWriter::new(output), 3)?;
                io::copy(&mut input, &mut encoder)?;
                encoder.finish()?
            }
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    BufWriter::new(output),
                    flate2::Compression::default(),
                );
                io::copy(&mut input, &mut encoder)?;
                encoder.finish()?
            }
            Encoding::Plain => unreachable!("a segment is compressed to zstd or gzip"),
        };
        output
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        fs::rename(&tmp_path, &final_path)?;
        sync_dir(dir)?;
    }
    fs::remove_file(&plain_path)?;
    sync_dir(dir)
}

/// A reader of a segment's NDJSON, whatever its encoding.
pub fn open_segment(path: &Path, encoding: Encoding) -> io::Result<Box<dyn Read + Send>> {
    let file = BufReader::new(File::open(path)?);
    Ok(match encoding {
        Encoding::Plain => Box::new(file),
        Encoding::Zstd => Box::new(zstd::stream::Decoder::with_buffer(file)?),
        Encoding::Gzip => Box::new(flate2::bufread::GzDecoder::new(file)),
    })
}

/// Writes `bytes` to `path` and fsyncs it: for tests that make segments.
#[cfg(test)]
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_segments_read_back_the_same_and_replace_the_plain_one() {
        let content: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"seq\":{i},\"body\":\"a banana\"}}\n").into_bytes())
            .collect();
        for to in [Encoding::Zstd, Encoding::Gzip] {
            let dir = tempfile::tempdir().unwrap();
            let plain = SegmentName {
                node: "n".into(),
                first_seq: 1,
                encoding: Encoding::Plain,
            };
            write_synced(&dir.path().join(plain.file_name()), &content).unwrap();
            compress_segment(dir.path(), &plain, to).unwrap();
            let names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            let compressed = plain.with_encoding(to).file_name();
            assert_eq!(names, std::slice::from_ref(&compressed), "{to:?}");
            let mut back = Vec::new();
            open_segment(&dir.path().join(&compressed), to)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, content, "{to:?}");
            let size = fs::metadata(dir.path().join(&compressed)).unwrap().len();
            assert!(size * 5 < content.len() as u64, "{to:?}: {size} bytes");
        }
    }

    #[test]
    fn a_crash_after_the_rename_leaves_both_and_the_plain_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let plain = SegmentName {
            node: "n".into(),
            first_seq: 1,
            encoding: Encoding::Plain,
        };
        write_synced(&dir.path().join(plain.file_name()), b"{\"seq\":1}\n").unwrap();
        let zst = plain.with_encoding(Encoding::Zstd);
        let compressed = zstd::encode_all(&b"{\"seq\":1}\n"[..], 3).unwrap();
        write_synced(&dir.path().join(zst.file_name()), &compressed).unwrap();
        compress_segment(dir.path(), &plain, Encoding::Zstd).unwrap();
        assert!(!dir.path().join(plain.file_name()).exists());
        assert_eq!(
            fs::read(dir.path().join(zst.file_name())).unwrap(),
            compressed
        );
    }
}
