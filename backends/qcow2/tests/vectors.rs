//! Test vectors built with qemu-img / qemu-io: our reads equal
//! `qemu-img convert -O raw`, our flatten passes `qemu-img check` and
//! `qemu-img compare`, and its planned size is exact.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn verify(top: &Path) {
    assert_read_matches_qemu(top);
    let flat = assert_flatten_ok(top);
    std::fs::remove_file(flat).unwrap();
}

/// Some scattered data writes, unaligned, inside `size` bytes.
fn scatter(size: u64, seed: u8) -> Vec<String> {
    let mut v = Vec::new();
    let step = size / 7;
    for i in 0..6u64 {
        let off = i * step + (i * 4096 + 512 * seed as u64) % (step / 2).max(512);
        let len = 3 * 4096 + 512 * i;
        if off + len <= size {
            v.push(w(seed.wrapping_add(i as u8 * 17) | 1, off, len));
        }
    }
    v
}

#[test]
fn compat_010_and_11() {
    if !qemu_available("compat_010_and_11") {
        return;
    }
    let d = tmp();
    for compat in ["0.10", "1.1"] {
        let img = d.path().join(format!("c{compat}.qcow2"));
        create(&img, "8M", &["-o", &format!("compat={compat}")]);
        let mut cmds = scatter(8 * MIB, 3);
        cmds.push("write -q -z 1M 256k".into());
        qemu_io(&img, &cmds);
        verify(&img);
    }
}

#[test]
fn cluster_sizes() {
    if !qemu_available("cluster_sizes") {
        return;
    }
    let d = tmp();
    for cs in ["512", "65536", "2M"] {
        let img = d.path().join(format!("cs{cs}.qcow2"));
        create(&img, "12M", &["-o", &format!("cluster_size={cs}")]);
        qemu_io(&img, &scatter(12 * MIB, 9));
        verify(&img);
        // Overlay with a different cluster size over it.
        let top = d.path().join(format!("cs{cs}-top.qcow2"));
        create_overlay_qemu(
            &top,
            img.file_name().unwrap().to_str().unwrap(),
            "qcow2",
            None,
        );
        qemu_io(
            &top,
            &[w(0x5a, 3 * MIB + 100 * 512, 70_000), w(0x66, 0, 512)],
        );
        verify(&top);
    }
}

fn compressed(kind: &str) {
    let d = tmp();
    let src = d.path().join("src.qcow2");
    create(&src, "6M", &[]);
    qemu_io(
        &src,
        &[
            w(0x11, 0, MIB),
            w(0x22, 2 * MIB + 4096, 300_000),
            w(0x33, 5 * MIB, 65536),
        ],
    );
    // Incompressible-ish data too: pattern with a twist via many small writes.
    let mut cmds = Vec::new();
    for i in 0..32u64 {
        cmds.push(w((i * 37 % 251) as u8, 4 * MIB + i * 1536, 1536));
    }
    qemu_io(&src, &cmds);
    let dst = d.path().join(format!("c-{kind}.qcow2"));
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={kind}"),
            p(&src),
            p(&dst),
        ],
    );
    let info = run("qemu-img", &["info", p(&dst)]);
    assert!(
        info.contains(&format!("compression type: {kind}")),
        "{info}"
    );
    verify(&dst);
    // Writes through our code on top of compressed clusters (COW of a
    // compressed cluster, zeroing a compressed cluster).
    let copy = d.path().join("wr.qcow2");
    std::fs::copy(&dst, &copy).unwrap();
    let copy2 = d.path().join("wr-qemu.qcow2");
    std::fs::copy(&dst, &copy2).unwrap();
    {
        use boxlite_backend_qcow2::image::{Chain, OpenOptions};
        let mut c = Chain::open(&copy, &OpenOptions::new().writable(true)).unwrap();
        c.write_at(&[0x77; 1000], 10_000).unwrap();
        c.write_at(&vec![0u8; 65536], 65536).unwrap();
        c.flush().unwrap();
    }
    qemu_io(
        &copy2,
        &[w(0x77, 10_000, 1000), "write -q -z 65536 65536".into()],
    );
    assert_qemu_check(&copy);
    assert_qemu_compare(&copy, &copy2);
}

#[test]
fn zlib_compressed() {
    if qemu_available("zlib_compressed") {
        compressed("zlib");
    }
}

#[test]
fn zstd_compressed() {
    if qemu_available("zstd_compressed") {
        compressed("zstd");
    }
}

