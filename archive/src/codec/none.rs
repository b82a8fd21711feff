//! The `none` codec: the archive is the plain tar stream.

use std::io::{Read, Write};
use std::ops::RangeInclusive;
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, DecodeLimits, Encoder, Result};

use super::{bad_level, PassThrough};

/// Offset of the ustar magic in a tar header (POSIX.1-2001 `ustar` format).
pub const USTAR_MAGIC_OFFSET: usize = 257;

/// No compression: a `.boxsnap` that is a plain POSIX tar stream, extractable with `tar -xf`.
///
/// Detection: the first header block carries `ustar` at byte offset 257 (both the POSIX
/// `ustar\0` and the old GNU `ustar ` spellings). Level range: `0..=0`. Truncation is detected
/// by the tar reader (missing end-of-archive blocks or a short entry), not by this codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneCodec;

impl ArchiveCodec for NoneCodec {
    fn name(&self) -> &str {
        "none"
    }

    fn magic(&self) -> &[u8] {
        &[]
    }

    fn detect(&self, head: &[u8]) -> bool {
        head.get(USTAR_MAGIC_OFFSET..USTAR_MAGIC_OFFSET + 5) == Some(b"ustar".as_slice())
    }

    fn levels(&self) -> RangeInclusive<i32> {
        0..=0
    }

    fn default_level(&self) -> i32 {
        0
    }

    fn encoder<'a>(
        &self,
        out: Box<dyn Write + Send + 'a>,
        level: i32,
    ) -> Result<Box<dyn Encoder + 'a>> {
        if !self.levels().contains(&level) {
            return Err(bad_level(self, level));
        }
        Ok(Box::new(PassThrough { inner: out }))
    }

    fn decoder<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
        _limits: &DecodeLimits,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(input)
    }
}

boxlite_api::inventory::submit! {
    boxlite_api::Registration {
        name: "none",
        description: "no compression: the .boxsnap is a plain tar stream (tar -xf)",
        factory: boxlite_api::Factory::Codec(|_| Ok(Arc::new(NoneCodec))),
    }
}
