//! Reading `.boxsnap` archives: [`import_archive`] (verify + extract into private staging)
//! and [`inspect`] (verify without keeping anything).
//!
//! The reader trusts nothing in the file: the codec is chosen by magic bytes, the tar stream
//! is parsed by the strict reader below (only three regular-file names, each at most once),
//! every size is checked against [`ImportLimits`] before data is read, disks are hashed while
//! they stream, and the end of the stream must be the tar end-of-archive marker followed by a
//! clean end of the codec stream.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use boxlite_api::types::{format_sha256, parse_sha256};
use boxlite_api::{
    ArchiveCodec, ArchiveManifest, DecodeLimits, DiskRole, DiskSet, DiskSource, Error, Result,
};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::manifest::{self, MANIFEST_NAME, MAX_MANIFEST_BYTES};
use crate::tarfmt::{self, BLOCK, PAX_GLOBAL, PAX_LOCAL, REGULAR};

/// Largest accepted pax extended header, in bytes.
const MAX_PAX_BYTES: u64 = 64 * 1024;
/// Chunk size of the background decompression thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the decompression thread and the extractor.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Bounds enforced while reading an archive. Every size is checked before the data it
/// describes is read, so a hostile header cannot make the reader allocate or write past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Largest accepted disk entry, in bytes. Default 256 GiB.
    pub max_disk_bytes: u64,
    /// Largest accepted decompressed tar stream (headers, data, padding, trailing zeros), in
    /// bytes. Default `2 * max_disk_bytes + 16 MiB`. Callers importing into a filesystem with
    /// less free space may lower it so that an import fails before filling the disk.
    pub max_total_bytes: u64,
    /// Largest accepted `manifest.json`, in bytes. Default (and maximum) 1 MiB.
    pub max_manifest_bytes: u64,
    /// Limits passed to the codec's decoder (zstd window size).
    pub decode: DecodeLimits,
}

impl Default for ImportLimits {
    fn default() -> Self {
        let max_disk_bytes = 256 << 30;
        ImportLimits {
            max_disk_bytes,
            max_total_bytes: 2 * max_disk_bytes + (16 << 20),
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            decode: DecodeLimits::default(),
        }
    }
}

/// A verified archive whose disks wait in a private staging directory for the caller to adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedArchive {
    /// The archive's manifest (already checked against the disks).
    pub manifest: ArchiveManifest,
    /// Absolute paths of the staged standalone qcow2 files, inside [`ImportedArchive::staging`].
    pub disks: DiskSet,
    /// Name of the codec detected from the file's magic bytes.
    pub codec: String,
    /// The private directory (mode 0700) created inside the caller's staging directory. The
    /// caller owns it: move the disks out (e.g. `SnapshotBackend::adopt_disks`), then remove
    /// it, or call [`ImportedArchive::discard`].
    pub staging: PathBuf,
}

impl ImportedArchive {
    /// The staged disks in the shape `SnapshotBackend::adopt_disks` takes.
    pub fn disk_source(&self) -> DiskSource {
        DiskSource {
            guest_rootfs: self.disks.guest_rootfs.clone(),
            container: self.disks.container.clone(),
        }
    }

    /// Remove the private staging directory and whatever is still in it.
    ///
    /// Errors: [`Error::Io`] with the directory.
    pub fn discard(self) -> Result<()> {
        match std::fs::remove_dir_all(&self.staging) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&self.staging, e)),
            _ => Ok(()),
        }
    }
}

/// One entry of an archive as listed by [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Entry name (`guest-rootfs.qcow2`, `disk.qcow2` or `manifest.json`).
    pub name: String,
    /// Size of the entry's data, in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the entry's data.
    pub checksum: String,
}

/// What [`inspect`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// The manifest (checked against the disks).
    pub manifest: ArchiveManifest,
    /// Name of the codec detected from the file's magic bytes.
    pub codec: String,
    /// Entries in stream order.
    pub entries: Vec<EntryInfo>,
    /// Size of the archive file, in bytes.
    pub archive_bytes: u64,
    /// Size of the decompressed tar stream, in bytes.
    pub tar_bytes: u64,
}

