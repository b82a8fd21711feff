//! Every refusal of the safe open, made by poking header bytes of a real
//! image, gives its typed error (never a panic); A02 inputs are refused.

mod common;

use boxlite_backend_qcow2::image::{Chain, Image, ImageError, OpenOptions};
use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn base(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    create(&img, "4M", &[]);
    qemu_io(&img, &[w(0x5c, 0, 200_000)]);
    img
}

fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn poked(dir: &Path, name: &str, edits: &[(u64, Vec<u8>)]) -> PathBuf {
    let img = base(dir, name);
    for (off, b) in edits {
        poke(&img, *off, b);
    }
    img
}

fn open_err(path: &Path, writable: bool) -> ImageError {
    let e = Image::open(path, writable).expect_err("open must fail");
    assert_eq!(e.path(), path, "error names the image");
    assert!(!e.to_string().is_empty());
    // Chain::open must refuse the same way.
    let e2 = Chain::open(path, &OpenOptions::new().writable(writable)).expect_err("chain open");
    assert_eq!(std::mem::discriminant(&e), std::mem::discriminant(&e2));
    e
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
fn be64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[test]
fn header_field_rejections() {
    if !qemu_available("header_field_rejections") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    macro_rules! expect {
        ($name:expr, $edits:expr, $writable:expr, $pat:pat) => {{
            let img = poked(dp, $name, &$edits);
            let e = open_err(&img, $writable);
            assert!(matches!(e, $pat), "{}: unexpected {e:?}", $name);
            e
        }};
    }
    let e = expect!(
        "magic",
        [(0, b"QFI\x00".to_vec())],
        false,
        ImageError::BadMagic { .. }
    );
    assert!(e.is_corrupt());
    expect!(
        "v1",
        [(4, be32(1))],
        false,
        ImageError::UnsupportedVersion { version: 1, .. }
    );
    let e = expect!(
        "v4",
        [(4, be32(4))],
        false,
        ImageError::UnsupportedVersion { version: 4, .. }
    );
    assert!(e.is_unsupported());
    for (i, cb) in [8u32, 22, 0xffff_ffff].iter().enumerate() {
        expect!(
            &format!("cb{i}"),
            [(20, be32(*cb))],
            false,
            ImageError::BadClusterBits { .. }
        );
    }
    expect!(
        "rco7",
        [(96, be32(7))],
        false,
        ImageError::BadRefcountOrder {
            refcount_order: 7,
            ..
        }
    );
    for (i, hl) in [100u32, 105, 0x20000].iter().enumerate() {
        expect!(
            &format!("hl{i}"),
            [(100, be32(*hl))],
            false,
            ImageError::BadHeader { .. }
        );
    }
    // L1 table: beyond the file, unaligned, absurdly large.
    expect!(
        "l1far",
        [(40, be64(1 << 40))],
        false,
        ImageError::BadTable {
            table: "L1 table",
            ..
        }
    );
    expect!(
        "l1unal",
        [(40, be64(0x30200))],
        false,
        ImageError::BadTable {
            table: "L1 table",
            ..
        }
    );
    expect!(
        "l1huge",
        [(36, be32(0xffff_ffff))],
        false,
        ImageError::BadTable {
            table: "L1 table",
            ..
        }
    );
    expect!(
        "l1small",
        [(36, be32(0)), (24, be64(1 << 40))],
        false,
        ImageError::BadTable { .. }
    );
    // Refcount table.
    expect!(
        "rtfar",
        [(48, be64(1 << 40))],
        false,
        ImageError::BadTable {
            table: "refcount table",
            ..
        }
    );
    expect!(
        "rtunal",
        [(48, be64(0x10008))],
        false,
        ImageError::BadTable {
            table: "refcount table",
            ..
        }
    );
    expect!(
        "rthuge",
        [(56, be32(0xffff_ffff))],
        false,
        ImageError::BadTable {
            table: "refcount table",
            ..
        }
    );
    // Snapshot table.
    expect!(
        "snaps",
        [(60, be32(0xffff_ffff)), (64, be64(0x10000))],
        false,
        ImageError::BadTable { .. }
    );
    // Virtual size that cannot be represented.
    expect!(
        "size",
        [(24, be64(u64::MAX))],
        false,
        ImageError::BadTable { .. } | ImageError::BadHeader { .. }
    );
    // Features.
    let e = expect!(
        "aes",
        [(32, be32(1))],
        false,
        ImageError::Encrypted { method: 1, .. }
    );
    assert!(e.is_unsupported());
    expect!(
        "luks",
        [(32, be32(2))],
        false,
        ImageError::Encrypted { method: 2, .. }
    );
    expect!(
        "datafile",
        [(72, be64(1 << 2))],
        false,
        ImageError::ExternalDataFile { .. }
    );
    expect!(
        "extl2",
        [(72, be64(1 << 4))],
        false,
        ImageError::ExtendedL2 { .. }
    );
    let e = expect!(
        "unk5",
        [(72, be64(1 << 5))],
        false,
        ImageError::UnknownIncompatibleFeatures { bits: 32, .. }
    );
    assert!(e.is_unsupported());
    expect!(
        "unk63",
        [(72, be64(1 << 63))],
        false,
        ImageError::UnknownIncompatibleFeatures { .. }
    );
    expect!(
        "ctype2",
        [(72, be64(1 << 3)), (104, vec![2])],
        false,
        ImageError::UnsupportedCompression {
            compression_type: 2,
            ..
        }
    );
    expect!(
        "cbit0",
        [(72, be64(1 << 3)), (104, vec![0])],
        false,
        ImageError::UnsupportedCompression { .. }
    );
    expect!(
        "cnobit",
        [(104, vec![1])],
        false,
        ImageError::UnsupportedCompression { .. }
    );
    let e = expect!(
        "corrupt",
        [(72, be64(1 << 1))],
        false,
        ImageError::CorruptBit { .. }
    );
    assert!(e.is_corrupt());
    expect!(
        "corruptw",
        [(72, be64(1 << 1))],
        true,
        ImageError::CorruptBit { .. }
    );
    // Dirty: readable, not writable.
    let dirty = poked(dp, "dirty", &[(72, be64(1))]);
    Image::open(&dirty, false).expect("dirty image opens read-only");
    let e = open_err(&dirty, true);
    assert!(matches!(e, ImageError::Dirty { .. }), "{e:?}");
    // Backing name outside cluster 0 / too long; extension running past cluster 0.
    expect!(
        "bfo",
        [(8, be64(0x20000)), (16, be32(4))],
        false,
        ImageError::BadHeader { .. }
    );
    expect!(
        "bfs",
        [(8, be64(0x200)), (16, be32(2000))],
        false,
        ImageError::BadHeader { .. }
    );
    expect!(
        "ext",
        [(112, be32(0x1234_5678)), (116, be32(0xffff_fff0))],
        false,
        ImageError::BadHeader { .. }
    );
    // Encryption / data-file header extensions without the bits.
    expect!(
        "cryptext",
        [(112, be32(0x0537_be77)), (116, be32(16))],
        false,
        ImageError::Encrypted { .. }
    );
    expect!(
        "dfext",
        [(112, be32(0x4441_5441)), (116, be32(4))],
        false,
        ImageError::ExternalDataFile { .. }
    );
}

#[test]
fn truncations_and_garbage_never_panic() {
    if !qemu_available("truncations_and_garbage_never_panic") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = base(d.path(), "t.qcow2");
    let bytes = std::fs::read(&img).unwrap();
    let t = d.path().join("trunc.qcow2");
    for n in [
        0usize, 3, 4, 71, 72, 103, 104, 111, 112, 4096, 65535, 65536, 0x30000, 0x40000,
    ] {
        std::fs::write(&t, &bytes[..n.min(bytes.len())]).unwrap();
        let r = Chain::open(&t, &OpenOptions::default());
        if let Ok(c) = r {
            let mut b = vec![0u8; 65536];
            let _ = c.read_at(&mut b, 0);
        }
    }
    // Garbage L1 entries: reading must fail cleanly, not panic.
    let g = d.path().join("garbage.qcow2");
    std::fs::write(&g, &bytes).unwrap();
    let l1_off = u64::from_be_bytes(bytes[40..48].try_into().unwrap());
    poke(&g, l1_off, &be64(0x7fff_ffff_ffff_fe00));
    let c = Chain::open(&g, &OpenOptions::default()).unwrap();
    let mut b = vec![0u8; 4096];
    let e = c.read_at(&mut b, 0).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}");
    poke(&g, l1_off, &be64(0x10200));
    let c = Chain::open(&g, &OpenOptions::default()).unwrap();
    assert!(c.read_at(&mut b, 0).is_err());
}

