//! The `lz4` codec: the LZ4 frame format (lz4 `doc/lz4_Frame_format.md`, v1.6.x), readable by
//! `tar -I lz4 -xf` and `lz4 -d`.
//!
//! Encoding uses `lz4_flex`'s frame encoder (independent 4 MiB blocks, content checksum on).
//! Decoding uses the strict frame reader below instead of `lz4_flex::frame::FrameDecoder`,
//! because that decoder reports input cut at a block boundary as a clean end of stream; a
//! `.boxsnap` reader must see truncation as an error.

use std::hash::Hasher as _;
use std::io::{self, ErrorKind, Read, Write};
use std::ops::RangeInclusive;
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, DecodeLimits, Encoder, Result};
use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
use twox_hash::XxHash32;

use super::bad_level;

/// LZ4 frame magic number `0x184D2204`, little-endian on disk.
pub const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// Skippable frames use magic numbers `0x184D2A50..=0x184D2A5F`.
const SKIPPABLE_MAGIC_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Linked blocks may reference this many bytes of earlier output.
const WINDOW: usize = 64 * 1024;

/// LZ4 frame compression.
///
/// Levels: `0..=0` only. `lz4_flex` implements the single fast LZ4 mode (no LZ4-HC levels), so
/// the level is accepted for interface symmetry and must be 0.
///
/// The decoder accepts any valid frame sequence (independent or linked blocks, 64 KiB to
/// 4 MiB block sizes, optional block checksums, content size and content checksum, skippable
/// frames) and refuses dictionary ids and legacy frames. It holds at most one block plus a
/// 64 KiB window in memory, so [`DecodeLimits::max_window_log`] (at least 16 in practice) is
/// always respected. Input that ends anywhere but right after a complete frame is an
/// `UnexpectedEof` error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lz4Codec;

struct Lz4Encoder<'a> {
    inner: FrameEncoder<Box<dyn Write + Send + 'a>>,
}

impl Write for Lz4Encoder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Encoder for Lz4Encoder<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let mut out = self.inner.finish().map_err(io::Error::from)?;
        out.flush()
    }
}

impl ArchiveCodec for Lz4Codec {
    fn name(&self) -> &str {
        "lz4"
    }

    fn magic(&self) -> &[u8] {
        &LZ4_MAGIC
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
        let info = FrameInfo::new()
            .block_size(BlockSize::Max4MB)
            .block_mode(BlockMode::Independent)
            .content_checksum(true);
        Ok(Box::new(Lz4Encoder {
            inner: FrameEncoder::with_frame_info(info, out),
        }))
    }

    fn decoder<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
        _limits: &DecodeLimits,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(Box::new(StrictLz4Reader::new(input)))
    }
}

boxlite_api::inventory::submit! {
    boxlite_api::Registration {
        name: "lz4",
        description: "LZ4 frame compression (fast, level 0 only); tar -I lz4 -xf reads it",
        factory: boxlite_api::Factory::Codec(|_| Ok(Arc::new(Lz4Codec))),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("lz4: {}", msg.into()))
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        format!("lz4: stream truncated inside {what}"),
    )
}

