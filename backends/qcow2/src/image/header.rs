//! The qcow2 header (cluster 0): fixed fields, header extensions and the
//! backing file name. Parsing here is purely syntactic and bounds-checked
//! against the bytes given; semantic checks against the file live in
//! [`super::validate`].
//!
//! Source: qcow2 spec (qemu `docs/interop/qcow2.rst`), "Header" (v2 bytes
//! 0-71, v3 bytes 72-103, additional field byte 104) and "Header extensions".

use std::path::Path;

use super::error::{ImageError, Result};

/// `QFI\xfb`, qcow2 spec header bytes 0-3.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header in bytes.
pub const V2_HEADER_LEN: u32 = 72;
/// Minimum length of a version 3 header in bytes.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Header length we write for v3 images (includes the compression type byte
/// and its padding), in bytes.
pub const V3_WRITE_HEADER_LEN: u32 = 112;
/// Maximum length of a backing file name in bytes (qcow2 spec, header bytes 16-19).
pub const MAX_BACKING_NAME: usize = 1023;

/// Header extension type: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension type: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension type: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension type: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension type: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bit 0: dirty.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: compression type field is meaningful.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// All incompatible bits defined by the spec.
pub const INCOMPAT_KNOWN: u64 = 0x1f;

/// Compression type of compressed clusters (qcow2 spec, header v3 byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// 0: raw deflate (called "zlib" by qemu; no zlib header).
    Zlib,
    /// 1: zstd frames.
    Zstd,
}

/// One header extension as stored after the header (qcow2 spec, "Header
/// extensions"): type, then `data` (its length is the extension length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderExtension {
    /// Extension type (bytes 0-3).
    pub kind: u32,
    /// Extension data (without padding).
    pub data: Vec<u8>,
}