/// Case A02: disks that point at host files are refused.
#[test]
fn a02_host_file_backings_refused() {
    if !qemu_available("a02_host_file_backings_refused") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let evil = root.join("evil.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            p(&evil),
            "1M",
        ],
    );
    let opts = OpenOptions::new().allowed_root(Some(root.clone()));
    let e = Chain::open(&evil, &opts).unwrap_err();
    assert!(matches!(e, ImageError::BackingOutsideRoot { .. }), "{e:?}");
    assert!(e.is_policy());
    // Relative escape.
    let rel = root.join("rel.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "../../../../../../etc/passwd",
            "-F",
            "raw",
            p(&rel),
            "1M",
        ],
    );
    assert!(matches!(
        Chain::open(&rel, &opts).unwrap_err(),
        ImageError::BackingOutsideRoot { .. }
    ));
    // External data file (created for real, then renamed to a host path).
    let df = root.join("df.qcow2");
    let data = root.join("df.data");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p(&data)),
            p(&df),
            "1M",
        ],
    );
    assert!(matches!(
        Image::open(&df, false).unwrap_err(),
        ImageError::ExternalDataFile { .. }
    ));
    // Not a qcow2 header at all.
    let junk = root.join("junk.qcow2");
    std::fs::write(&junk, b"this is not a disk image at all, just text").unwrap();
    assert!(matches!(
        Image::open(&junk, false).unwrap_err(),
        ImageError::BadMagic { .. }
    ));
    // Extended L2 made by qemu.
    let x = root.join("x.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            p(&x),
            "1M",
        ],
    );
    assert!(matches!(
        Image::open(&x, false).unwrap_err(),
        ImageError::ExtendedL2 { .. }
    ));
    // Symlinked backing that escapes the root.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret.raw");
    std::fs::write(&target, [7u8; 4096]).unwrap();
    std::os::unix::fs::symlink(&target, root.join("link.raw")).unwrap();
    let sl = root.join("sl.qcow2");
    create_overlay_qemu(&sl, "link.raw", "raw", Some("1M"));
    assert!(matches!(
        Chain::open(&sl, &opts).unwrap_err(),
        ImageError::BackingOutsideRoot { .. }
    ));
    // Without a root the same chain opens.
    Chain::open(&sl, &OpenOptions::default()).unwrap();
}