/// Fill `buf` completely. `Ok(false)` if the input was already at its end (zero bytes read);
/// an `UnexpectedEof` error naming `what` if it ended part-way.
fn read_full_or_eof(r: &mut dyn Read, buf: &mut [u8], what: &str) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(truncated(what)),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8], what: &str) -> io::Result<()> {
    if read_full_or_eof(r, buf, what)? {
        Ok(())
    } else {
        Err(truncated(what))
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

struct Frame {
    block_max: usize,
    linked: bool,
    block_checksums: bool,
    content_checksum: bool,
    content_size: Option<u64>,
    hasher: XxHash32,
    content_len: u64,
}

/// A strict LZ4 frame decoder (see the module documentation).
pub(crate) struct StrictLz4Reader<R> {
    input: R,
    frame: Option<Frame>,
    frames_seen: u64,
    done: bool,
    compressed: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    /// The last up to 64 KiB of output, for linked blocks.
    window: Vec<u8>,
}

impl<R: Read> StrictLz4Reader<R> {
    pub(crate) fn new(input: R) -> Self {
        StrictLz4Reader {
            input,
            frame: None,
            frames_seen: 0,
            done: false,
            compressed: Vec::new(),
            out: Vec::new(),
            pos: 0,
            window: Vec::new(),
        }
    }

    /// Read the next frame header (or skippable frame). `Ok(false)` at a clean end of input.
    fn start_frame(&mut self) -> io::Result<bool> {
        let mut magic = [0u8; 4];
        if !read_full_or_eof(&mut self.input, &mut magic, "a frame header")? {
            if self.frames_seen == 0 {
                return Err(truncated("the first frame (empty input)"));
            }
            return Ok(false);
        }
        let m = u32::from_le_bytes(magic);
        if m & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC {
            let mut len = [0u8; 4];
            read_full(&mut self.input, &mut len, "a skippable frame")?;
            let len = u64::from(u32::from_le_bytes(len));
            let skipped = io::copy(&mut (&mut self.input).take(len), &mut io::sink())?;
            if skipped != len {
                return Err(truncated("a skippable frame"));
            }
            self.frames_seen += 1;
            return Ok(true);
        }
        if magic != LZ4_MAGIC {
            return Err(invalid(format!(
                "bad frame magic {m:#010x} (legacy or non-lz4 data)"
            )));
        }
        let mut desc = [0u8; 2 + 8 + 4 + 1];
        read_full(&mut self.input, &mut desc[..2], "a frame descriptor")?;
        let (flg, bd) = (desc[0], desc[1]);
        if flg >> 6 != 0b01 {
            return Err(invalid(format!("unsupported frame version {}", flg >> 6)));
        }
        if flg & 0b10 != 0 || bd & 0b1000_1111 != 0 {
            return Err(invalid("reserved bits set in the frame descriptor"));
        }
        if flg & 0b1 != 0 {
            return Err(invalid("dictionary ids are not supported"));
        }
        let block_max = match (bd >> 4) & 0b111 {
            4 => 64 * 1024,
            5 => 256 * 1024,
            6 => 1024 * 1024,
            7 => 4 * 1024 * 1024,
            n => return Err(invalid(format!("invalid block maximum size id {n}"))),
        };
        let mut len = 2;
        let content_size = if flg & 0b1000 != 0 {
            read_full(&mut self.input, &mut desc[2..10], "a frame descriptor")?;
            len = 10;
            let mut a = [0u8; 8];
            a.copy_from_slice(&desc[2..10]);
            Some(u64::from_le_bytes(a))
        } else {
            None
        };
        let mut hc = [0u8; 1];
        read_full(&mut self.input, &mut hc, "a frame descriptor")?;
        let expect = (XxHash32::oneshot(0, &desc[..len]) >> 8) as u8;
        if hc[0] != expect {
            return Err(invalid("frame descriptor checksum mismatch"));
        }
        self.frame = Some(Frame {
            block_max,
            linked: flg & 0b10_0000 == 0,
            block_checksums: flg & 0b1_0000 != 0,
            content_checksum: flg & 0b100 != 0,
            content_size,
            hasher: XxHash32::with_seed(0),
            content_len: 0,
        });
        self.window.clear();
        self.frames_seen += 1;
        Ok(true)
    }

    /// Decode the next block of the current frame into `self.out`.
    fn next_block(&mut self) -> io::Result<()> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(());
        };
        let mut hdr = [0u8; 4];
        read_full(&mut self.input, &mut hdr, "a block header")?;
        let word = le32(&hdr);
        self.out.clear();
        self.pos = 0;
        if word == 0 {
            if let Some(expected) = frame.content_size {
                if expected != frame.content_len {
                    return Err(invalid(format!(
                        "frame content size is {} but the header declared {expected}",
                        frame.content_len
                    )));
                }
            }
            if frame.content_checksum {
                let mut c = [0u8; 4];
                read_full(&mut self.input, &mut c, "the content checksum")?;
                if le32(&c) != frame.hasher.finish_32() {
                    return Err(invalid("content checksum mismatch"));
                }
            }
            self.frame = None;
            return Ok(());
        }
        let stored = word & 0x8000_0000 != 0;
        let size = (word & 0x7FFF_FFFF) as usize;
        if size > frame.block_max {
            return Err(invalid(format!(
                "block of {size} bytes exceeds the frame's maximum of {}",
                frame.block_max
            )));
        }
        self.compressed.resize(size, 0);
        read_full(&mut self.input, &mut self.compressed, "a block")?;
        if frame.block_checksums {
            let mut c = [0u8; 4];
            read_full(&mut self.input, &mut c, "a block checksum")?;
            if le32(&c) != XxHash32::oneshot(0, &self.compressed) {
                return Err(invalid("block checksum mismatch"));
            }
        }
        if stored {
            self.out.extend_from_slice(&self.compressed);
        } else {
            self.out.resize(frame.block_max, 0);
            let n = if frame.linked && !self.window.is_empty() {
                lz4_flex::block::decompress_into_with_dict(
                    &self.compressed,
                    &mut self.out,
                    &self.window,
                )
            } else {
                lz4_flex::block::decompress_into(&self.compressed, &mut self.out)
            }
            .map_err(|e| invalid(format!("corrupt block: {e}")))?;
            self.out.truncate(n);
        }
        if frame.content_checksum {
            frame.hasher.write(&self.out);
        }
        frame.content_len += self.out.len() as u64;
        if frame.linked {
            self.window.extend_from_slice(&self.out);
            if self.window.len() > WINDOW {
                let cut = self.window.len() - WINDOW;
                self.window.drain(..cut);
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for StrictLz4Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if buf.is_empty() || self.done {
                return Ok(0);
            }
            if self.frame.is_none() {
                if !self.start_frame()? {
                    self.done = true;
                    return Ok(0);
                }
                continue;
            }
            self.next_block()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Lz4Codec.encoder(Box::new(&mut out), 0).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap();
        out
    }

    fn decompress(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = Lz4Codec
            .decoder(Box::new(data), &DecodeLimits::default())
            .unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        let c = compress(&data);
        assert_eq!(decompress(&c).unwrap(), data);
        for cut in [
            0,
            1,
            4,
            6,
            7,
            11,
            c.len() / 2,
            c.len() - 8,
            c.len() - 4,
            c.len() - 1,
        ] {
            let e = decompress(&c[..cut]).expect_err("truncated stream must fail");
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "cut {cut}: {e}");
        }
        let mut flipped = c.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert!(decompress(&flipped).is_err());
    }

    #[test]
    fn level_other_than_zero_is_refused() {
        let mut sink = Vec::new();
        assert!(Lz4Codec.encoder(Box::new(&mut sink), 3).is_err());
    }
}
