//! Shared helpers for the runtime's integration tests: real qcow2/raw images made with
//! `qemu-img`, guest writes through the in-process qcow2 layer (standing in for a VMM), and
//! store-wide invariant checks with `qemu-img` as the oracle.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources, LiteBox};
use boxlite_backend_qcow2::image::{Chain, OpenOptions};

/// Virtual size of the test disks: 8 MiB.
pub const DISK: u64 = 8 << 20;

/// True when qemu-img is usable; otherwise prints a loud skip (or panics under CI=true).
pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("qemu-img is required under CI=true (apt-get install qemu-utils)");
        }
        eprintln!("SKIPPED: qemu-img not found (apt-get install qemu-utils)");
    }
    ok
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Make a qcow2 container image and a raw guest-rootfs image with known patterns.
pub fn make_images(dir: &Path) -> BoxOptions {
    let disk = dir.join("container.qcow2");
    let rootfs = dir.join("rootfs.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg(DISK.to_string()));
    run(Command::new("qemu-io")
        .arg("-c")
        .arg("write -P 0x11 0 1M")
        .arg(&disk));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&rootfs)
        .arg(DISK.to_string()));
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 1M 512k"])
        .arg(&rootfs));
    BoxOptions {
        disk,
        guest_rootfs: rootfs,
    }
}

pub async fn open_runtime(home: &Path) -> BoxliteRuntime {
    let sources = ConfigSources {
        home: Some(home.to_path_buf()),
        ..Default::default()
    };
    BoxliteRuntime::open(Config::load(&sources).unwrap())
        .await
        .unwrap()
}

/// Write `byte` over `[off, off+len)` of a disk file, as a VMM would.
pub fn write_disk(path: &Path, off: u64, len: usize, byte: u8) {
    let mut chain = Chain::open(path, &OpenOptions::new().writable(true)).unwrap();
    chain.write_at(&vec![byte; len], off).unwrap();
    chain.close().unwrap();
}

/// The whole guest-visible content of a disk.
pub fn read_disk(path: &Path) -> Vec<u8> {
    let chain = Chain::open(path, &OpenOptions::new()).unwrap();
    let mut buf = vec![0u8; chain.virtual_size() as usize];
    chain.read_at(&mut buf, 0).unwrap();
    buf
}

/// (guest-rootfs content, container content) of a box's live disks.
pub async fn box_content(b: &LiteBox) -> (Vec<u8>, Vec<u8>) {
    let info = b.info().await.unwrap();
    (
        read_disk(&info.disks.guest_rootfs),
        read_disk(&info.disks.container),
    )
}

/// Store invariants after any successful operation (cases A04/A06): every disk the catalog
/// references opens, its chain resolves (`qemu-img info --backing-chain`), `qemu-img check` is
/// clean on every stored file, and no stored file is unreferenced.
pub async fn assert_store_consistent(rt: &BoxliteRuntime, home: &Path, step: &str) {
    let store = home.join("storage/qcow2");
    let mut referenced = BTreeSet::new();
    for info in rt.list().await.unwrap() {
        let b = rt
            .get(info.name.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let mut tops: Vec<PathBuf> = info.disks.iter().map(|(_, p)| p.to_path_buf()).collect();
        for s in b.snapshot().list().await.unwrap() {
            let d = b.snapshot().disks(&s.name).await.unwrap();
            tops.extend(d.iter().map(|(_, p)| p.to_path_buf()));
        }
        for top in tops {
            assert!(
                top.exists(),
                "{step}: referenced disk {} is missing",
                top.display()
            );
            let out = run(Command::new("qemu-img")
                .args(["info", "--backing-chain", "-U", "--output=json"])
                .arg(&top));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            for img in v.as_array().unwrap() {
                let f = PathBuf::from(img["filename"].as_str().unwrap());
                referenced.insert(std::fs::canonicalize(&f).unwrap());
            }
        }
    }
    let mut stored = BTreeSet::new();
    for sub in ["base", "layers"] {
        let dir = store.join(sub);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd {
                let p = std::fs::canonicalize(e.unwrap().path()).unwrap();
                run(Command::new("qemu-img").args(["check", "-q", "-U"]).arg(&p));
                stored.insert(p);
            }
        }
    }
    assert_eq!(
        stored, referenced,
        "{step}: stored files must be exactly the referenced ones (left: stored, right: referenced)"
    );
    let staging: Vec<_> = std::fs::read_dir(home.join("staging")).unwrap().collect();
    assert!(
        staging.is_empty(),
        "{step}: staging must be empty: {staging:?}"
    );
}

/// Absolute paths of a box's live disks.
pub async fn live(b: &LiteBox) -> boxlite::api::DiskSet {
    b.info().await.unwrap().disks
}