#[test]
fn chain_policies() {
    if !qemu_available("chain_policies") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    // Loop a -> b -> a, and a self loop.
    let a = dp.join("a.qcow2");
    let b = dp.join("b.qcow2");
    create(&a, "1M", &[]);
    create_overlay_qemu(&b, "a.qcow2", "qcow2", None);
    run(
        "qemu-img",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)],
    );
    let e = Chain::open(&b, &OpenOptions::default()).unwrap_err();
    assert!(matches!(e, ImageError::BackingLoop { .. }), "{e:?}");
    let s = dp.join("self.qcow2");
    create(&s, "1M", &[]);
    run(
        "qemu-img",
        &["rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", p(&s)],
    );
    assert!(matches!(
        Chain::open(&s, &OpenOptions::default()).unwrap_err(),
        ImageError::BackingLoop { .. }
    ));
    // Depth cap.
    let mut prev = "base.qcow2".to_string();
    create(&dp.join(&prev), "1M", &[]);
    for i in 0..5 {
        let n = format!("d{i}.qcow2");
        create_overlay_qemu(&dp.join(&n), &prev, "qcow2", None);
        prev = n;
    }
    let top = dp.join(&prev);
    let e = Chain::open(&top, &OpenOptions::new().max_depth(4)).unwrap_err();
    assert!(
        matches!(e, ImageError::ChainTooDeep { max: 4, .. }),
        "{e:?}"
    );
    assert_eq!(
        Chain::open(&top, &OpenOptions::new().max_depth(5))
            .unwrap()
            .layers()
            .len(),
        6
    );
    // Relative names resolve against the image's directory, not the cwd.
    std::fs::create_dir_all(dp.join("layers")).unwrap();
    std::fs::create_dir_all(dp.join("boxes/x")).unwrap();
    let l = dp.join("layers/l.qcow2");
    create(&l, "1M", &[]);
    qemu_io(&l, &[w(0x42, 0, 4096)]);
    let t = dp.join("boxes/x/t.qcow2");
    create_overlay_qemu(&t, "../../layers/l.qcow2", "qcow2", None);
    let c = Chain::open(&t, &OpenOptions::new().allowed_root(Some(dp.to_path_buf()))).unwrap();
    let mut buf = [0u8; 16];
    c.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x42; 16]);
    // Missing backing: Io error naming the missing file.
    let m = dp.join("m.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "nope.qcow2",
            "-F",
            "qcow2",
            p(&m),
            "1M",
        ],
    );
    let e = Chain::open(&m, &OpenOptions::default()).unwrap_err();
    assert!(e.is_io() && e.path().ends_with("nope.qcow2"), "{e:?}");
    // Protocol syntax and unknown formats.
    let j = dp.join("j.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "json:{\"x\":1}",
            "-F",
            "raw",
            p(&j),
            "1M",
        ],
    );
    assert!(matches!(
        Chain::open(&j, &OpenOptions::default()).unwrap_err(),
        ImageError::UnsupportedBacking { .. }
    ));
    let v = dp.join("v.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "a.qcow2",
            "-F",
            "vmdk",
            p(&v),
            "1M",
        ],
    );
    assert!(matches!(
        Chain::open(&v, &OpenOptions::default()).unwrap_err(),
        ImageError::UnsupportedBacking { .. }
    ));
}

