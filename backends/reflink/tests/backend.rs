//! The `reflink` backend on real filesystems made on loop devices (needs root; skips loudly
//! otherwise, fails under CI=true): the backend scenario on btrfs and on xfs with extents
//! checked to be shared, and the refusals of case A11 (ext4, xfs without reflink, tmpfs,
//! EXDEV across mounts).

#[path = "../../copy/tests/common/mod.rs"]
mod common;

use std::fs;
use std::process::Command;
use std::time::Instant;

use boxlite::api::{BoxId, DiskSource, Error, SnapshotBackend};
use boxlite_backend_reflink::{Ficlone, ReflinkBackend};
use common::*;

fn backend() -> ReflinkBackend {
    ReflinkBackend::new(Ficlone)
}

fn mount_or_skip(kind: Fs, size_mib: u64) -> Option<Mount> {
    match Mount::loop_fs(kind, size_mib) {
        Ok(m) => Some(m),
        Err(e) => {
            skip(&format!(
                "cannot make a {kind:?} filesystem on a loop device: {e}"
            ));
            None
        }
    }
}

async fn scenario_on(kind: Fs, size_mib: u64, mkfs: &str) {
    if !have_tools(&["qemu-img", "qemu-io", "filefrag"]) || !can_mount(&[mkfs]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(mnt) = mount_or_skip(kind, size_mib) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    backend_scenario(
        &backend(),
        &mnt.dir.join("home"),
        work.path(),
        Sharing::Reflink,
    )
    .await;
    measure(&mnt, work.path(), kind).await;
}

/// Snapshot a 1 GiB-virtual disk with 64 MiB written: time it and check the snapshot's data
/// extents are shared (no data copied).
async fn measure(mnt: &Mount, work: &std::path::Path, kind: Fs) {
    let home = mnt.dir.join("home-measure");
    let ctx = context(&home, "reflink");
    let b = backend();
    let img = work.join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("1G"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x42 0 64M"])
        .arg(&img));
    let id = BoxId::generate();
    let live = b
        .create_disks(
            &ctx,
            &id,
            &DiskSource {
                guest_rootfs: img.clone(),
                container: img,
            },
        )
        .await
        .unwrap();
    let t = Instant::now();
    let cap = b.snapshot(&ctx, &id, &live).await.unwrap();
    let took = t.elapsed();
    let snap = cap.snapshot.under(&home);
    assert!(has_shared_extents(&snap.container));
    eprintln!(
        "{kind:?}: reflink snapshot of 2 disks x 64 MiB allocated (1 GiB virtual): {took:?}; \
         snapshot container allocated {} bytes (shared)",
        allocated(&snap.container)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_on_btrfs() {
    scenario_on(Fs::Btrfs, 256, "mkfs.btrfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_on_xfs_with_reflink() {
    scenario_on(Fs::XfsReflink, 320, "mkfs.xfs").await;
}

/// Probe refuses the filesystem at `mnt` with an `Unsupported` error naming `fs_name`, and
/// leaves no file behind.
async fn assert_refused(dir: &std::path::Path, fs_name: &str) {
    let home = dir.join("home");
    let ctx = context(&home, "reflink");
    let err = backend().probe(&ctx).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains(&format!("{fs_name} does not support reflink (FICLONE: ")),
        "{msg}"
    );
    assert!(msg.contains("btrfs") && msg.contains("reflink=1"), "{msg}");
    eprintln!("refusal: {msg}");
    assert_eq!(
        fs::read_dir(&ctx.store).unwrap().count(),
        0,
        "probe leaves nothing"
    );
}

async fn refusal_on(kind: Fs, size_mib: u64, mkfs: &str, fs_name: &str) {
    if !can_mount(&[mkfs]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(mnt) = mount_or_skip(kind, size_mib) else {
        return;
    };
    assert_refused(&mnt.dir, fs_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_refuses_ext4() {
    refusal_on(Fs::Ext4, 64, "mkfs.ext4", "ext4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_refuses_xfs_without_reflink() {
    refusal_on(Fs::XfsNoReflink, 320, "mkfs.xfs", "xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_refuses_tmpfs() {
    if !can_mount(&[]) {
        return;
    }
    let _lock = MountLock::acquire();
    let mnt = match Mount::tmpfs("16M") {
        Ok(m) => m,
        Err(e) => {
            skip(&format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    assert_refused(&mnt.dir, "tmpfs").await;
}

/// Put `boxes/<id>/snapshots` of a new box on `other` (a directory of another mount) with a
/// bind mount, then snapshot. Returns the snapshot result and what the test needs to check.
async fn snapshot_onto_other_mount(
    home: &std::path::Path,
    other: &std::path::Path,
    work: &std::path::Path,
    check: impl FnOnce(boxlite::api::Result<boxlite::api::Capture>, &std::path::Path),
) -> bool {
    let ctx = context(home, "reflink");
    let b = backend();
    b.probe(&ctx).await.unwrap();
    let src = make_images(work);
    let id = BoxId::generate();
    let live = b.create_disks(&ctx, &id, &src).await.unwrap();
    let want = content(&live.under(home));
    let snaps = ctx.store.join(format!("boxes/{id}/snapshots"));
    fs::create_dir_all(&snaps).unwrap();
    let bind = match Mount::bind(other, &snaps) {
        Ok(m) => m,
        Err(e) => {
            skip(&format!("cannot bind-mount: {e}"));
            return false;
        }
    };
    let result = b.snapshot(&ctx, &id, &live).await;
    check(result, home);
    drop(bind);
    assert_eq!(content(&live.under(home)), want, "live disks unchanged");
    true
}

/// A11, EXDEV: the snapshot directory is on another filesystem (a second btrfs bind-mounted
/// into the store), so FICLONE fails with EXDEV in the middle of the snapshot: the error is
/// typed, the partial file and the new directory are removed, the live disks are unchanged.
/// Then the same snapshot works once the store is one filesystem again (no byte copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exdev_across_filesystems_is_typed_and_leaves_no_partial() {
    if !have_tools(&["qemu-img", "qemu-io", "filefrag"]) || !can_mount(&["mkfs.btrfs"]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(mnt) = mount_or_skip(Fs::Btrfs, 256) else {
        return;
    };
    let Some(second) = mount_or_skip(Fs::Btrfs, 256) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let home = mnt.dir.join("home");
    let other = second.dir.join("other");
    fs::create_dir(&other).unwrap();
    let ran = snapshot_onto_other_mount(&home, &other, work.path(), |result, _| {
        let err = result.expect_err("FICLONE across filesystems must fail");
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::Unsupported { path: Some(p), .. }
                if p.to_string_lossy().ends_with(".guest-rootfs.qcow2.partial")),
            "{msg}"
        );
        assert!(msg.contains("FICLONE: EXDEV"), "{msg}");
        eprintln!("EXDEV: {msg}");
        // Nothing left on the other filesystem: no partial, no snapshot directory.
        assert_eq!(fs::read_dir(&other).unwrap().count(), 0);
    })
    .await;
    if !ran {
        return;
    }
    // Never a silent byte copy: the same snapshot works once the store is one filesystem.
    let ctx = context(&home, "reflink");
    let b = backend();
    let boxes: Vec<_> = fs::read_dir(ctx.store.join("boxes")).unwrap().collect();
    assert_eq!(boxes.len(), 1);
    let id = BoxId::parse(&boxes[0].as_ref().unwrap().file_name().to_string_lossy()).unwrap();
    let live = boxlite::api::DiskSet {
        guest_rootfs: std::path::PathBuf::from(format!(
            "storage/reflink/boxes/{id}/live/guest-rootfs.qcow2"
        )),
        container: std::path::PathBuf::from(format!("storage/reflink/boxes/{id}/live/disk.qcow2")),
    };
    let cap = b.snapshot(&ctx, &id, &live).await.unwrap();
    assert!(has_shared_extents(&cap.snapshot.under(&home).container));
}

/// A11, two mounts of one btrfs filesystem (a bind mount inside the store): since Linux 5.18
/// FICLONE works across mounts of one filesystem and the snapshot shares extents; older
/// kernels return EXDEV, which must then be typed with no partial file left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_of_one_btrfs() {
    if !have_tools(&["qemu-img", "qemu-io", "filefrag"]) || !can_mount(&["mkfs.btrfs"]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(mnt) = mount_or_skip(Fs::Btrfs, 256) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let other = mnt.dir.join("other");
    fs::create_dir(&other).unwrap();
    let other2 = other.clone();
    snapshot_onto_other_mount(
        &mnt.dir.join("home"),
        &other,
        work.path(),
        move |result, home| match result {
            Ok(cap) => {
                let snap = cap.snapshot.under(home);
                assert!(has_shared_extents(&snap.container));
                eprintln!("two mounts of one btrfs: FICLONE works across them (shared extents)");
            }
            Err(err) => {
                let msg = err.to_string();
                assert!(matches!(err, Error::Unsupported { .. }), "{msg}");
                assert!(msg.contains("FICLONE: EXDEV"), "{msg}");
                assert_eq!(fs::read_dir(&other2).unwrap().count(), 0);
                eprintln!("two mounts of one btrfs: {msg}");
            }
        },
    )
    .await;
}