#[test]
fn zero_clusters_and_discard_over_backing() {
    if !qemu_available("zero_clusters_and_discard_over_backing") {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.qcow2");
    create(&base, "4M", &[]);
    qemu_io(&base, &[w(0xaa, 0, 4 * MIB)]);
    let top = d.path().join("top.qcow2");
    create_overlay_qemu(&top, "base.qcow2", "qcow2", None);
    qemu_io(
        &top,
        &[
            w(0xbb, MIB, MIB),
            "write -q -z 512k 256k".into(),
            "write -q -z 1536k 64k".into(),
            "discard -q 1792k 128k".into(),
        ],
    );
    verify(&top);
    // Discard on a standalone image.
    let solo = d.path().join("solo.qcow2");
    create(&solo, "4M", &[]);
    qemu_io(
        &solo,
        &[
            w(0x12, 0, 4 * MIB),
            "discard -q 1M 1M".into(),
            "discard -q 3M 64k".into(),
        ],
    );
    verify(&solo);
}

#[test]
fn raw_backing_including_shorter() {
    if !qemu_available("raw_backing_including_shorter") {
        return;
    }
    let d = tmp();
    let raw = d.path().join("base.raw");
    let data: Vec<u8> = (0..(MIB + 12345) as usize)
        .map(|i| (i % 253) as u8 + 1)
        .collect();
    std::fs::write(&raw, &data).unwrap();
    let top = d.path().join("top.qcow2");
    create_overlay_qemu(&top, "base.raw", "raw", Some("4M"));
    qemu_io(&top, &[w(0x44, 512 * 1024, 4096), w(0x45, 3 * MIB, 4096)]);
    verify(&top);
    // Without the backing-format extension: probed (raw: no qcow2 magic).
    let top2 = d.path().join("top2.qcow2");
    std::fs::copy(&top, &top2).unwrap();
    hide_format_extension(&top2);
    verify(&top2);
}

/// Turn the backing-format extension (first extension after a 112-byte
/// header, as qemu writes it) into an unknown extension type.
fn hide_format_extension(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 112).unwrap();
    assert_eq!(u32::from_be_bytes(b), 0xe279_2aca);
    f.write_all_at(&0x1234_5678u32.to_be_bytes(), 112).unwrap();
}

#[test]
fn qcow2_backing_shorter_than_overlay() {
    if !qemu_available("qcow2_backing_shorter_than_overlay") {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.qcow2");
    create(&base, "1M", &[]);
    qemu_io(&base, &[w(0x21, 0, MIB)]);
    let top = d.path().join("top.qcow2");
    create_overlay_qemu(&top, "base.qcow2", "qcow2", Some("3M"));
    qemu_io(&top, &[w(0x31, MIB + 4096, 4096)]);
    verify(&top);
}

fn build_chain(dir: &Path, depth: usize, size: u64) -> PathBuf {
    let base = dir.join("l0.qcow2");
    create(&base, &size.to_string(), &[]);
    qemu_io(&base, &[w(0x01, 0, size / 2)]);
    let mut prev = base;
    for i in 1..=depth {
        let img = dir.join(format!("l{i}.qcow2"));
        create_overlay_qemu(
            &img,
            prev.file_name().unwrap().to_str().unwrap(),
            "qcow2",
            None,
        );
        let off = (i as u64 * 37 * 4096) % (size - 8192);
        qemu_io(&img, &[w((i % 250) as u8 + 2, off, 6000)]);
        prev = img;
    }
    prev
}

#[test]
fn chains_depth_1_8_100() {
    if !qemu_available("chains_depth_1_8_100") {
        return;
    }
    for depth in [1usize, 8, 100] {
        let d = tmp();
        let top = build_chain(d.path(), depth, 4 * MIB);
        verify(&top);
    }
}

#[test]
fn virtual_size_not_cluster_aligned() {
    if !qemu_available("virtual_size_not_cluster_aligned") {
        return;
    }
    let d = tmp();
    let img = d.path().join("odd.qcow2");
    create(&img, "1073741825", &[]);
    let size = {
        let c = boxlite_backend_qcow2::image::Image::open(&img, false).unwrap();
        c.virtual_size()
    };
    assert_eq!(size % 65536, 512, "qemu rounds 1 GiB + 1 up to a sector");
    qemu_io(
        &img,
        &[
            w(0x3c, size - 4096, 4096),
            w(0x3d, 0, 8192),
            w(0x3e, 512 * MIB, 65536),
        ],
    );
    verify(&img);
    // Overlay of the odd-sized image, written by us at the very end.
    let top = d.path().join("odd-top.qcow2");
    create_overlay_qemu(&top, "odd.qcow2", "qcow2", None);
    {
        use boxlite_backend_qcow2::image::{Chain, OpenOptions};
        let mut c = Chain::open(&top, &OpenOptions::new().writable(true)).unwrap();
        c.write_at(&[0x99; 300], size - 300).unwrap();
        c.flush().unwrap();
    }
    assert_qemu_check(&top);
    verify(&top);
}

#[test]
fn internal_snapshots_present() {
    if !qemu_available("internal_snapshots_present") {
        return;
    }
    let d = tmp();
    let img = d.path().join("snap.qcow2");
    create(&img, "4M", &[]);
    qemu_io(&img, &[w(0x10, 0, 2 * MIB)]);
    run("qemu-img", &["snapshot", "-c", "s1", p(&img)]);
    qemu_io(&img, &[w(0x20, MIB, MIB), "write -q -z 0 64k".into()]);
    run("qemu-img", &["snapshot", "-c", "s2", p(&img)]);
    qemu_io(&img, &[w(0x30, 3 * MIB, 4096)]);
    verify(&img);
    let r = boxlite_backend_qcow2::image::check(&img).unwrap();
    assert!(r.is_clean(), "{r:?}");
    // Writing is refused (shared clusters), reading works.
    use boxlite_backend_qcow2::image::{Chain, OpenOptions};
    let e = Chain::open(&img, &OpenOptions::new().writable(true)).unwrap_err();
    assert!(e.is_unsupported(), "{e}");
}