/// A refcount table entry pointing past the end of the file: opening the image for writing
/// fails with a corruption instead of later writing a refcount block there. Found by fuzzing
/// (`open_image`): a 3 KB image whose table pointed at 90 GB became a 90 GB sparse file on
/// its first write, and `check` then walked all of it for seconds. Reading is unaffected.
#[test]
fn refcount_block_past_end_of_file_is_refused_for_writing() {
    if !qemu_available("refcount_block_past_end_of_file_is_refused_for_writing") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = base(d.path(), "rb.qcow2");
    let bytes = std::fs::read(&img).unwrap();
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap());
    poke(&img, rt + 5 * 8, &be64(0x15_0000_0000));
    let len = std::fs::metadata(&img).unwrap().len();
    let e = Chain::open(&img, &OpenOptions::new().writable(true)).unwrap_err();
    assert!(
        matches!(e, ImageError::Corrupt { ref reason, .. } if reason.contains("past the end")),
        "{e:?}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len, "file grew");
    let c = Chain::open(&img, &OpenOptions::default()).unwrap();
    let mut b = vec![0u8; 4096];
    c.read_at(&mut b, 0).unwrap();
    assert_eq!(b, vec![0x5c; 4096]);
    let report = boxlite_backend_qcow2::image::check(&img).unwrap();
    assert!(
        !report.is_clean(),
        "check reports the stray block: {report:?}"
    );
}
