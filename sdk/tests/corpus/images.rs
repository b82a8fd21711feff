//! Hostile qcow2 images, made by `qemu-img`/`qemu-io` and then, where qemu refuses to write
//! such a thing, by poking header bytes at the offsets of the qcow2 specification (qemu
//! `docs/interop/qcow2.rst`, "Header"). The same recipes as `backends/qcow2/tests/reject.rs`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Header offsets (qcow2 spec): backing name offset/size, cluster_bits, size, crypt_method,
/// l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters,
/// incompatible_features, compression_type.
pub const BACKING_OFFSET: u64 = 8;
pub const CLUSTER_BITS: u64 = 20;
pub const CRYPT_METHOD: u64 = 32;
pub const L1_SIZE: u64 = 36;
pub const L1_OFFSET: u64 = 40;
pub const RT_OFFSET: u64 = 48;
pub const RT_CLUSTERS: u64 = 56;
pub const INCOMPAT: u64 = 72;
pub const COMPRESSION_TYPE: u64 = 104;

pub fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
pub fn be64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

/// Run a command in `dir` (None: the current directory); panics with its output on failure.
pub fn run_in(dir: Option<&Path>, cmd: &str, args: &[&str]) {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img create -f qcow2 [opts] path size`.
pub fn create(path: &Path, size: &str, opts: &[&str]) {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    a.extend_from_slice(opts);
    a.push(p(path));
    a.push(size);
    run_in(None, "qemu-img", &a);
}

/// `qemu-io -c 'write -P pattern off len'`.
pub fn write(path: &Path, pattern: u8, off: u64, len: u64) {
    run_in(
        None,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -q -P {pattern:#x} {off} {len}"),
            p(path),
        ],
    );
}

/// A small standalone qcow2: 1 MiB virtual, 512-byte clusters, 4 KiB of `pattern` at 0 (a
/// few KiB on disk, so archives built from it are small fuzz seeds).
pub fn tiny(dir: &Path, name: &str, pattern: u8) -> PathBuf {
    let img = dir.join(name);
    create(&img, "1M", &["-o", "cluster_size=512"]);
    write(&img, pattern, 0, 4096);
    img
}

/// Write `bytes` at `off`.
pub fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// A [`tiny`] image with `edits` poked into it.
pub fn poked(dir: &Path, name: &str, edits: &[(u64, Vec<u8>)]) -> PathBuf {
    let img = tiny(dir, name, 0x5c);
    for (off, b) in edits {
        poke(&img, *off, b);
    }
    img
}

/// `qemu-img create -u -b backing -F fmt` (the backing file need not exist), 1 MiB.
pub fn overlay(dir: &Path, name: &str, backing: &str, fmt: &str) -> PathBuf {
    let img = dir.join(name);
    run_in(
        Some(dir),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            backing,
            "-F",
            fmt,
            p(&img),
            "1M",
        ],
    );
    img
}

/// Point `img`'s backing file at `backing` without checking it (`qemu-img rebase -u`).
pub fn rebase_unsafe(dir: &Path, img: &Path, backing: &str) {
    run_in(
        Some(dir),
        "qemu-img",
        &["rebase", "-q", "-u", "-b", backing, "-F", "qcow2", p(img)],
    );
}

/// A LUKS-encrypted qcow2 made by qemu-img (cheap key derivation).
pub fn luks(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    run_in(
        None,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=hunter2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            p(&img),
            "1M",
        ],
    );
    img
}

/// A qcow2 with a real external data file whose name in the header is then changed to
/// `/etc/passwd` (case A02): the header extension holds the name made here, 11 bytes like
/// the target, which are overwritten in place.
pub fn data_file_to_host(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    let placeholder = "xxxxxxx.dat";
    assert_eq!(placeholder.len(), "/etc/passwd".len());
    run_in(
        Some(dir),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={placeholder}"),
            p(&img),
            "1M",
        ],
    );
    let bytes = std::fs::read(&img).unwrap();
    let at = bytes
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("data file name in the header");
    poke(&img, at as u64, b"/etc/passwd");
    std::fs::remove_file(dir.join(placeholder)).unwrap();
    img
}

/// A compressed qcow2 (`qemu-img convert -c`, 512-byte clusters, `kind` = zlib or zstd)
/// whose first compressed cluster is overwritten with 0xff bytes.
pub fn broken_compressed(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    create(&src, "64k", &["-o", "cluster_size=512"]);
    write(&src, 0x21, 0, 8192);
    let img = dir.join(name);
    run_in(
        None,
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size=512,compression_type={kind}"),
            p(&src),
            p(&img),
        ],
    );
    std::fs::remove_file(&src).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    let be = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().unwrap());
    let cluster_bits = u32::from_be_bytes(bytes[20..24].try_into().unwrap()) as u64;
    let l1 = be(L1_OFFSET as usize) as usize;
    let l2 = (be(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let entry = be(l2);
    assert!(entry & (1 << 62) != 0, "first cluster is compressed");
    let x = 62 - (cluster_bits - 8);
    let host = entry & ((1u64 << x) - 1);
    poke(&img, host, &[0xff; 64]);
    img
}

/// A chain of `depth` overlays above a base, all in `dir`; returns the top.
pub fn deep_chain(dir: &Path, prefix: &str, depth: usize) -> PathBuf {
    let base = dir.join(format!("{prefix}-0.qcow2"));
    create(&base, "1M", &[]);
    let mut top = base;
    for i in 1..=depth {
        let name = format!("{prefix}-{i}.qcow2");
        let prev = top.file_name().unwrap().to_str().unwrap().to_owned();
        top = overlay(dir, &name, &prev, "qcow2");
    }
    top
}

/// The refcount of cluster 0 (the header) set to 0 in a [`tiny`] image: the header is still
/// valid but `qemu-img check` (and ours) reports a corruption.
pub fn bad_refcount(dir: &Path, name: &str) -> PathBuf {
    let img = tiny(dir, name, 0x3c);
    let bytes = std::fs::read(&img).unwrap();
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let block = u64::from_be_bytes(bytes[rt..rt + 8].try_into().unwrap());
    // 16-bit refcounts: entry 0 of the first block is the header cluster's.
    poke(&img, block, &[0, 0]);
    img
}
