//! Overlay creation, writes through our code, rebase and check, verified
//! with qemu-img.

mod common;

use boxlite_backend_qcow2::image::{
    check, create_image, create_overlay, create_overlay_staged, flatten_to_file, rebase_unsafe,
    BackingFormat, Chain, Image, ImageError, OpenOptions,
};
use common::*;
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

/// Builds an image flavour at a path.
type Maker = Box<dyn Fn(&std::path::Path)>;

#[test]
fn overlays_pass_qemu_check_and_resolve() {
    if !qemu_available("overlays_pass_qemu_check_and_resolve") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let base = dp.join("base.qcow2");
    create(&base, "8M", &[]);
    qemu_io(&base, &[w(0x61, 0, 3 * MIB)]);
    let top = dp.join("top.qcow2");
    create_overlay(&top, Some(("base.qcow2", BackingFormat::Qcow2)), 8 * MIB).unwrap();
    assert_qemu_check(&top);
    let info = run("qemu-img", &["info", "--backing-chain", p(&top)]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert!(info.contains("backing file format: qcow2"), "{info}");
    assert!(
        info.contains("compat: 1.1") && info.contains("cluster_size: 65536"),
        "{info}"
    );
    assert_qemu_compare(&top, &base);
    assert!(std::fs::metadata(&top).unwrap().len() <= 4 * 65536);
    // O_EXCL.
    let e = create_overlay(&top, None, MIB).unwrap_err();
    assert!(e.is_io() && e.io_error().unwrap().kind() == std::io::ErrorKind::AlreadyExists);
    // Raw backing.
    let raw = dp.join("base.raw");
    std::fs::write(&raw, vec![0x33u8; 300_000]).unwrap();
    let rtop = dp.join("rtop.qcow2");
    create_overlay(&rtop, Some(("base.raw", BackingFormat::Raw)), 2 * MIB).unwrap();
    assert_qemu_check(&rtop);
    assert_read_matches_qemu(&rtop);
    // Staged creation leaves no temporary file.
    let st = dp.join("staged.qcow2");
    create_overlay_staged(&st, Some(("top.qcow2", BackingFormat::Qcow2)), 8 * MIB).unwrap();
    assert_qemu_check(&st);
    let leftovers: Vec<_> = std::fs::read_dir(dp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // Standalone, large virtual size, odd size rounded to 512.
    let big = dp.join("big.qcow2");
    create_image(&big, (1 << 40) + 1).unwrap();
    assert_qemu_check(&big);
    assert_eq!(
        Image::open(&big, false).unwrap().virtual_size(),
        (1 << 40) + 512
    );
    // Bad names.
    assert!(matches!(
        create_overlay(&dp.join("n.qcow2"), Some(("", BackingFormat::Raw)), MIB).unwrap_err(),
        ImageError::InvalidArgument { .. }
    ));
    let long = "x".repeat(1024);
    assert!(create_overlay(&dp.join("n2.qcow2"), Some((&long, BackingFormat::Raw)), MIB).is_err());
}

#[test]
fn writes_match_qemu_io_and_pass_check() {
    if !qemu_available("writes_match_qemu_io_and_pass_check") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    // Several image flavours: our overlay, qemu v2, 512-byte clusters with
    // 64-bit refcounts (forces refcount table growth), 1-bit refcounts.
    let base = dp.join("base.qcow2");
    create(&base, "6M", &[]);
    qemu_io(&base, &[w(0x71, 0, 6 * MIB)]);
    let flavours: Vec<(&str, Maker)> = vec![
        (
            "ours",
            Box::new(|pth| {
                create_overlay(pth, Some(("base.qcow2", BackingFormat::Qcow2)), 6 * MIB).unwrap()
            }),
        ),
        (
            "v2",
            Box::new(|pth| create_overlay_qemu_opts(pth, "base.qcow2", &["-o", "compat=0.10"])),
        ),
        (
            "rc64",
            Box::new(|pth| {
                create_overlay_qemu_opts(
                    pth,
                    "base.qcow2",
                    &["-o", "cluster_size=512,refcount_bits=64"],
                )
            }),
        ),
        (
            "rc1",
            Box::new(|pth| {
                create_overlay_qemu_opts(
                    pth,
                    "base.qcow2",
                    &["-o", "cluster_size=4096,refcount_bits=1"],
                )
            }),
        ),
        ("solo", Box::new(|pth| create(pth, "6M", &[]))),
    ];
    let ops: Vec<(u64, u64, Option<u8>)> = vec![
        (0, 100, Some(0x01)),
        (65536 - 10, 20, Some(0x02)),
        (MIB, 3 * MIB, Some(0x03)),
        (2 * MIB + 7, 65536, None),
        (4 * MIB, 65536 * 3, None),
        (5 * MIB + 333, 200_000, Some(0x04)),
        (MIB + 512, 1024, Some(0x05)),
        (6 * MIB - 1, 1, Some(0x06)),
    ];
    for (name, make) in flavours {
        let ours = dp.join(format!("{name}-ours.qcow2"));
        let theirs = dp.join(format!("{name}-qemu.qcow2"));
        make(&ours);
        std::fs::copy(&ours, &theirs).unwrap();
        {
            let mut c = Chain::open(&ours, &OpenOptions::new().writable(true)).unwrap();
            for (off, len, pat) in &ops {
                match pat {
                    Some(b) => c.write_at(&vec![*b; *len as usize], *off).unwrap(),
                    None => c.write_zeroes(*off, *len).unwrap(),
                }
            }
            c.flush().unwrap();
        }
        let cmds: Vec<String> = ops
            .iter()
            .map(|(off, len, pat)| match pat {
                Some(b) => w(*b, *off, *len),
                None => format!("write -q -z {off} {len}"),
            })
            .collect();
        qemu_io(&theirs, &cmds);
        assert_qemu_check(&ours);
        assert_qemu_compare(&ours, &theirs);
        let r = check(&ours).unwrap();
        assert!(r.is_clean(), "{name}: {r:?}");
        // Reading back through our code equals qemu's view.
        assert_read_matches_qemu(&ours);
    }
}

fn create_overlay_qemu_opts(path: &std::path::Path, backing: &str, opts: &[&str]) {
    let mut a = vec!["create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2"];
    a.extend_from_slice(opts);
    a.push(p(path));
    run("qemu-img", &a);
}

#[test]
fn read_only_and_range_errors() {
    if !qemu_available("read_only_and_range_errors") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.qcow2");
    create_image(&img, MIB).unwrap();
    let mut c = Chain::open(&img, &OpenOptions::default()).unwrap();
    assert!(matches!(
        c.write_at(&[1], 0).unwrap_err(),
        ImageError::ReadOnly { .. }
    ));
    let mut b = [0u8; 2];
    assert!(matches!(
        c.read_at(&mut b, MIB - 1).unwrap_err(),
        ImageError::InvalidArgument { .. }
    ));
    let mut c = Chain::open(&img, &OpenOptions::new().writable(true)).unwrap();
    assert!(c.write_at(&[1, 2], MIB - 1).is_err());
    assert!(c.write_at(&[1, 2], u64::MAX).is_err());
}

#[test]
fn rebase_rewrites_header_in_place() {
    if !qemu_available("rebase_rewrites_header_in_place") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let a = dp.join("a.qcow2");
    create(&a, "2M", &[]);
    qemu_io(&a, &[w(0x0a, 0, 65536)]);
    std::fs::copy(&a, dp.join("a-copy.qcow2")).unwrap();
    let top = dp.join("top.qcow2");
    create_overlay_qemu(&top, "a.qcow2", "qcow2", None);
    qemu_io(&top, &[w(0x0b, 65536, 4096)]);
    let raw_before = dp.join("before.raw");
    to_raw(&top, &raw_before);
    // Same content, another name (and a very long one).
    let long_dir = "d".repeat(200);
    std::fs::create_dir(dp.join(&long_dir)).unwrap();
    std::fs::copy(&a, dp.join(&long_dir).join("a.qcow2")).unwrap();
    for name in [
        "a-copy.qcow2".to_string(),
        format!("{long_dir}/../{long_dir}/../{long_dir}/a.qcow2"),
    ] {
        rebase_unsafe(&top, Some((&name, BackingFormat::Qcow2))).unwrap();
        assert_qemu_check(&top);
        let info = run("qemu-img", &["info", p(&top)]);
        assert!(info.contains(&format!("backing file: {name}")), "{info}");
        let c = Chain::open(&top, &OpenOptions::default()).unwrap();
        assert_chain_equals_file(&c, &raw_before);
    }
    // Remove the backing entirely.
    rebase_unsafe(&top, None).unwrap();
    assert_qemu_check(&top);
    let info = run("qemu-img", &["info", "--output=json", p(&top)]);
    assert!(!info.contains("backing-filename"), "{info}");
    let c = Chain::open(&top, &OpenOptions::default()).unwrap();
    assert_eq!(c.layers().len(), 1);
    // Too long a name.
    assert!(rebase_unsafe(&top, Some((&"y".repeat(2000), BackingFormat::Raw))).is_err());
    // Refused on a corrupt image.
    let f = std::fs::OpenOptions::new().write(true).open(&top).unwrap();
    f.write_all_at(&2u64.to_be_bytes(), 72).unwrap();
    assert!(matches!(
        rebase_unsafe(&top, None).unwrap_err(),
        ImageError::CorruptBit { .. }
    ));
}

#[test]
fn check_reports_leaks_and_corruptions() {
    if !qemu_available("check_reports_leaks_and_corruptions") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("c.qcow2");
    create(&img, "4M", &[]);
    qemu_io(&img, &[w(0x11, 0, 2 * MIB)]);
    let r = check(&img).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.allocated_clusters, 32);
    assert_eq!(r.total_clusters, 64);
    let bytes = std::fs::read(&img).unwrap();
    let rt_off = u64::from_be_bytes(bytes[48..56].try_into().unwrap());
    let rb_off = u64::from_be_bytes(
        bytes[rt_off as usize..rt_off as usize + 8]
            .try_into()
            .unwrap(),
    );
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    // Leak: refcount 1 for a cluster past the end of the used area.
    f.set_len(bytes.len() as u64 + 4 * 65536).unwrap();
    let leak_ci = bytes.len() as u64 / 65536 + 2;
    f.write_all_at(&1u16.to_be_bytes(), rb_off + leak_ci * 2)
        .unwrap();
    let r = check(&img).unwrap();
    assert_eq!((r.leaks, r.corruptions), (1, 0), "{r:?}");
    assert_eq!(
        run_status("qemu-img", &["check", p(&img)]).0,
        3,
        "qemu sees a leak too"
    );
    // Corruption: refcount 0 for the first data cluster (cluster 4 here).
    let l1_off = u64::from_be_bytes(bytes[40..48].try_into().unwrap());
    let l2 = u64::from_be_bytes(
        bytes[l1_off as usize..l1_off as usize + 8]
            .try_into()
            .unwrap(),
    ) & 0x00ff_ffff_ffff_fe00;
    let d0 = u64::from_be_bytes(bytes[l2 as usize..l2 as usize + 8].try_into().unwrap())
        & 0x00ff_ffff_ffff_fe00;
    f.write_all_at(&0u16.to_be_bytes(), rb_off + (d0 / 65536) * 2)
        .unwrap();
    let r = check(&img).unwrap();
    assert!(r.corruptions >= 1, "{r:?}");
    assert_eq!(
        run_status("qemu-img", &["check", p(&img)]).0,
        2,
        "qemu sees corruption too"
    );
}

#[test]
fn flatten_to_file_is_standalone() {
    if !qemu_available("flatten_to_file_is_standalone") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let base = dp.join("base.qcow2");
    create(&base, "8M", &[]);
    qemu_io(&base, &[w(0x01, 0, 4 * MIB), "write -q -z 1M 1M".into()]);
    let top = dp.join("top.qcow2");
    create_overlay(&top, Some(("base.qcow2", BackingFormat::Qcow2)), 8 * MIB).unwrap();
    {
        let mut c = Chain::open(&top, &OpenOptions::new().writable(true)).unwrap();
        c.write_at(&vec![0u8; 65536 * 4], 2 * MIB).unwrap(); // zero clusters over data
        c.write_at(&vec![9u8; 1000], 7 * MIB).unwrap();
        c.flush().unwrap();
    }
    let c = Chain::open(&top, &OpenOptions::default()).unwrap();
    let out = dp.join("flat.qcow2");
    let n = flatten_to_file(&c, &out).unwrap();
    assert_eq!(n, std::fs::metadata(&out).unwrap().len());
    assert_qemu_check(&out);
    assert_qemu_compare(&out, &top);
    // Only the non-zero data is stored: 4 MiB - 1 MiB zeroed - 256 KiB zeroed + 1 cluster.
    let r = check(&out).unwrap();
    assert_eq!(
        r.allocated_clusters,
        (3 * MIB - 4 * 65536) / 65536 + 1,
        "{r:?}"
    );
}

/// A crash before `flush` (simulated by forgetting the chain, so no
/// metadata is written) leaves a consistent image with the old content.
#[test]
fn crash_before_flush_keeps_old_content() {
    if !qemu_available("crash_before_flush_keeps_old_content") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    create(&base, "4M", &[]);
    qemu_io(&base, &[w(0x50, 0, 4 * MIB)]);
    let top = d.path().join("top.qcow2");
    create_overlay(&top, Some(("base.qcow2", BackingFormat::Qcow2)), 4 * MIB).unwrap();
    let before = d.path().join("before.raw");
    to_raw(&top, &before);
    let mut c = Chain::open(&top, &OpenOptions::new().writable(true)).unwrap();
    c.write_at(&vec![0x51; 300_000], 12_345).unwrap();
    c.write_zeroes(MIB, MIB).unwrap();
    std::mem::forget(c);
    assert_qemu_check(&top);
    let c = Chain::open(&top, &OpenOptions::default()).unwrap();
    assert_chain_equals_file(&c, &before);
}
