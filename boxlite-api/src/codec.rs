//! The `ArchiveCodec` trait: the compression layer under a `.boxsnap` tar stream.
//!
//! The tar layout, manifest and checksums live in `boxlite-archive` and are shared by every
//! codec; a codec only wraps byte streams. Streams are synchronous `std::io` objects because
//! archive writing and reading run on blocking threads; the trait itself is `Send + Sync` so one
//! codec instance serves every task.

use std::io::{Read, Write};
use std::ops::RangeInclusive;

use crate::error::Result;

/// Limits a decoder must enforce against hostile input (DESIGN.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest back-reference window the decoder may allocate, as log2 bytes (e.g. 27 = 128 MiB).
    /// A frame asking for more fails instead of allocating.
    pub max_window_log: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_window_log: 27 }
    }
}

/// A compressing writer that must be finished to produce a complete stream.
pub trait Encoder: Write + Send {
    /// Flush the codec's trailer (end frame, checksums) and the inner writer.
    ///
    /// Errors: the inner writer's error. Dropping an encoder without `finish` leaves a
    /// truncated stream that decoders report as truncated.
    fn finish(self: Box<Self>) -> std::io::Result<()>;
}

/// A compression codec for `.boxsnap` archives (DESIGN.md sections 3 and 8).
/// Implementations: `zstd` (default), `lz4` (lz4 frame format), `none`.
pub trait ArchiveCodec: Send + Sync {
    /// The registry name, e.g. `"zstd"`; also written into the archive manifest.
    fn name(&self) -> &str;

    /// Magic bytes at the start of a stream written by this codec (zstd frame magic
    /// `28 B5 2F FD`, lz4 frame magic `04 22 4D 18`). Empty for a codec without magic.
    fn magic(&self) -> &[u8];

    /// Whether `head` (the first bytes of a file, at least 512 when the file is that long)
    /// starts a stream of this codec. The default compares [`ArchiveCodec::magic`]; a codec
    /// without magic overrides it (e.g. `none` checks the ustar signature at offset 257).
    fn detect(&self, head: &[u8]) -> bool {
        let magic = self.magic();
        !magic.is_empty() && head.starts_with(magic)
    }

    /// Accepted compression levels; [`ArchiveCodec::encoder`] refuses others.
    fn levels(&self) -> RangeInclusive<i32>;

    /// The level used when the caller does not choose one.
    fn default_level(&self) -> i32;

    /// Wrap `out` in a compressing writer at `level`.
    ///
    /// Errors: [`crate::Error::Config`] for a level outside [`ArchiveCodec::levels`].
    fn encoder<'a>(
        &self,
        out: Box<dyn Write + Send + 'a>,
        level: i32,
    ) -> Result<Box<dyn Encoder + 'a>>;

    /// Wrap `input` in a decompressing reader enforcing `limits`.
    ///
    /// The reader must return an error (never a clean end of stream) when the input ends in
    /// the middle of a frame, and must fail rather than allocate beyond the limits.
    fn decoder<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
        limits: &DecodeLimits,
    ) -> Result<Box<dyn Read + Send + 'a>>;
}
