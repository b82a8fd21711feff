//! ../shared/cases A12: a full filesystem during export and import gives `Error::NoSpace` and
//! leaves no partial file. Uses a 16 MiB ext4 image on a loop device (root only); skips
//! loudly elsewhere, and fails instead of skipping under CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite_api::Error;
use boxlite_archive::{builtin_codecs, export_to_path, import_archive, ExportDisks, ImportLimits};
use common::*;

/// A mounted 16 MiB ext4 filesystem; unmounted and detached on drop.
struct SmallFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    loopdev: Option<String>,
    mounted: bool,
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        if let Some(dev) = &self.loopdev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

fn skip(why: &str) -> Option<SmallFs> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("ENOSPC test cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPING the ENOSPC test: {why}");
    None
}

fn small_fs() -> Option<SmallFs> {
    // SAFETY-free check of the effective uid through `id -u`.
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return skip("not root");
    }
    if !have("mkfs.ext4") || !have("losetup") {
        return skip("mkfs.ext4/losetup missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut fs = SmallFs {
        _dir: dir,
        mnt,
        loopdev: None,
        mounted: false,
    };
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .ok()?;
    if !out.status.success() {
        return skip(&format!(
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    fs.loopdev = Some(dev.clone());
    let st = Command::new("mount").arg(&dev).arg(&fs.mnt).output().ok()?;
    if !st.status.success() {
        return skip(&format!(
            "mount failed: {}",
            String::from_utf8_lossy(&st.stderr).trim()
        ));
    }
    fs.mounted = true;
    Some(fs)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

#[test]
fn case_a12_disk_full_during_export_and_import() {
    let Some(fs) = small_fs() else { return };
    let src = tempfile::tempdir().unwrap();
    // 24 MiB of incompressible data: more than the 16 MiB filesystem holds.
    let guest = random_qcow2(src.path(), "guest.qcow2", 24, 32, 11);
    let container = pattern_qcow2(src.path(), "container.qcow2", 16);
    let disks = || ExportDisks {
        guest_rootfs: Box::new(FileFlatDisk::open(&guest)),
        container: Box::new(FileFlatDisk::open(&container)),
    };
    let c = codec("zstd");

    // Export into the small filesystem.
    let r = export_to_path(
        &fs.mnt,
        "web-01",
        c.as_ref(),
        3,
        &meta(),
        disks(),
        &mut |_| {},
    );
    match r {
        Err(Error::NoSpace { path }) => assert!(path.starts_with(&fs.mnt), "{path:?}"),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        entries(&fs.mnt),
        Vec::<String>::new(),
        "partial export left behind"
    );

    // Import with the staging directory on the small filesystem.
    let archive = export_to_path(
        src.path(),
        "web-01",
        c.as_ref(),
        3,
        &meta(),
        disks(),
        &mut |_| {},
    )
    .unwrap();
    let staging = fs.mnt.join("staging");
    std::fs::create_dir(&staging).unwrap();
    let r = import_archive(
        &archive.path,
        &builtin_codecs(),
        &staging,
        &ImportLimits::default(),
        test_validator,
    );
    match r {
        Err(Error::NoSpace { path }) => assert!(path.starts_with(&staging), "{path:?}"),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        entries(&staging),
        Vec::<String>::new(),
        "staging left behind"
    );
    assert_eq!(entries(&fs.mnt), vec!["staging".to_owned()]);
    drop(fs);
}
