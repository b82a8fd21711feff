//! Stream and commit on a 4-layer chain: guest content of every remaining
//! chain is unchanged (qemu-img convert -O raw before/after) and every
//! touched image passes qemu-img check.

mod common;

use boxlite_backend_qcow2::image::{
    check, commit, rebase_unsafe, stream, BackingFormat, Chain, OpenOptions,
};
use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// base <- l1 <- l2 <- l3, overlapping writes and zero clusters, mixed
/// cluster sizes. Returns the four paths.
fn build(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("base.qcow2");
    create(&base, "8M", &[]);
    qemu_io(&base, &[w(0x10, 0, 8 * MIB)]);
    let l1 = dir.join("l1.qcow2");
    create_overlay_qemu(&l1, "base.qcow2", "qcow2", None);
    qemu_io(
        &l1,
        &[
            w(0x21, MIB, MIB),
            "write -q -z 3M 512k".into(),
            w(0x22, 5 * MIB + 100, 3000),
        ],
    );
    let l2 = dir.join("l2.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "l1.qcow2",
            "-F",
            "qcow2",
            p(&l2),
        ],
    );
    qemu_io(
        &l2,
        &[
            w(0x31, MIB + 512 * 1024, 700_000),
            "write -q -z 6M 64k".into(),
            w(0x32, 3 * MIB + 4096, 4096),
        ],
    );
    let l3 = dir.join("l3.qcow2");
    create_overlay_qemu(&l3, "l2.qcow2", "qcow2", None);
    qemu_io(&l3, &[w(0x41, 0, 65536), w(0x42, 6 * MIB + 1000, 10)]);
    vec![base, l1, l2, l3]
}

fn raw_of(top: &Path, tag: &str) -> PathBuf {
    let out = top.with_extension(format!("{tag}.raw"));
    to_raw(top, &out);
    out
}

fn assert_same_raw(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} != {}",
        a.display(),
        b.display()
    );
}

#[test]
fn stream_parent_into_child() {
    if !qemu_available("stream_parent_into_child") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let l = build(d.path());
    let before3 = raw_of(&l[3], "b");
    let before2 = raw_of(&l[2], "b");
    // Fold l1 into l2 (l1's only dependant); l2 then backs onto base.
    stream(&l[2], &OpenOptions::default()).unwrap();
    let info = run("qemu-img", &["info", p(&l[2])]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert_qemu_check(&l[2]);
    assert!(check(&l[2]).unwrap().is_clean());
    assert_same_raw(&before2, &raw_of(&l[2], "a"));
    assert_same_raw(&before3, &raw_of(&l[3], "a"));
    // l1 is no longer referenced: deleting it keeps l3 readable.
    std::fs::remove_file(&l[1]).unwrap();
    assert_read_matches_qemu(&l[3]);
    // Stream again down to a standalone image.
    stream(&l[2], &OpenOptions::default()).unwrap();
    let c = Chain::open(&l[2], &OpenOptions::default()).unwrap();
    assert_eq!(c.layers().len(), 1);
    assert_qemu_check(&l[2]);
    assert_same_raw(&before3, &raw_of(&l[3], "c"));
}

#[test]
fn commit_child_into_parent() {
    if !qemu_available("commit_child_into_parent") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let l = build(d.path());
    let before3 = raw_of(&l[3], "b");
    let before2 = raw_of(&l[2], "b");
    // Fold l2 into l1, then rebase l2's dependant (l3) onto l1.
    let parent = commit(&l[2], &OpenOptions::default()).unwrap();
    assert_eq!(parent, std::fs::canonicalize(&l[1]).unwrap());
    assert_qemu_check(&l[1]);
    assert!(check(&l[1]).unwrap().is_clean());
    // Before the rebase, the l3 chain is unchanged (crash-safety point).
    assert_same_raw(&before3, &raw_of(&l[3], "mid"));
    assert_same_raw(&before2, &raw_of(&l[1], "l1"));
    rebase_unsafe(&l[3], Some(("l1.qcow2", BackingFormat::Qcow2))).unwrap();
    std::fs::remove_file(&l[2]).unwrap();
    assert_qemu_check(&l[3]);
    assert_same_raw(&before3, &raw_of(&l[3], "a"));
    assert_read_matches_qemu(&l[3]);
}

#[test]
fn stream_raw_parent() {
    if !qemu_available("stream_raw_parent") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("base.raw");
    std::fs::write(
        &raw,
        (0..MIB as usize + 777)
            .map(|i| (i % 199) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let top = d.path().join("top.qcow2");
    create_overlay_qemu(&top, "base.raw", "raw", Some("3M"));
    qemu_io(&top, &[w(0x5, 4096, 100)]);
    let before = raw_of(&top, "b");
    stream(&top, &OpenOptions::default()).unwrap();
    assert_eq!(
        Chain::open(&top, &OpenOptions::default())
            .unwrap()
            .layers()
            .len(),
        1
    );
    assert_qemu_check(&top);
    assert_same_raw(&before, &raw_of(&top, "a"));
}

#[test]
fn stream_zero_parent_into_v2_child() {
    if !qemu_available("stream_zero_parent_into_v2_child") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let gp = d.path().join("gp.qcow2");
    create(&gp, "4M", &[]);
    qemu_io(&gp, &[w(0x77, 0, 4 * MIB)]);
    // Parent: zero clusters over the grandparent's data, and smaller than
    // the child (past its end the child reads zeros, not the grandparent).
    let parent = d.path().join("parent.qcow2");
    create_overlay_qemu(&parent, "gp.qcow2", "qcow2", Some("3M"));
    qemu_io(&parent, &["write -q -z 1M 1M".into(), w(0x12, 100, 100)]);
    let child = d.path().join("child.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-b",
            "parent.qcow2",
            "-F",
            "qcow2",
            p(&child),
            "4M",
        ],
    );
    qemu_io(&child, &[w(0x34, 1536 * 1024, 4096)]);
    let before = raw_of(&child, "b");
    stream(&child, &OpenOptions::default()).unwrap();
    let info = run("qemu-img", &["info", p(&child)]);
    assert!(info.contains("backing file: gp.qcow2"), "{info}");
    assert_qemu_check(&child);
    assert_same_raw(&before, &raw_of(&child, "a"));
}