/// A parsed qcow2 header. Field names follow the spec; all offsets and sizes
/// are in bytes unless named `*_clusters`/`*_size` (entries).
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3 (bytes 4-7).
    pub version: u32,
    /// Offset of the backing file name, 0 if none (bytes 8-15).
    pub backing_file_offset: u64,
    /// Length of the backing file name in bytes (bytes 16-19).
    pub backing_file_size: u32,
    /// log2 of the cluster size (bytes 20-23).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes (bytes 24-31).
    pub size: u64,
    /// Encryption method, 0 = none (bytes 32-35).
    pub crypt_method: u32,
    /// Number of entries of the active L1 table (bytes 36-39).
    pub l1_size: u32,
    /// Offset of the active L1 table (bytes 40-47).
    pub l1_table_offset: u64,
    /// Offset of the refcount table (bytes 48-55).
    pub refcount_table_offset: u64,
    /// Clusters occupied by the refcount table (bytes 56-59).
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots (bytes 60-63).
    pub nb_snapshots: u32,
    /// Offset of the snapshot table (bytes 64-71).
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3 bytes 72-79; 0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3 bytes 80-87; 0 for v2).
    pub compatible_features: u64,
    /// Auto-clear feature bits (v3 bytes 88-95; 0 for v2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (v3 bytes 96-99; 4 for v2).
    pub refcount_order: u32,
    /// Header length in bytes (v3 bytes 100-103; 72 for v2).
    pub header_length: u32,
    /// Raw compression type byte (v3 byte 104 when `header_length` > 104, else 0).
    pub compression_type: u8,
    /// Header extensions in file order (the end marker is not included).
    pub extensions: Vec<HeaderExtension>,
    /// Backing file name, if any (raw bytes, not NUL terminated).
    pub backing_file: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Cluster size in bytes (`1 << cluster_bits`).
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Compression type of compressed clusters, or `None` if the byte is not
    /// a known type.
    pub fn compression(&self) -> Option<Compression> {
        match self.compression_type {
            0 => Some(Compression::Zlib),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The data of the first extension of type `kind`, if present.
    pub fn extension(&self, kind: u32) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.data.as_slice())
    }

    /// Backing file format from the backing format extension (e.g. "qcow2",
    /// "raw"), if present and valid UTF-8.
    pub fn backing_format(&self) -> Option<String> {
        self.extension(EXT_BACKING_FORMAT)
            .map(|d| String::from_utf8_lossy(d).into_owned())
    }

    /// Parse the fixed fields (the first `header_length` bytes) from `prefix`,
    /// which holds at least the first 72 bytes of the file (more when
    /// available, up to 112). Only checks what is needed to parse safely:
    /// magic, version and the v3 header length lower bound. Extensions and the
    /// backing name are filled by [`Header::parse_cluster0`].
    ///
    /// Errors: [`ImageError::BadMagic`], [`ImageError::UnsupportedVersion`],
    /// [`ImageError::BadHeader`].
    pub fn parse_fixed(path: &Path, prefix: &[u8]) -> Result<Header> {
        if prefix.len() < 4 || prefix[0..4] != QCOW2_MAGIC {
            return Err(ImageError::BadMagic {
                path: path.to_path_buf(),
                reason: if prefix.len() < 4 {
                    format!("file is only {} bytes long", prefix.len())
                } else {
                    format!("magic bytes are {:02x?}", &prefix[0..4])
                },
            });
        }
        if prefix.len() < V2_HEADER_LEN as usize {
            return Err(ImageError::BadMagic {
                path: path.to_path_buf(),
                reason: format!(
                    "file is only {} bytes long, shorter than a qcow2 header",
                    prefix.len()
                ),
            });
        }
        let version = be32(prefix, 4);
        if version != 2 && version != 3 {
            return Err(ImageError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(prefix, 8),
            backing_file_size: be32(prefix, 16),
            cluster_bits: be32(prefix, 20),
            size: be64(prefix, 24),
            crypt_method: be32(prefix, 32),
            l1_size: be32(prefix, 36),
            l1_table_offset: be64(prefix, 40),
            refcount_table_offset: be64(prefix, 48),
            refcount_table_clusters: be32(prefix, 56),
            nb_snapshots: be32(prefix, 60),
            snapshots_offset: be64(prefix, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
            extensions: Vec::new(),
            backing_file: None,
        };
        if version == 3 {
            if prefix.len() < V3_MIN_HEADER_LEN as usize {
                return Err(ImageError::BadHeader {
                    path: path.to_path_buf(),
                    reason: format!(
                        "file is only {} bytes long, shorter than a v3 header (104 bytes)",
                        prefix.len()
                    ),
                });
            }
            h.incompatible_features = be64(prefix, 72);
            h.compatible_features = be64(prefix, 80);
            h.autoclear_features = be64(prefix, 88);
            h.refcount_order = be32(prefix, 96);
            h.header_length = be32(prefix, 100);
            if h.header_length < V3_MIN_HEADER_LEN || !h.header_length.is_multiple_of(8) {
                return Err(ImageError::BadHeader {
                    path: path.to_path_buf(),
                    reason: format!(
                        "header_length {} (v3 needs >= 104 and a multiple of 8)",
                        h.header_length
                    ),
                });
            }
            if h.header_length > V3_MIN_HEADER_LEN && prefix.len() > 104 {
                h.compression_type = prefix[104];
            }
        }
        Ok(h)
    }

    /// Parse the header extensions and the backing file name from `cluster0`,
    /// the first `min(file length, cluster size)` bytes of the file. Every
    /// extension and the name must lie inside `cluster0`.
    ///
    /// Errors: [`ImageError::BadHeader`] when something does not fit or the
    /// backing name is longer than 1023 bytes or not UTF-8.
    pub fn parse_cluster0(&mut self, path: &Path, cluster0: &[u8]) -> Result<()> {
        let bad = |reason: String| ImageError::BadHeader {
            path: path.to_path_buf(),
            reason,
        };
        let hl = self.header_length as usize;
        if hl > cluster0.len() {
            return Err(bad(format!(
                "header_length {} exceeds the first cluster / file ({} bytes)",
                hl,
                cluster0.len()
            )));
        }
        // Extensions: between header_length and the end of cluster 0.
        let mut at = hl;
        let mut exts = Vec::new();
        loop {
            if at + 8 > cluster0.len() {
                // qemu tolerates a missing end marker when the cluster is full.
                break;
            }
            let kind = be32(cluster0, at);
            let len = be32(cluster0, at + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data_start = at + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|&e| e <= cluster0.len())
                .ok_or_else(|| {
                    bad(format!(
                        "header extension {kind:#x} at byte {at} (length {len}) runs past the first cluster"
                    ))
                })?;
            exts.push(HeaderExtension {
                kind,
                data: cluster0[data_start..data_end].to_vec(),
            });
            // Pad to a multiple of 8.
            at = data_end.div_ceil(8) * 8;
        }
        self.extensions = exts;

        if self.backing_file_offset != 0 {
            let len = self.backing_file_size as usize;
            if len > MAX_BACKING_NAME {
                return Err(bad(format!(
                    "backing file name is {len} bytes long (max {MAX_BACKING_NAME})"
                )));
            }
            let start = usize::try_from(self.backing_file_offset)
                .ok()
                .filter(|&s| s >= hl)
                .ok_or_else(|| {
                    bad(format!(
                        "backing_file_offset {} is outside the first cluster",
                        self.backing_file_offset
                    ))
                })?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= cluster0.len())
                .ok_or_else(|| {
                    bad(format!(
                        "backing file name at {start} (length {len}) runs past the first cluster"
                    ))
                })?;
            let name = std::str::from_utf8(&cluster0[start..end])
                .map_err(|_| bad("backing file name is not valid UTF-8".to_string()))?;
            if name.is_empty() {
                return Err(bad("backing file name is empty".to_string()));
            }
            if name.contains('\0') {
                return Err(bad("backing file name contains a NUL byte".to_string()));
            }
            self.backing_file = Some(name.to_string());
        }
        Ok(())
    }

    /// Serialize the fixed header fields into `out[0..header_length]`
    /// (big endian). For v3 the compression type byte is written when
    /// `header_length > 104`. Bytes of `out` beyond the fields known here are
    /// left as they are, so unknown additional fields are preserved.
    pub fn write_fixed(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&QCOW2_MAGIC);
        out[4..8].copy_from_slice(&self.version.to_be_bytes());
        out[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        out[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        out[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        out[24..32].copy_from_slice(&self.size.to_be_bytes());
        out[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        out[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        out[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        out[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        out[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        out[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        out[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            out[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
            out[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
            out[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
            out[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            out[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            if self.header_length > V3_MIN_HEADER_LEN {
                out[104] = self.compression_type;
            }
        }
    }
}

/// Append header extensions (each padded to 8 bytes) and the end marker to
/// `out`. Returns nothing; `out` grows by the encoded size.
pub fn encode_extensions(exts: &[HeaderExtension], out: &mut Vec<u8>) {
    for e in exts {
        out.extend_from_slice(&e.kind.to_be_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.data);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }
    out.extend_from_slice(&[0u8; 8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_never_panic() {
        let p = Path::new("x");
        for n in 0..120 {
            let mut b = vec![0u8; n];
            if n >= 4 {
                b[0..4].copy_from_slice(&QCOW2_MAGIC);
            }
            if n >= 8 {
                b[7] = 3;
            }
            let _ = Header::parse_fixed(p, &b);
        }
    }
}
