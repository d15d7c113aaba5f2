//! Request decompression, one implementation for both transports.
//!
//! * gzip: RFC 1952 makes a gzip file a series of members, each a whole gzip
//!   stream, that decompress to their concatenation. flate2's `GzDecoder`
//!   (which tonic uses) stops after the first member and ignores the rest, so
//!   a request could be read in part and acknowledged whole; this reads every
//!   member, and bytes after the last one that do not start another are an
//!   error.
//! * zstd: the decoder reads every frame (concatenated frames are legal) and
//!   fails on trailing bytes that are not a frame.
//!
//! Output is bounded: one byte past the limit is an error, so a small bomb
//! costs at most the limit.

use std::io::Read;

/// Why a body could not be decompressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecompressError {
    #[error("{0} body decompresses to more than max_request_bytes")]
    TooLarge(&'static str),
    #[error("{encoding} body does not decompress: {message}")]
    Corrupt {
        encoding: &'static str,
        message: String,
    },
}

/// A compression the receivers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// `gzip` or `zstd` (any case); `None` for anything else.
    pub(crate) fn from_name(name: &str) -> Option<Compression> {
        match name.trim().to_ascii_lowercase().as_str() {
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The whole of `wire`, decompressed, at most `max` bytes.
    pub(crate) fn decompress(self, wire: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
        let corrupt = |e: std::io::Error| DecompressError::Corrupt {
            encoding: self.name(),
            message: e.to_string(),
        };
        let reader: Box<dyn Read + '_> = match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(wire)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(wire).map_err(corrupt)?),
        };
        let mut out = Vec::new();
        reader
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        if out.len() > max {
            return Err(DecompressError::TooLarge(self.name()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 1).unwrap()
    }

    #[test]
    fn every_gzip_member_is_read() {
        let body = [gzip(b"first,"), gzip(b"second")].concat();
        assert_eq!(
            Compression::Gzip.decompress(&body, 100).unwrap(),
            b"first,second"
        );
    }

    #[test]
    fn bytes_after_the_gzip_stream_are_refused() {
        let mut body = gzip(b"{}");
        body.extend_from_slice(b"trailing junk");
        let err = Compression::Gzip.decompress(&body, 100).unwrap_err();
        assert!(
            matches!(
                err,
                DecompressError::Corrupt {
                    encoding: "gzip",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn every_zstd_frame_is_read_and_trailing_bytes_refused() {
        let body = [zstd(b"first,"), zstd(b"second")].concat();
        assert_eq!(
            Compression::Zstd.decompress(&body, 100).unwrap(),
            b"first,second"
        );
        let mut body = zstd(b"{}");
        body.extend_from_slice(b"trailing junk");
        let err = Compression::Zstd.decompress(&body, 100).unwrap_err();
        assert!(
            matches!(
                err,
                DecompressError::Corrupt {
                    encoding: "zstd",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn output_is_bounded() {
        let body = gzip(&[0; 101]);
        assert_eq!(Compression::Gzip.decompress(&body, 101).unwrap().len(), 101);
        assert_eq!(
            Compression::Gzip.decompress(&body, 100),
            Err(DecompressError::TooLarge("gzip"))
        );
    }
}
