//! The three in-tree [`ArchiveCodec`]s and codec auto-detection.
//!
//! | name   | stream format                                   | magic bytes (offset 0)  | levels |
//! |--------|-------------------------------------------------|-------------------------|--------|
//! | `zstd` | Zstandard frames (RFC 8878)                     | `28 B5 2F FD`           | 1..=22, default 3 |
//! | `lz4`  | LZ4 frame format (lz4 `doc/lz4_Frame_format.md`) | `04 22 4D 18`           | 0 only |
//! | `none` | the plain tar stream                            | `ustar` at offset 257   | 0 only |
//!
//! Every codec registers itself with the plugin registry (`boxlite_api::registry`) under its
//! name, so `boxlite_api::registry::codec("zstd", ..)` finds it once this crate is linked.
//!
//! Decoders never report a clean end of stream for input that stops in the middle of a frame
//! (`zstd`, `lz4`); for `none` the tar reader (`import_archive`) detects truncation.

use std::io::{self, Write};
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, Encoder};

pub mod lz4;
pub mod none;
pub mod zstd;

pub use self::lz4::Lz4Codec;
pub use self::none::NoneCodec;
pub use self::zstd::ZstdCodec;

/// The three in-tree codecs, `zstd` first (the default), then `lz4`, then `none`.
///
/// Useful as the `codecs` argument of [`crate::import_archive`] and [`crate::inspect`] when
/// the caller does not go through the plugin registry.
pub fn builtin_codecs() -> Vec<Arc<dyn ArchiveCodec>> {
    vec![Arc::new(ZstdCodec), Arc::new(Lz4Codec), Arc::new(NoneCodec)]
}

/// The codec among `codecs` that recognises `head` (the first bytes of a file, up to 512),
/// trying codecs with magic bytes before codecs without (so `none` never shadows another).
pub fn detect<'a>(
    codecs: &'a [Arc<dyn ArchiveCodec>],
    head: &[u8],
) -> Option<&'a Arc<dyn ArchiveCodec>> {
    codecs
        .iter()
        .filter(|c| !c.magic().is_empty())
        .chain(codecs.iter().filter(|c| c.magic().is_empty()))
        .find(|c| c.detect(head))
}

/// An [`Encoder`] that writes its input through unchanged (the `none` codec).
pub(crate) struct PassThrough<'a> {
    pub(crate) inner: Box<dyn Write + Send + 'a>,
}

impl Write for PassThrough<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Encoder for PassThrough<'_> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The error every codec returns for a level outside its range.
pub(crate) fn bad_level(codec: &dyn ArchiveCodec, level: i32) -> boxlite_api::Error {
    let r = codec.levels();
    boxlite_api::Error::config(format!(
        "compression level {level} is not valid for codec '{}': use {}..={} (default {})",
        codec.name(),
        r.start(),
        r.end(),
        codec.default_level()
    ))
}