/// Reads decompressed data produced by a background thread, so that decompression and
/// hashing/writing use two cores.
struct ThreadedReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ThreadedReader {
    fn spawn(mut inner: Box<dyn Read + Send + 'static>) -> io::Result<ThreadedReader> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        std::thread::Builder::new()
            .name("boxsnap-decode".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match inner.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let last = filled == 0;
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return; // reader gone
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                    return;
                }
                if last {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                }
            })?;
        Ok(ThreadedReader {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for ThreadedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::other(
                        "decompression thread stopped unexpectedly",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the tar scan found.
struct Scan {
    codec: String,
    manifest: Option<Vec<u8>>,
    disks: [Option<(u64, [u8; 32])>; 2],
    entries: Vec<EntryInfo>,
    archive_bytes: u64,
    tar_bytes: u64,
}

/// Where a disk entry's bytes go during a scan.
type DiskSink<'s> = dyn FnMut(DiskRole) -> Result<Option<(PathBuf, File)>> + 's;

/// The entry kinds the reader recognises by name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    Manifest,
    Disk(DiskRole),
}

fn classify(name: &[u8]) -> std::result::Result<Known, &'static str> {
    if name == MANIFEST_NAME.as_bytes() {
        return Ok(Known::Manifest);
    }
    for role in DiskRole::ALL {
        if name == role.file_name().as_bytes() {
            return Ok(Known::Disk(role));
        }
    }
    if name.first() == Some(&b'/') {
        return Err("absolute paths are not allowed");
    }
    if name.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err("paths with '..' components are not allowed");
    }
    if name.contains(&0) {
        return Err("entry names must not contain NUL bytes");
    }
    Err(
        "unexpected entry: a .boxsnap holds only regular files named exactly \
         guest-rootfs.qcow2, disk.qcow2 and manifest.json",
    )
}

fn type_problem(typeflag: u8) -> Option<&'static str> {
    Some(match typeflag {
        REGULAR => return None,
        b'1' => "is a hard link; only regular files are allowed",
        b'2' => "is a symbolic link; only regular files are allowed",
        b'3' => "is a character device; only regular files are allowed",
        b'4' => "is a block device; only regular files are allowed",
        b'5' => "is a directory; only regular files are allowed",
        b'6' => "is a FIFO; only regular files are allowed",
        b'7' => "is a contiguous file; only regular files (type '0') are allowed",
        b'L' | b'K' => {
            "is a GNU long-name/long-link header; .boxsnap entry names are short and \
                        GNU extensions are not accepted"
        }
        b'S' => {
            "is a GNU sparse file; sparse tar entries are not supported (.boxsnap disks \
                 are sparse inside the qcow2 format instead)"
        }
        _ => "has an unknown tar entry type; only regular files are allowed",
    })
}

fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The tar-level reader with the archive path for error messages and the byte budget.
struct TarStream<'a> {
    path: &'a Path,
    r: ThreadedReader,
    total: u64,
    budget: u64,
}

impl TarStream<'_> {
    fn err(&self, entry: Option<&str>, detail: impl Into<String>) -> Error {
        Error::archive(self.path, entry, detail)
    }

    fn stream_err(&self, entry: Option<&str>, e: &io::Error) -> Error {
        let what = match e.kind() {
            io::ErrorKind::UnexpectedEof => "the archive is truncated",
            _ => "the compressed stream is corrupt or truncated",
        };
        let place = match entry {
            Some(_) => " inside this entry",
            None => "",
        };
        self.err(
            entry,
            format!("{what}{place} ({e}); the file is damaged, export it again"),
        )
    }

    fn charge(&mut self, n: u64, entry: Option<&str>) -> Result<()> {
        self.total = self.total.saturating_add(n);
        if self.total > self.budget {
            return Err(self.err(
                entry,
                format!(
                    "the decompressed archive exceeds the import limit of {} bytes",
                    self.budget
                ),
            ));
        }
        Ok(())
    }

    /// Read exactly `buf.len()` bytes of entry data or header.
    fn read_exact(&mut self, buf: &mut [u8], entry: Option<&str>) -> Result<()> {
        let got = fill(&mut self.r, buf).map_err(|e| self.stream_err(entry, &e))?;
        if got < buf.len() {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended early");
            return Err(self.stream_err(entry, &e));
        }
        Ok(())
    }

    fn skip_padding(&mut self, size: u64, entry: Option<&str>) -> Result<()> {
        let pad = tarfmt::padding(size);
        let mut buf = [0u8; BLOCK];
        self.read_exact(&mut buf[..pad], entry)
    }

    /// After the first zero block: the second one, then only zeros until a clean codec end.
    fn finish(&mut self) -> Result<()> {
        let mut block = [0u8; BLOCK];
        self.read_exact(&mut block, None)?;
        self.charge(BLOCK as u64, None)?;
        if block.iter().any(|&b| b != 0) {
            return Err(self.err(
                None,
                "a lone zero block inside the tar stream (the end-of-archive marker is two zero \
                 blocks); the file is damaged",
            ));
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .r
                .read(&mut buf)
                .map_err(|e| self.stream_err(None, &e))?;
            if n == 0 {
                return Ok(());
            }
            self.charge(n as u64, None)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(self.err(
                    None,
                    "data follows the tar end-of-archive marker; the file is damaged or not a \
                     .boxsnap",
                ));
            }
        }
    }
}

