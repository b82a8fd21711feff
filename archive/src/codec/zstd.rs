//! The `zstd` codec (the default): Zstandard frames (RFC 8878), readable by `tar --zstd -xf`.

use std::io::{self, Read, Write};
use std::ops::RangeInclusive;
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, DecodeLimits, Encoder, Error, Result};

use super::bad_level;

/// Zstandard frame magic number `0xFD2FB528`, little-endian on disk.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Zstandard compression.
///
/// Levels `1..=22` (default 3, the contract default of `ExportOptions::compression_level`).
/// The encoder writes one frame with a content checksum and compresses on one background
/// worker thread (libzstd `nbWorkers = 1`), so compression overlaps the caller's reading and
/// hashing. The decoder refuses frames whose window exceeds
/// [`DecodeLimits::max_window_log`] (error "Frame requires too much memory for decoding")
/// before allocating it, and reports input that ends inside a frame as an error
/// ("incomplete frame"), never as a clean end of stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZstdCodec;

struct ZstdEncoder<'a> {
    inner: zstd::stream::write::Encoder<'static, Box<dyn Write + Send + 'a>>,
}

impl Write for ZstdEncoder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Encoder for ZstdEncoder<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let mut out = self.inner.finish()?;
        out.flush()
    }
}

impl ArchiveCodec for ZstdCodec {
    fn name(&self) -> &str {
        "zstd"
    }

    fn magic(&self) -> &[u8] {
        &ZSTD_MAGIC
    }

    fn levels(&self) -> RangeInclusive<i32> {
        1..=22
    }

    fn default_level(&self) -> i32 {
        3
    }

    fn encoder<'a>(
        &self,
        out: Box<dyn Write + Send + 'a>,
        level: i32,
    ) -> Result<Box<dyn Encoder + 'a>> {
        if !self.levels().contains(&level) {
            return Err(bad_level(self, level));
        }
        let setup = |e: io::Error| Error::config(format!("zstd encoder setup failed: {e}"));
        let mut inner = zstd::stream::write::Encoder::new(out, level).map_err(setup)?;
        inner.include_checksum(true).map_err(setup)?;
        // One worker thread: compression runs beside the caller. Failure to start it (a
        // libzstd built without threads) falls back to single-threaded compression.
        let _ = inner.multithread(1);
        Ok(Box::new(ZstdEncoder { inner }))
    }

    fn decoder<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
        limits: &DecodeLimits,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        let setup = |e: io::Error| Error::config(format!("zstd decoder setup failed: {e}"));
        let mut dec = zstd::stream::read::Decoder::new(input).map_err(setup)?;
        dec.window_log_max(limits.max_window_log).map_err(setup)?;
        Ok(Box::new(dec))
    }
}

boxlite_api::inventory::submit! {
    boxlite_api::Registration {
        name: "zstd",
        description: "Zstandard compression, levels 1..=22 (default 3); tar --zstd -xf reads it",
        factory: boxlite_api::Factory::Codec(|_| Ok(Arc::new(ZstdCodec))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_an_error_and_big_windows_are_refused() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) as u8)
            .collect();
        let mut c = Vec::new();
        let mut enc = ZstdCodec.encoder(Box::new(&mut c), 3).unwrap();
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        let read = |b: &[u8], limits: &DecodeLimits| {
            let mut r = ZstdCodec.decoder(Box::new(b), limits).unwrap();
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        };
        assert_eq!(read(&c, &DecodeLimits::default()).unwrap(), data);
        for cut in [0, 3, 4, 9, c.len() / 2, c.len() - 4, c.len() - 1] {
            assert!(
                read(&c[..cut], &DecodeLimits::default()).is_err(),
                "cut at {cut}"
            );
        }
        // Frame header declaring a 2^31-byte window (Window_Descriptor exponent 21).
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3, 0x01, 0x10, 0x00];
        frame.extend_from_slice(&[0u8; 512]);
        let e = read(&frame, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        assert!(ZstdCodec.encoder(Box::new(Vec::new()), 0).is_err());
        assert!(ZstdCodec.detect(&c) && !ZstdCodec.detect(b"\x04\x22\x4d\x18"));
    }
}
