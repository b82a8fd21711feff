//! Test fixtures shared by the archive integration tests: real qcow2 files made with
//! `qemu-img`/`qemu-io`, a `FlatDisk` that streams such a file, a minimal qcow2 header
//! validator, hostile tar builders (Python's `tarfile`) and filesystem snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, DiskRole, Error, FlatDisk, Result};
use boxlite_archive::{ExportDisks, ExportMeta};
use chrono::{TimeZone, Utc};

/// Run a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Is `tool` on PATH? Panics under CI=true when it is not (the tests need it there).
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required under CI=true (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPING: {tool} is not installed");
    }
    ok
}

/// Deterministic pseudo-random bytes (xorshift), incompressible for zstd/lz4.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A qcow2 made by `qemu-img convert` from `random_mib` MiB of random data followed by
/// zeros up to `virtual_mib` MiB.
pub fn random_qcow2(
    dir: &Path,
    name: &str,
    random_mib: usize,
    virtual_mib: usize,
    seed: u64,
) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut f = File::create(&raw).unwrap();
    f.write_all(&random_bytes(random_mib << 20, seed)).unwrap();
    f.set_len((virtual_mib as u64) << 20).unwrap();
    drop(f);
    let out = dir.join(name);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&out));
    std::fs::remove_file(raw).unwrap();
    out
}

/// `qemu-img create -f qcow2 <virtual_mib>M` + `qemu-io -c 'write -P 0xab 0 1M'`.
pub fn pattern_qcow2(dir: &Path, name: &str, virtual_mib: usize) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&out)
        .arg(format!("{virtual_mib}M")));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 1M"])
        .arg(&out));
    out
}

/// Virtual size from a qcow2 header (bytes 24..32, big-endian).
pub fn qcow2_virtual_size(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 32 || &bytes[0..4] != b"QFI\xfb" {
        return None;
    }
    Some(u64::from_be_bytes(bytes[24..32].try_into().ok()?))
}

/// A minimal stand-in for the qcow2 backend's safe open: magic, no backing file, virtual size.
pub fn test_validator(_role: DiskRole, path: &Path) -> Result<u64> {
    let mut head = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| Error::io(path, e))?;
    if head[8..16] != [0u8; 8] {
        return Err(Error::Unsupported {
            what: "qcow2 with a backing file".into(),
            path: Some(path.into()),
            hint: "flatten it".into(),
        });
    }
    qcow2_virtual_size(&head).ok_or_else(|| Error::corrupt(path, "not a qcow2 header"))
}

/// A `FlatDisk` streaming a standalone qcow2 file as is.
pub struct FileFlatDisk {
    pub path: PathBuf,
    pub size: u64,
    pub virtual_size: u64,
}

impl FileFlatDisk {
    pub fn open(path: &Path) -> FileFlatDisk {
        let bytes = std::fs::read(path).unwrap();
        FileFlatDisk {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            virtual_size: qcow2_virtual_size(&bytes).expect("qcow2 fixture"),
        }
    }
}

impl FlatDisk for FileFlatDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64> {
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        std::io::copy(&mut f, out).map_err(|e| Error::io(&self.path, e))
    }
}

/// The source disks of a test box.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub guest: PathBuf,
    pub container: PathBuf,
}

impl Fixture {
    /// Guest: 2 MiB random data in an 8 MiB qcow2. Container: 1 MiB of 0xab in a 16 MiB qcow2.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let guest = random_qcow2(dir.path(), "guest.qcow2", 2, 8, 7);
        let container = pattern_qcow2(dir.path(), "container.qcow2", 16);
        Fixture {
            dir,
            guest,
            container,
        }
    }

    pub fn disks(&self) -> ExportDisks {
        ExportDisks {
            guest_rootfs: Box::new(FileFlatDisk::open(&self.guest)),
            container: Box::new(FileFlatDisk::open(&self.container)),
        }
    }

    pub fn source(&self, role: DiskRole) -> &Path {
        match role {
            DiskRole::GuestRootfs => &self.guest,
            DiskRole::Container => &self.container,
        }
    }
}

pub fn meta() -> ExportMeta {
    ExportMeta {
        box_name: Some("web-01".into()),
        image: "alpine-3.20.qcow2".into(),
        exported_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
    }
}

pub fn codec(name: &str) -> Arc<dyn ArchiveCodec> {
    boxlite_api::registry::codec(name, &Default::default()).unwrap()
}

/// Every file, directory and symlink under `root` (relative path -> kind and size).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if md.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else if md.file_type().is_symlink() {
                out.insert(rel, "symlink".into());
            } else {
                out.insert(rel, format!("file {}", md.len()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

const TAR_BUILDER: &str = r#"
import io, json, sys, tarfile
spec = json.load(open(sys.argv[1]))
tf = tarfile.open(sys.argv[2], mode="w", format=tarfile.PAX_FORMAT)
for e in spec:
    ti = tarfile.TarInfo(e["name"])
    ti.mtime = 1700000000
    ti.mode = 0o644
    kind = e.get("type", "file")
    data = None
    if kind == "file":
        if "src" in e:
            data = open(e["src"], "rb").read()
        else:
            data = e.get("data", "").encode()
        ti.size = len(data)
    elif kind == "symlink":
        ti.type = tarfile.SYMTYPE; ti.linkname = e["link"]
    elif kind == "hardlink":
        ti.type = tarfile.LNKTYPE; ti.linkname = e["link"]
    elif kind == "dir":
        ti.type = tarfile.DIRTYPE; ti.mode = 0o755
    elif kind == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif kind == "chr":
        ti.type = tarfile.CHRTYPE; ti.devmajor = 1; ti.devminor = 3
    if "pax" in e:
        ti.pax_headers = e["pax"]
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)
tf.close()
"#;

/// Build a plain tar with Python's `tarfile` (PAX format) from a JSON entry list:
/// `{"name", "type": file|symlink|hardlink|dir|fifo|chr, "src"|"data", "link", "pax"}`.
pub fn python_tar(spec: &serde_json::Value, out: &Path) {
    let spec_file = out.with_extension("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    run(Command::new("python3")
        .arg("-c")
        .arg(TAR_BUILDER)
        .arg(&spec_file)
        .arg(out));
    std::fs::remove_file(spec_file).unwrap();
}

/// Compress `tar` with `codec` (our own encoder) into `out`.
pub fn compress(codec: &dyn ArchiveCodec, tar: &[u8], out: &Path) {
    let f = File::create(out).unwrap();
    let mut enc = codec.encoder(Box::new(f), codec.default_level()).unwrap();
    enc.write_all(tar).unwrap();
    enc.finish().unwrap();
}
