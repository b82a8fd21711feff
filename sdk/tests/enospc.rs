//! Disk full (case A12) on real loop-mounted ext4 filesystems: export to a 64 MiB filesystem,
//! and a home on a small filesystem filled up. Needs root and loop devices: skipped loudly
//! otherwise, and a failure under CI=true. A drop guard always unmounts and detaches.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite::api::{BoxStatus, CloneOptions, ExportOptions, SnapshotOptions};
use boxlite::{BoxOptions, BoxliteRuntime};
use boxlite_backend_qcow2::image::{Chain, OpenOptions};
use common::*;

/// A loop-mounted ext4 filesystem, unmounted and detached on drop.
struct LoopFs {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
}

impl LoopFs {
    fn new(dir: &Path, name: &str, mib: u64) -> Option<LoopFs> {
        let image = dir.join(format!("{name}.img"));
        let mnt = dir.join(name);
        std::fs::create_dir_all(&mnt).ok()?;
        let f = std::fs::File::create(&image).ok()?;
        f.set_len(mib << 20).ok()?;
        drop(f);
        let ok = |c: &mut Command| c.output().ok().filter(|o| o.status.success());
        ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image))?;
        let out = ok(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let fs = LoopFs { image, dev, mnt };
        ok(Command::new("mount").arg(&fs.dev).arg(&fs.mnt))?;
        Some(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // A lazy unmount if something (a panicking test's runtime threads) still holds it.
        let unmounted = Command::new("umount")
            .arg(&self.mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn can_loop_mount(dir: &Path) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ok = root && LoopFs::new(dir, "probe", 16).is_some();
    if !ok {
        let why = if root {
            "loop devices or mkfs.ext4/losetup/mount are unavailable"
        } else {
            "not root"
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("enospc tests need root and loop devices under CI=true: {why}");
        }
        eprintln!("SKIPPED: enospc tests: {why}");
    }
    ok
}

fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect()
}

async fn assert_clean(rt: &BoxliteRuntime, home: &Path, step: &str) {
    for info in rt.list().await.unwrap() {
        assert_eq!(info.status, BoxStatus::Stopped, "{step}: {:?}", info.name);
    }
    let r = rt.doctor(false).await.unwrap();
    assert!(r.problems.is_empty(), "{step}: doctor: {r:#?}");
    assert_store_consistent(rt, home, step).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_a_full_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    if !have_qemu() || !can_loop_mount(tmp.path()) {
        return;
    }
    let fs = LoopFs::new(tmp.path(), "small", 64).unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    // A 128 MiB disk with 96 MiB of incompressible data: its archive cannot fit in 64 MiB.
    let disk = tmp.path().join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg((128u64 << 20).to_string()));
    let imgs = make_images(tmp.path());
    let b = rt
        .create(
            BoxOptions {
                disk,
                guest_rootfs: imgs.guest_rootfs,
            },
            "big",
        )
        .await
        .unwrap();
    {
        let mut chain = Chain::open(
            &live(&b).await.container,
            &OpenOptions::new().writable(true),
        )
        .unwrap();
        for i in 0..12u64 {
            chain
                .write_at(&incompressible(8 << 20, i + 1), i * (8 << 20))
                .unwrap();
        }
        chain.close().unwrap();
    }
    for compress in [false, true] {
        let opts = ExportOptions {
            compress,
            ..Default::default()
        };
        let e = b
            .export(&fs.mnt.join("big.boxsnap"), &opts)
            .await
            .unwrap_err();
        assert!(
            e.is_no_space(),
            "compress={compress}: want NoSpace, got {e}"
        );
        assert!(
            entries(&fs.mnt).is_empty(),
            "compress={compress}: partial output left: {:?}",
            entries(&fs.mnt)
        );
        assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);
        assert_clean(&rt, &home, "export to a full filesystem").await;
    }
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_on_a_full_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    if !have_qemu() || !can_loop_mount(tmp.path()) {
        return;
    }
    // An archive made elsewhere, to import into the full home.
    let other = tmp.path().join("other");
    let archive = tmp.path().join("x.boxsnap");
    {
        let rt = open_runtime(&other).await;
        let b = rt.create(make_images(tmp.path()), "x").await.unwrap();
        write_disk(&live(&b).await.container, 0, 4 << 20, 0x77);
        let opts = ExportOptions {
            compress: false,
            ..Default::default()
        };
        b.export(&archive, &opts).await.unwrap();
    }
    let fs = LoopFs::new(tmp.path(), "homefs", 48).unwrap();
    let home = fs.mnt.join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "a").await.unwrap();
    write_disk(&live(&b).await.container, 0, 1 << 20, 0x55);
    b.snapshot()
        .create("s1", &SnapshotOptions::default())
        .await
        .unwrap();
    let before = box_content(&b).await;
    // Fill the filesystem: big blocks, then 4 KiB blocks (after a sync has settled the
    // delayed allocations), until not one block is left.
    let mut fillers = Vec::new();
    for (i, bs) in ["1M", "4k", "4k", "1k"].iter().enumerate() {
        let filler = fs.mnt.join(format!("filler{i}"));
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "status=none"])
            .arg(format!("bs={bs}"))
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("sync").arg("-f").arg(&filler).status();
        fillers.push(filler);
    }
    let mut failures = Vec::new();
    let r = b.snapshot().create("s2", &SnapshotOptions::default()).await;
    failures.push(("snapshot", r.map(|_| ())));
    let r = b.clone("c", &CloneOptions::default()).await;
    failures.push(("clone", r.map(|_| ())));
    let opts = CloneOptions {
        cow: false,
        ..Default::default()
    };
    let r = b.clone("c-full", &opts).await;
    failures.push(("clone cow=false", r.map(|_| ())));
    let r = rt.import(&archive, "imp").await;
    failures.push(("import", r.map(|_| ())));
    for (what, r) in &failures {
        match r {
            Err(e) => assert!(e.is_no_space(), "{what}: want NoSpace, got {e}"),
            Ok(()) => panic!("{what} succeeded on a full filesystem"),
        }
        eprintln!("{what} on a full home: NoSpace as expected");
    }
    // Nothing was left behind, and with space back everything works.
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    rt.collect_garbage().await.unwrap();
    assert_clean(&rt, &home, "full home").await;
    assert_eq!(box_content(&b).await, before);
    assert_eq!(rt.list().await.unwrap().len(), 1);
    assert_eq!(b.snapshot().list().await.unwrap().len(), 1);
    b.snapshot()
        .create("s2", &SnapshotOptions::default())
        .await
        .unwrap();
    rt.import(&archive, "imp").await.unwrap();
    assert_clean(&rt, &home, "after freeing space").await;
    drop(rt);
    drop(fs);
}
