//! The `copy` backend on the local filesystem: the backend scenario, sparseness of copies,
//! and cleanup of partial files on errors.

mod common;

use std::fs;
use std::process::Command;
use std::time::Instant;

use boxlite::api::{BoxId, CloneSource, DiskSet, DiskSource, Error, SnapshotBackend};
use boxlite_backend_copy::{CopyBackend, SparseCopy};
use common::*;

fn backend() -> CopyBackend {
    CopyBackend::new(SparseCopy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_on_local_filesystem() {
    if !have_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    backend_scenario(
        &backend(),
        &tmp.path().join("home"),
        &tmp.path().join("work"),
        Sharing::Unchecked,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_keep_holes() {
    if !have_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let ctx = context(&home, "copy");
    let b = backend();
    // A 1 GiB-virtual disk with 8 MiB written.
    let big = tmp.path().join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&big)
        .arg("1G"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x42 100M 8M"])
        .arg(&big));
    let src = DiskSource {
        guest_rootfs: big.clone(),
        container: big.clone(),
    };
    let id = BoxId::generate();
    let live = b.create_disks(&ctx, &id, &src).await.unwrap();
    let live_a = live.under(&home);
    // The VMM discards 4 MiB: qemu punches a hole in the middle of the live file.
    run(Command::new("qemu-io")
        .args(["-d", "unmap", "-c", "discard 100M 4M"])
        .arg(&live_a.container));
    let src_alloc = allocated(&live_a.container);
    let src_len = fs::metadata(&live_a.container).unwrap().len();
    assert!(src_alloc < 6 << 20, "source allocated {src_alloc}");
    assert!(src_len > 8 << 20, "the hole is inside the file ({src_len})");
    let want = read_disk(&live_a.container);

    let t = Instant::now();
    let cap = b.snapshot(&ctx, &id, &live).await.unwrap();
    let snap_time = t.elapsed();
    let t = Instant::now();
    let restored = b.restore(&ctx, &id, &cap.snapshot).await.unwrap();
    let restore_time = t.elapsed();
    let t = Instant::now();
    let clone = b
        .clone_disks(
            &ctx,
            &CloneSource::Live {
                box_id: id.clone(),
                disks: live.clone(),
            },
            &[BoxId::generate()],
            false,
        )
        .await
        .unwrap();
    let clone_time = t.elapsed();
    for (what, set) in [
        ("snapshot", &cap.snapshot),
        ("restore", &restored),
        ("clone", &clone.clones[0]),
    ] {
        let p = set.under(&home).container;
        let alloc = allocated(&p);
        eprintln!(
            "{what}: apparent {} bytes, allocated {alloc} bytes (source allocated {src_alloc})",
            fs::metadata(&p).unwrap().len()
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), src_len, "{what}");
        assert!(
            alloc <= src_alloc + (64 << 10),
            "{what}: {alloc} allocated vs source {src_alloc}"
        );
        assert_eq!(read_disk(&p), want, "{what}");
        assert_standalone_clean(&p);
    }
    assert!(cap.container_disk_bytes < 6 << 20);
    eprintln!(
        "1 GiB virtual / 8 MiB written: snapshot {snap_time:?}, restore {restore_time:?}, clone {clone_time:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_leaves_nothing_behind() {
    if !have_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let ctx = context(&home, "copy");
    let b = backend();
    let src = make_images(&tmp.path().join("work"));
    let id = BoxId::generate();
    let live = b.create_disks(&ctx, &id, &src).await.unwrap();
    let before = files_under(&ctx.store);

    // The container disk is missing: the guest-rootfs copy already made is removed too.
    let broken = DiskSet {
        guest_rootfs: live.guest_rootfs.clone(),
        container: live.container.with_file_name("missing.qcow2"),
    };
    let err = b.snapshot(&ctx, &id, &broken).await.unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("missing.qcow2")),
        "{err}"
    );
    let err = b.restore(&ctx, &id, &broken).await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let err = b
        .clone_disks(
            &ctx,
            &CloneSource::Snapshot {
                box_id: id.clone(),
                disks: broken.clone(),
            },
            &[BoxId::generate(), BoxId::generate()],
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // A source that is a directory fails after the staging file exists.
    let dir_src = DiskSet {
        guest_rootfs: live.guest_rootfs.clone(),
        container: live.container.parent().unwrap().to_path_buf(),
    };
    let err = b.snapshot(&ctx, &id, &dir_src).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // An image that is not qcow2 nor a file, and an unreadable one.
    let bad = DiskSource {
        guest_rootfs: src.guest_rootfs.clone(),
        container: tmp.path().join("nope.qcow2"),
    };
    let err = b
        .create_disks(&ctx, &BoxId::generate(), &bad)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Adopting a staged disk that has a backing file is refused; the staged files stay.
    let staged = ctx.staging.join("adopt");
    fs::create_dir_all(&staged).unwrap();
    let overlay = staged.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&src.container)
        .arg(&overlay));
    let flat_rootfs = staged.join("guest-rootfs.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&flat_rootfs)
        .arg("1M"));
    let err = b
        .adopt_disks(
            &ctx,
            &BoxId::generate(),
            &DiskSource {
                guest_rootfs: flat_rootfs.clone(),
                container: overlay.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        flat_rootfs.exists() && overlay.exists(),
        "staged files are moved back"
    );
    // No partial file, no new directory with files.
    assert_eq!(files_under(&ctx.store), before);
    let partials: Vec<_> = walk(&ctx.store)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
    assert_eq!(
        fs::read_dir(ctx.store.join(format!("boxes/{id}/snapshots")))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "failed snapshots leave no directory"
    );
    assert_eq!(
        fs::read_dir(ctx.store.join("boxes")).unwrap().count(),
        1,
        "failed clones and creates leave no box directory"
    );
}

/// Every path (files and directories) under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_no_space_and_removes_the_partial() {
    if !have_tools(&["qemu-img", "qemu-io"]) || !can_mount(&[]) {
        return;
    }
    let _lock = MountLock::acquire();
    let mnt = match Mount::tmpfs("6M") {
        Ok(m) => m,
        Err(e) => {
            skip(&format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = mnt.dir.join("home");
    let ctx = context(&home, "copy");
    let b = backend();
    // 4 MiB of data fits once but not twice.
    let img = tmp.path().join("img.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x42 0 4M"])
        .arg(&img));
    let small = tmp.path().join("small.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&small)
        .arg("1M"));
    let src = DiskSource {
        guest_rootfs: small,
        container: img,
    };
    let id = BoxId::generate();
    let live = b.create_disks(&ctx, &id, &src).await.unwrap();
    let before = files_under(&ctx.store);
    let err = b.snapshot(&ctx, &id, &live).await.unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(err.to_string().contains(".disk.qcow2.partial"), "{err}");
    assert_eq!(files_under(&ctx.store), before);
    let err = b.restore(&ctx, &id, &live).await.unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(files_under(&ctx.store), before);
    // A full import (flatten) is NoSpace naming the staging file too.
    let err = b
        .create_disks(&ctx, &BoxId::generate(), &src)
        .await
        .unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(files_under(&ctx.store), before);
    assert_eq!(
        read_disk(&live.under(&home).container)[..4096],
        [0x42; 4096]
    );
}
