//! The small subset of POSIX tar (ustar + pax, POSIX.1-2001 `pax` interchange format) that
//! `.boxsnap` uses: header encoding for the writer and strict header decoding for the reader.

use std::io;

/// Tar block size in bytes.
pub const BLOCK: usize = 512;
/// Largest size the 11-digit octal ustar size field can hold (8 GiB - 1).
pub const USTAR_MAX_SIZE: u64 = 0o77777777777;

/// Typeflag of a regular file.
pub const REGULAR: u8 = b'0';
/// Typeflag of a pax extended header (applies to the next entry).
pub const PAX_LOCAL: u8 = b'x';
/// Typeflag of a pax global extended header.
pub const PAX_GLOBAL: u8 = b'g';

fn put_str(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

/// Write `value` as zero-padded octal with a trailing NUL into `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    put_str(field, s.as_bytes());
    field[digits] = 0;
}

/// Build one ustar header block. `size` must be <= [`USTAR_MAX_SIZE`] (larger sizes go in a
/// pax `size` record and this field holds 0). `name` must be at most 100 bytes.
pub fn header(name: &str, typeflag: u8, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put_str(&mut h[0..100], name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    put_octal(&mut h[124..136], size.min(USTAR_MAX_SIZE));
    put_octal(&mut h[136..148], mtime.min(USTAR_MAX_SIZE));
    h[156] = typeflag;
    put_str(&mut h[257..263], b"ustar\0");
    put_str(&mut h[263..265], b"00");
    put_str(&mut h[265..297], b"root");
    put_str(&mut h[297..329], b"root");
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// One pax extended-header record `"<len> <key>=<value>\n"`, where `<len>` counts the whole
/// record including its own digits.
pub fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

/// Zero bytes needed after `size` bytes of entry data to reach a block boundary.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// A decoded header block.
#[derive(Debug, Clone)]
pub struct RawHeader {
    /// `prefix/name` as stored (bytes up to the first NUL of each field).
    pub name: Vec<u8>,
    /// Typeflag byte (`'\0'` is normalised to `'0'`).
    pub typeflag: u8,
    /// Entry data size from the size field (octal or GNU base-256).
    pub size: u64,
}

fn field_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parse a numeric field: octal digits with optional leading/trailing spaces and NULs, or
/// GNU base-256 (high bit of the first byte set, positive values only).
pub fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first != 0x80 {
                return None; // negative or absurdly large
            }
            let mut v: u64 = 0;
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(v);
        }
    }
    let s = field_str(field);
    let s: Vec<u8> = s
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Decode and check one header block (checksum, ustar magic, numeric fields).
pub fn parse_header(h: &[u8; BLOCK]) -> io::Result<RawHeader> {
    let stored = parse_number(&h[148..156]).ok_or_else(|| bad("unreadable header checksum"))?;
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(bad(
            "header checksum mismatch (corrupt or not a tar stream)",
        ));
    }
    let magic = &h[257..265];
    if magic != b"ustar\x0000" && magic != b"ustar  \0" {
        return Err(bad(
            "header is not in ustar/pax format (v7 tar headers are not accepted)",
        ));
    }
    let size = parse_number(&h[124..136]).ok_or_else(|| bad("unreadable size field"))?;
    let prefix = field_str(&h[345..500]);
    let name = field_str(&h[0..100]);
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    // The prefix field only exists in POSIX ustar; old GNU headers use those bytes otherwise.
    if magic == b"ustar\x0000" && !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    let typeflag = if h[156] == 0 { REGULAR } else { h[156] };
    Ok(RawHeader {
        name: full,
        typeflag,
        size,
    })
}

/// Parse pax extended-header records into `(key, value)` pairs.
pub fn parse_pax(data: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break; // trailing NUL padding written by some tools
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("malformed pax record (no length)"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed pax record length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("malformed pax record"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("malformed pax record (no '=')"))?;
        let key = std::str::from_utf8(&rec[..eq])
            .map_err(|_| bad("pax record key is not UTF-8"))?
            .to_owned();
        out.push((key, rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = header("disk.qcow2", REGULAR, 12345, 1_700_000_000);
        let p = parse_header(&h).unwrap();
        assert_eq!(p.name, b"disk.qcow2");
        assert_eq!(p.size, 12345);
        assert_eq!(p.typeflag, REGULAR);
        let mut bad = h;
        bad[0] ^= 1;
        assert!(parse_header(&bad).is_err());
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for v in ["1", "123456789", &"9".repeat(95)] {
            let r = pax_record("size", v);
            assert_eq!(
                r.split(' ').next().unwrap().parse::<usize>().unwrap(),
                r.len()
            );
            let parsed = parse_pax(r.as_bytes()).unwrap();
            assert_eq!(parsed, vec![("size".to_owned(), v.as_bytes().to_vec())]);
        }
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"00000000012\0"), Some(10));
        assert_eq!(parse_number(b"     12 \0"), Some(10));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(parse_number(b"9"), None);
        assert_eq!(parse_number(&[0xff; 12]), None);
    }
}
