//! A tar writer that writes whatever it is told: any name bytes (NUL, `..`, absolute, RTL
//! override), any typeflag (links, devices, FIFOs, GNU long names), declared sizes that differ
//! from the data, pax records, bad header checksums, a missing end marker. The archive
//! crate's writer (and Python's `tarfile`) refuse to produce most of these, which is why the
//! corpus has its own. Layout per POSIX.1-1988 ustar (header fields at the offsets below) and
//! POSIX.1-2001 pax extended headers.

/// Tar block size in bytes.
pub const BLOCK: usize = 512;

/// One entry to write.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Name bytes for the ustar `name` field (at most 100 bytes are stored).
    pub name: Vec<u8>,
    /// Typeflag byte: `b'0'` regular, `b'1'` hard link, `b'2'` symlink, `b'3'` char device,
    /// `b'4'` block device, `b'5'` directory, `b'6'` FIFO, `b'L'` GNU long name, ...
    pub typeflag: u8,
    /// Link target for links (ustar `linkname`, at most 100 bytes).
    pub link: Vec<u8>,
    /// Entry data (written after the header, padded to a block).
    pub data: Vec<u8>,
    /// Size written in the header, when it must differ from `data.len()`.
    pub declared: Option<u64>,
    /// pax records written in a local extended header (`x`) before this entry.
    pub pax: Vec<(String, Vec<u8>)>,
    /// Header checksum is deliberately wrong.
    pub bad_checksum: bool,
    /// Write a v7 header (no ustar magic).
    pub v7: bool,
}

impl Entry {
    /// A regular file.
    pub fn file(name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            typeflag: b'0',
            link: Vec::new(),
            data: data.into(),
            declared: None,
            pax: Vec::new(),
            bad_checksum: false,
            v7: false,
        }
    }

    /// An entry of `typeflag` without data (links, devices, directories, FIFOs).
    pub fn special(name: impl AsRef<[u8]>, typeflag: u8, link: impl AsRef<[u8]>) -> Entry {
        Entry {
            typeflag,
            link: link.as_ref().to_vec(),
            ..Entry::file(name, Vec::new())
        }
    }

    /// Add a pax record to the local extended header of this entry.
    pub fn with_pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Declare `size` bytes in the header whatever the data.
    pub fn declaring(mut self, size: u64) -> Entry {
        self.declared = Some(size);
        self
    }
}

fn put(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        put(field, s.as_bytes());
        field[digits] = 0;
    } else {
        // GNU base-256 for values that do not fit in octal.
        field.fill(0);
        field[0] = 0x80;
        let bytes = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
    }
}

/// One header block.
pub fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8], v7: bool, bad: bool) -> [u8; 512] {
    let mut h = [0u8; BLOCK];
    put(&mut h[0..100], name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    put(&mut h[157..257], link);
    if !v7 {
        put(&mut h[257..263], b"ustar\0");
        put(&mut h[263..265], b"00");
        put(&mut h[265..297], b"root");
        put(&mut h[297..329], b"root");
        octal(&mut h[329..337], 1);
        octal(&mut h[337..345], 3);
    }
    h[148..156].copy_from_slice(b"        ");
    let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    if bad {
        sum += 1;
    }
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// A pax record `"<len> <key>=<value>\n"` (the length counts the whole record).
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut v = format!("{len} {key}=").into_bytes();
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// How the stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Two zero blocks (the normal end-of-archive marker).
    Marker,
    /// No end marker at all.
    None,
    /// One zero block, then `data`.
    LoneZeroThen(&'static [u8]),
    /// The marker, then non-zero bytes.
    MarkerThen(&'static [u8]),
}

/// Serialize `entries` as a tar stream.
pub fn tar(entries: &[Entry], end: End) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &e.pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            out.extend_from_slice(&header(
                b"PaxHeaders/entry",
                b'x',
                body.len() as u64,
                b"",
                false,
                false,
            ));
            out.extend_from_slice(&body);
            pad(&mut out);
        }
        let size = e.declared.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(
            &e.name,
            e.typeflag,
            size,
            &e.link,
            e.v7,
            e.bad_checksum,
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    match end {
        End::Marker => out.extend_from_slice(&[0u8; 2 * BLOCK]),
        End::None => {}
        End::LoneZeroThen(d) => {
            out.extend_from_slice(&[0u8; BLOCK]);
            out.extend_from_slice(d);
            pad(&mut out);
        }
        End::MarkerThen(d) => {
            out.extend_from_slice(&[0u8; 2 * BLOCK]);
            out.extend_from_slice(d);
        }
    }
    out
}

/// The entries of a tar stream written by the archive crate's writer (regular files only,
/// ustar sizes): `(name, data)` in stream order. Panics on anything else (test input only).
pub fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + BLOCK <= bytes.len() {
        let h = &bytes[pos..pos + BLOCK];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8(h[..name_end].to_vec()).expect("utf-8 entry name");
        let size_field = std::str::from_utf8(&h[124..135]).expect("octal size");
        let size = u64::from_str_radix(size_field.trim_matches(|c| c == ' ' || c == '\0'), 8)
            .expect("octal size") as usize;
        assert_eq!(h[156], b'0', "untar: only regular files expected");
        pos += BLOCK;
        out.push((name, bytes[pos..pos + size].to_vec()));
        pos += size.div_ceil(BLOCK) * BLOCK;
    }
    out
}
