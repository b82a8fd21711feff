//! Decompression of compressed clusters (qcow2 spec, "Compressed Clusters
//! Descriptor" and header v3 byte 104 "compression_type").
//!
//! * zlib (type 0): the data is a *raw deflate* stream (RFC 1951, no zlib
//!   header); decompression stops once a whole cluster has been produced,
//!   trailing bytes of the last sector are ignored.
//! * zstd (type 1): one or more zstd frames; we stream-decompress until a
//!   whole cluster has been produced and ignore trailing bytes (the padding of
//!   the last 512-byte sector is not a valid frame).

use flate2::{Decompress, FlushDecompress, Status};

use super::header::Compression;

/// Decompress `input` into exactly `out.len()` bytes (one cluster).
/// Returns `Err(reason)` when the data is invalid or too short.
pub fn decompress_cluster(kind: Compression, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match kind {
        Compression::Zlib => inflate_raw(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut d = Decompress::new(false);
    loop {
        let in_pos = d.total_in() as usize;
        let out_pos = d.total_out() as usize;
        if out_pos >= out.len() {
            return Ok(());
        }
        let status = d
            .decompress(
                &input[in_pos..],
                &mut out[out_pos..],
                FlushDecompress::Finish,
            )
            .map_err(|e| format!("deflate data is invalid: {e}"))?;
        let progressed = d.total_in() as usize != in_pos || d.total_out() as usize != out_pos;
        match status {
            Status::StreamEnd => {
                if (d.total_out() as usize) < out.len() {
                    return Err(format!(
                        "deflate stream ended after {} of {} bytes",
                        d.total_out(),
                        out.len()
                    ));
                }
                return Ok(());
            }
            Status::Ok | Status::BufError if progressed => continue,
            _ => {
                if (d.total_out() as usize) >= out.len() {
                    return Ok(());
                }
                return Err(format!(
                    "deflate data truncated after {} of {} bytes",
                    d.total_out(),
                    out.len()
                ));
            }
        }
    }
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut dec = Decoder::new().map_err(|e| format!("zstd decoder init failed: {e}"))?;
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    loop {
        if outb.pos() >= outb.capacity() {
            return Ok(());
        }
        let in_before = inb.pos();
        let out_before = outb.pos();
        if in_before >= input.len() {
            return Err(format!(
                "zstd data truncated after {} of {} bytes",
                out_before,
                outb.capacity()
            ));
        }
        let r = dec.run(&mut inb, &mut outb);
        match r {
            Ok(0) => {
                // A frame ended; continue with the next frame only if the
                // cluster is not complete yet.
                if outb.pos() >= outb.capacity() {
                    return Ok(());
                }
                let _ = dec.reinit();
            }
            Ok(_) => {
                if inb.pos() == in_before && outb.pos() == out_before {
                    return Err("zstd decoder made no progress".to_string());
                }
            }
            Err(e) => {
                if outb.pos() >= outb.capacity() {
                    return Ok(());
                }
                return Err(format!("zstd data is invalid: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_roundtrip_with_trailing_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut c = zstd::bulk::compress(&data, 3).unwrap();
        c.extend_from_slice(&[0u8; 300]);
        let mut out = vec![0u8; 65536];
        decompress_cluster(Compression::Zstd, &c, &mut out).unwrap();
        assert_eq!(out, data);
        let mut out2 = vec![0u8; 65536];
        assert!(decompress_cluster(Compression::Zstd, &c[..c.len() / 4], &mut out2).is_err());
        assert!(decompress_cluster(Compression::Zstd, &[1, 2, 3, 4, 5], &mut out2).is_err());
    }

    #[test]
    fn deflate_roundtrip_and_garbage() {
        use std::io::Write;
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 13) as u8).collect();
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let mut c = e.finish().unwrap();
        c.extend_from_slice(&[0xffu8; 100]);
        let mut out = vec![0u8; 4096];
        decompress_cluster(Compression::Zlib, &c, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(decompress_cluster(Compression::Zlib, &[0xff; 64], &mut out).is_err());
        assert!(decompress_cluster(Compression::Zlib, &[], &mut out).is_err());
    }
}