fn read_head(file: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut head = vec![0u8; BLOCK];
    let n = fill(file, &mut head).map_err(|e| Error::io(path, e))?;
    head.truncate(n);
    file.rewind().map_err(|e| Error::io(path, e))?;
    Ok(head)
}

/// Stream the whole archive, hashing disks (and writing them where `sink` says).
fn scan(
    path: &Path,
    codecs: &[Arc<dyn ArchiveCodec>],
    limits: &ImportLimits,
    sink: &mut DiskSink<'_>,
) -> Result<Scan> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It
    // has no effect on the regular files that pass the check below (open(2)).
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::archive(
            path,
            None,
            "not a regular file (a .boxsnap archive is a file, not a directory, FIFO or device)",
        ));
    }
    let head = read_head(&mut file, path)?;
    let codec = codec::detect(codecs, &head).ok_or_else(|| {
        let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let names: Vec<&str> = codecs.iter().map(|c| c.name()).collect();
        Error::archive(
            path,
            None,
            format!(
                "unknown archive format (first bytes {}); not a .boxsnap written with one of \
                 the codecs {}",
                if shown.is_empty() {
                    "none: the file is empty".to_owned()
                } else {
                    shown.join(" ")
                },
                names.join(", ")
            ),
        )
    })?;
    let decoder = codec.decoder(
        Box::new(BufReader::with_capacity(CHUNK, file)),
        &limits.decode,
    )?;
    let r = ThreadedReader::spawn(decoder).map_err(|e| Error::io(path, e))?;
    let mut ts = TarStream {
        path,
        r,
        total: 0,
        budget: limits.max_total_bytes,
    };
    let manifest_limit = limits.max_manifest_bytes.min(MAX_MANIFEST_BYTES);
    let mut out = Scan {
        codec: codec.name().to_owned(),
        manifest: None,
        disks: [None, None],
        entries: Vec::new(),
        archive_bytes: meta.len(),
        tar_bytes: 0,
    };
    let mut pax_path: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    let mut pax_pending = false;
    let mut copy_buf = vec![0u8; CHUNK];
    loop {
        let mut block = [0u8; BLOCK];
        let got = fill(&mut ts.r, &mut block).map_err(|e| ts.stream_err(None, &e))?;
        if got == 0 {
            return Err(ts.err(
                None,
                "the archive is truncated: the stream ended without the tar end-of-archive \
                 marker; the file is damaged, export it again",
            ));
        }
        if got < BLOCK {
            return Err(ts.err(None, "the archive is truncated inside a tar header"));
        }
        ts.charge(BLOCK as u64, None)?;
        if block.iter().all(|&b| b == 0) {
            if pax_pending {
                return Err(ts.err(None, "a pax extended header is not followed by an entry"));
            }
            ts.finish()?;
            break;
        }
        let h = tarfmt::parse_header(&block).map_err(|e| {
            ts.err(
                None,
                format!(
                    "corrupt tar header at offset {}: {e}",
                    ts.total - BLOCK as u64
                ),
            )
        })?;
        let raw_name = String::from_utf8_lossy(&h.name).into_owned();
        match h.typeflag {
            PAX_LOCAL | PAX_GLOBAL => {
                let global = h.typeflag == PAX_GLOBAL;
                if pax_pending && !global {
                    return Err(ts.err(Some(&raw_name), "two pax extended headers in a row"));
                }
                if h.size > MAX_PAX_BYTES {
                    return Err(ts.err(
                        Some(&raw_name),
                        format!("pax header of {} bytes exceeds {MAX_PAX_BYTES}", h.size),
                    ));
                }
                let mut data = vec![0u8; h.size as usize];
                ts.read_exact(&mut data, Some(&raw_name))?;
                ts.charge(h.size, Some(&raw_name))?;
                ts.skip_padding(h.size, Some(&raw_name))?;
                ts.charge(tarfmt::padding(h.size) as u64, Some(&raw_name))?;
                let records = tarfmt::parse_pax(&data)
                    .map_err(|e| ts.err(Some(&raw_name), format!("bad pax header: {e}")))?;
                for (key, value) in records {
                    if key.starts_with("GNU.sparse.") {
                        return Err(ts.err(
                            Some(&raw_name),
                            "GNU sparse entries are not supported (.boxsnap disks are sparse \
                             inside the qcow2 format instead)",
                        ));
                    }
                    match key.as_str() {
                        "path" | "size" if global => {
                            return Err(ts.err(
                                Some(&raw_name),
                                format!("a pax global header must not set '{key}'"),
                            ))
                        }
                        "path" => pax_path = Some(value),
                        "size" => {
                            let v = std::str::from_utf8(&value)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                                .ok_or_else(|| {
                                    ts.err(Some(&raw_name), "pax 'size' is not a decimal number")
                                })?;
                            pax_size = Some(v);
                        }
                        // Everything else (mtime, uid, uname, linkpath, comment, vendor keys)
                        // is metadata that does not change where or how much we extract.
                        _ => {}
                    }
                }
                if !global {
                    pax_pending = true;
                }
                continue;
            }
            _ => {}
        }
        pax_pending = false;
        let name_bytes = pax_path.take().unwrap_or(h.name);
        let size = pax_size.take().unwrap_or(h.size);
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        if let Some(problem) = type_problem(h.typeflag) {
            return Err(ts.err(Some(&name), format!("entry '{name}' {problem}")));
        }
        let known = classify(&name_bytes)
            .map_err(|problem| ts.err(Some(&name), format!("entry '{name}': {problem}")))?;
        if out.entries.iter().any(|e| e.name == name) {
            return Err(ts.err(
                Some(&name),
                format!("entry '{name}' appears more than once"),
            ));
        }
        let limit = match known {
            Known::Manifest => manifest_limit,
            Known::Disk(_) => limits.max_disk_bytes,
        };
        if size > limit {
            return Err(ts.err(
                Some(&name),
                format!("entry '{name}' declares {size} bytes, over the limit of {limit} bytes"),
            ));
        }
        let padded = size.saturating_add(tarfmt::padding(size) as u64);
        ts.charge(padded, Some(&name))?;
        let mut hasher = Sha256::new();
        match known {
            Known::Manifest => {
                let mut data = vec![0u8; size as usize];
                ts.read_exact(&mut data, Some(&name))?;
                hasher.update(&data);
                out.manifest = Some(data);
            }
            Known::Disk(role) => {
                let mut target = sink(role)?;
                let mut left = size;
                while left > 0 {
                    let n = left.min(copy_buf.len() as u64) as usize;
                    ts.read_exact(&mut copy_buf[..n], Some(&name))?;
                    hasher.update(&copy_buf[..n]);
                    if let Some((p, f)) = target.as_mut() {
                        f.write_all(&copy_buf[..n]).map_err(|e| Error::io(&*p, e))?;
                    }
                    left -= n as u64;
                }
                if let Some((p, f)) = target {
                    f.sync_all().map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        ts.skip_padding(size, Some(&name))?;
        let digest: [u8; 32] = hasher.finalize().into();
        if let Known::Disk(role) = known {
            out.disks[role as usize] = Some((size, digest));
        }
        out.entries.push(EntryInfo {
            name,
            size,
            checksum: format_sha256(&digest),
        });
    }
    out.tar_bytes = ts.total;
    Ok(out)
}

/// Check the scan against its manifest (everything but the caller's disk validator).
fn verify(path: &Path, scan: &Scan) -> Result<ArchiveManifest> {
    let bytes = scan.manifest.as_deref().ok_or_else(|| {
        Error::archive(
            path,
            Some(MANIFEST_NAME),
            "the archive has no manifest.json; it is not a .boxsnap or it is damaged",
        )
    })?;
    let m = manifest::parse(path, bytes)?;
    if m.codec != scan.codec {
        return Err(Error::archive(
            path,
            Some(MANIFEST_NAME),
            format!(
                "the manifest says codec '{}' but the file is compressed with '{}'; the archive \
                 was altered",
                m.codec, scan.codec
            ),
        ));
    }
    for role in DiskRole::ALL {
        let name = role.file_name();
        let (want_bytes, want_sum) = match role {
            DiskRole::GuestRootfs => (m.guest_disk_bytes, &m.guest_disk_checksum),
            DiskRole::Container => (m.container_disk_bytes, &m.container_disk_checksum),
        };
        let Some((size, digest)) = scan.disks[role as usize] else {
            return Err(Error::archive(
                path,
                Some(name),
                format!("'{name}' is listed in the manifest but missing from the archive"),
            ));
        };
        if size != want_bytes {
            return Err(Error::archive(
                path,
                Some(name),
                format!("'{name}' holds {size} bytes but the manifest says {want_bytes}"),
            ));
        }
        if parse_sha256(want_sum) != Some(digest) {
            return Err(Error::archive(
                path,
                Some(name),
                format!(
                    "checksum mismatch for '{name}': manifest {want_sum}, content {}; the \
                     archive is damaged",
                    format_sha256(&digest)
                ),
            ));
        }
    }
    Ok(m)
}

/// Verify and extract a `.boxsnap` archive into a fresh private directory inside
/// `staging_dir`.
///
/// Steps: detect the codec among `codecs` by the file's magic bytes (never its name); stream
/// the tar, accepting only regular files named exactly `guest-rootfs.qcow2`, `disk.qcow2` and
/// `manifest.json`, each at most once (pax headers are read as metadata); write the disks with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, into a new directory of mode 0700, enforcing
/// `limits` and hashing as they stream; require the tar end-of-archive marker and a clean end
/// of the codec stream; parse the manifest strictly (see [`crate::manifest::parse`]); check
/// the codec, both disks' presence, sizes and SHA-256 checksums; then call `validate` on each
/// staged disk (guest rootfs first) and require the virtual size it returns to equal the
/// manifest's.
///
/// `validate(role, staged_path)` must open the file as an untrusted standalone qcow2 (no
/// backing file, no external data file, no unknown incompatible features, not corrupt) and
/// return its virtual size in bytes; the runtime wires it to the qcow2 backend's safe open.
///
/// On success the staged files stay for the caller ([`ImportedArchive::staging`]). On any
/// failure the private directory is removed entirely and nothing else was created.
///
/// Errors: [`Error::Archive`] (with the entry when one entry is at fault) for anything wrong
/// with the file, including a disk `validate` refused (its message is included);
/// [`Error::InvalidName`] for a manifest `box_name` that breaks the naming rule;
/// [`Error::NoSpace`] / [`Error::Io`] for failures writing into `staging_dir`;
/// [`Error::Io`] when the archive cannot be opened.
pub fn import_archive<V>(
    path: &Path,
    codecs: &[Arc<dyn ArchiveCodec>],
    staging_dir: &Path,
    limits: &ImportLimits,
    validate: V,
) -> Result<ImportedArchive>
where
    V: Fn(DiskRole, &Path) -> Result<u64>,
{
    let dir = tempfile::Builder::new()
        .prefix("import-")
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(staging_dir)
        .map_err(|e| Error::io(staging_dir, e))?;
    let base = dir.path().to_path_buf();
    let disks = DiskSet::try_from_fn(|r| Ok::<_, Error>(base.join(r.file_name())))?;
    let mut sink = |role: DiskRole| -> Result<Option<(PathBuf, File)>> {
        let p = disks.get(role).to_path_buf();
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        Ok(Some((p, f)))
    };
    let scanned = scan(path, codecs, limits, &mut sink)?;
    let manifest = verify(path, &scanned)?;
    for role in DiskRole::ALL {
        let want = match role {
            DiskRole::GuestRootfs => manifest.guest_disk_virtual_size,
            DiskRole::Container => manifest.container_disk_virtual_size,
        };
        let name = role.file_name();
        let got = validate(role, disks.get(role)).map_err(|e| {
            Error::archive(
                path,
                Some(name),
                format!("the {role} disk image was refused: {e}"),
            )
        })?;
        if got != want {
            return Err(Error::archive(
                path,
                Some(name),
                format!("'{name}' has a virtual size of {got} bytes but the manifest says {want}"),
            ));
        }
    }
    File::open(&base)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&base, e))?;
    Ok(ImportedArchive {
        manifest,
        disks,
        codec: scanned.codec,
        staging: dir.keep(),
    })
}

/// Read and verify a whole archive without keeping anything: the manifest (checked against
/// the disks' sizes and SHA-256 checksums) and the entry list. Does not run a qcow2 validator.
///
/// Errors: as [`import_archive`], minus the staging and validator errors.
pub fn inspect(
    path: &Path,
    codecs: &[Arc<dyn ArchiveCodec>],
    limits: &ImportLimits,
) -> Result<ArchiveInfo> {
    let mut sink = |_: DiskRole| -> Result<Option<(PathBuf, File)>> { Ok(None) };
    let scanned = scan(path, codecs, limits, &mut sink)?;
    let manifest = verify(path, &scanned)?;
    Ok(ArchiveInfo {
        manifest,
        codec: scanned.codec,
        entries: scanned.entries,
        archive_bytes: scanned.archive_bytes,
        tar_bytes: scanned.tar_bytes,
    })
}
