//! Test helpers shared by the `copy` and `reflink` backends' tests (the reflink crate
//! includes this file with `#[path]`): real images made with `qemu-img`, guest reads and
//! writes through the in-process qcow2 layer (standing in for a VMM), `qemu-img` as the
//! oracle, scratch filesystems on loop devices, and two scenarios run on any home: one on the
//! backend alone, one through the `boxlite` runtime.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite::api::{
    BoxId, CloneSource, DiskRole, DiskSet, DiskSource, SnapshotBackend, StorageContext,
};
use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources, LiteBox};
use boxlite_backend_qcow2::image::{Chain, OpenOptions};

/// Virtual size of the scenario disks: 8 MiB.
pub const DISK: u64 = 8 << 20;

/// Report a missing prerequisite: panic under `CI=true`, else print a loud skip. Returns
/// false so callers can `if !skip_unless(..) { return; }`.
pub fn skip(reason: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// True when every tool in `tools` is on PATH (else a loud skip).
pub fn have_tools(tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return skip(&format!(
                "`{t}` not found (apt-get install qemu-utils btrfs-progs xfsprogs e2fsprogs)"
            ));
        }
    }
    true
}

/// True when we can make loop-device filesystems: root, /dev/loop-control, the tools.
pub fn can_mount(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root to create loop devices and mount filesystems");
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("no /dev/loop-control: loop devices are unavailable here");
    }
    let mut all = vec!["losetup", "mount", "umount"];
    all.extend_from_slice(tools);
    have_tools(&all)
}

/// Run a command; panic with its stderr if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn try_run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A storage context for backend `name` in `home` (directories created).
pub fn context(home: &Path, name: &str) -> StorageContext {
    let ctx = StorageContext {
        home: home.to_path_buf(),
        store: home.join("storage").join(name),
        staging: home.join("staging"),
    };
    fs::create_dir_all(&ctx.store).unwrap();
    fs::create_dir_all(&ctx.staging).unwrap();
    ctx
}

/// The user's images: a raw guest-rootfs image and a qcow2 container image that backs onto
/// another qcow2 file (a 2-file chain), with known patterns.
pub fn make_images(dir: &Path) -> DiskSource {
    fs::create_dir_all(dir).unwrap();
    let base = dir.join("base.qcow2");
    let disk = dir.join("container.qcow2");
    let rootfs = dir.join("rootfs.raw");
    for p in [&base, &disk, &rootfs] {
        let _ = fs::remove_file(p);
    }
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(DISK.to_string()));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x11 0 1M"])
        .arg(&base));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&disk));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x33 2M 64k"])
        .arg(&disk));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&rootfs)
        .arg(DISK.to_string()));
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 1M 512k"])
        .arg(&rootfs));
    DiskSource {
        guest_rootfs: rootfs,
        container: disk,
    }
}

/// Write `byte` over `[off, off+len)` of a disk file, as a VMM would.
pub fn write_disk(path: &Path, off: u64, len: usize, byte: u8) {
    let mut chain = Chain::open(path, &OpenOptions::new().writable(true)).unwrap();
    chain.write_at(&vec![byte; len], off).unwrap();
    chain.close().unwrap();
}

/// The whole guest-visible content of a qcow2 disk (any chain).
pub fn read_disk(path: &Path) -> Vec<u8> {
    let chain = Chain::open(path, &OpenOptions::new())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; chain.virtual_size() as usize];
    chain.read_at(&mut buf, 0).unwrap();
    buf
}

/// (guest-rootfs, container) content of a set of absolute paths.
pub fn content(set: &DiskSet) -> (Vec<u8>, Vec<u8>) {
    (read_disk(&set.guest_rootfs), read_disk(&set.container))
}

/// `qemu-img check` is clean and the file has no backing file.
pub fn assert_standalone_clean(path: &Path) {
    run(Command::new("qemu-img")
        .args(["check", "-q", "-U"])
        .arg(path));
    let info = run(Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], "qcow2", "{}: {info}", path.display());
    assert!(
        v.get("backing-filename").is_none(),
        "{} must be standalone: {info}",
        path.display()
    );
}

/// `filefrag -v` reports at least one shared extent in `path`.
pub fn has_shared_extents(path: &Path) -> bool {
    let out = run(Command::new("filefrag").arg("-v").arg(path));
    out.lines().any(|l| l.contains("shared"))
}

/// Bytes allocated to `path` (st_blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

fn abs(ctx: &StorageContext, set: &DiskSet) -> DiskSet {
    set.under(&ctx.home)
}

/// Every regular file under `dir` (recursively), canonical.
pub fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.insert(fs::canonicalize(&p).unwrap());
            }
        }
    }
    out
}

/// How the scenario checks extent sharing (reflink) or its absence (copy).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sharing {
    /// Do not look at extents.
    Unchecked,
    /// Snapshots, restores and `cow = true` clones share extents; `cow = false` clones do not.
    Reflink,
    /// Nothing shares extents.
    None,
}

/// The backend contract exercised directly on `backend` in `home` (scratch images in `work`):
/// create from a qcow2 chain and a raw image, snapshot, writes, restore, clones (live and
/// snapshot, cow and full), export (`read_flat`) and adopt, references / stored files /
/// removal. Every produced file is checked with `qemu-img check` and has no backing file.
pub async fn backend_scenario(
    backend: &dyn SnapshotBackend,
    home: &Path,
    work: &Path,
    sharing: Sharing,
) {
    let name = backend.name().to_owned();
    let ctx = context(home, &name);
    backend.probe(&ctx).await.unwrap();
    let src = make_images(work);
    let want_rootfs = fs::read(&src.guest_rootfs).unwrap();
    let want_container = read_disk(&src.container);

    // Create: standalone copies of the user's images, in boxes/<id>/live/.
    let id = BoxId::generate();
    let live0 = backend.create_disks(&ctx, &id, &src).await.unwrap();
    assert_eq!(
        live0.container,
        Path::new("storage")
            .join(&name)
            .join("boxes")
            .join(id.as_str())
            .join("live/disk.qcow2")
    );
    assert_eq!(
        live0.guest_rootfs.file_name().unwrap(),
        "guest-rootfs.qcow2"
    );
    let live0a = abs(&ctx, &live0);
    assert_eq!(content(&live0a), (want_rootfs.clone(), want_container));
    live0a.iter().for_each(|(_, p)| assert_standalone_clean(p));
    // Later changes to the user's files never affect the box.
    write_disk(&src.container, 0, 4096, 0xEE);
    fs::write(&src.guest_rootfs, b"changed").unwrap();
    assert_eq!(content(&live0a).0, want_rootfs);

    // Snapshot: a copy in snapshots/<id>/; the live disks stay the same files.
    write_disk(&live0a.container, 4 << 20, 65536, 0xA0);
    write_disk(&live0a.guest_rootfs, 0, 65536, 0xA1);
    let want_a = content(&live0a);
    let cap = backend.snapshot(&ctx, &id, &live0).await.unwrap();
    assert_eq!(cap.live, live0);
    assert!(cap
        .snapshot
        .container
        .to_string_lossy()
        .contains(&format!("boxes/{id}/snapshots/")));
    assert!(cap.guest_disk_bytes > 0 && cap.container_disk_bytes > 0);
    let snap = abs(&ctx, &cap.snapshot);
    assert_eq!(content(&snap), want_a);
    if sharing != Sharing::Unchecked {
        assert_eq!(
            has_shared_extents(&snap.container),
            sharing == Sharing::Reflink,
            "snapshot extents of {}",
            snap.container.display()
        );
    }

    // Writes to the live disks never change the snapshot.
    write_disk(&live0a.container, 0, 65536, 0xB0);
    write_disk(&live0a.guest_rootfs, 6 << 20, 4096, 0xB1);
    let want_b = content(&live0a);
    assert_ne!(want_a, want_b);
    assert_eq!(content(&snap), want_a);

    // Restore: new live files; the old ones stay valid until the runtime commits.
    let live1 = backend.restore(&ctx, &id, &cap.snapshot).await.unwrap();
    assert_ne!(live1, live0);
    let live1a = abs(&ctx, &live1);
    assert_eq!(content(&live1a), want_a);
    assert_eq!(content(&live0a), want_b);
    assert_eq!(content(&snap), want_a);

    // Clone the current state (cow) into two boxes: independent of each other and the source.
    let ids = [BoxId::generate(), BoxId::generate()];
    let out = backend
        .clone_disks(
            &ctx,
            &CloneSource::Live {
                box_id: id.clone(),
                disks: live0.clone(),
            },
            &ids,
            true,
        )
        .await
        .unwrap();
    assert_eq!(out.source_live, None);
    assert_eq!(out.clones.len(), 2);
    let c0 = abs(&ctx, &out.clones[0]);
    let c1 = abs(&ctx, &out.clones[1]);
    assert!(out.clones[0]
        .container
        .to_string_lossy()
        .contains(ids[0].as_str()));
    assert_eq!(content(&c0), want_b);
    assert_eq!(content(&c1), want_b);
    write_disk(&c0.container, 1 << 20, 4096, 0xC0);
    assert_eq!(content(&c1), want_b);
    assert_eq!(content(&live0a), want_b);
    // From the snapshot, as a full copy.
    let id3 = BoxId::generate();
    let full = backend
        .clone_disks(
            &ctx,
            &CloneSource::Snapshot {
                box_id: id.clone(),
                disks: cap.snapshot.clone(),
            },
            std::slice::from_ref(&id3),
            false,
        )
        .await
        .unwrap();
    let full0 = abs(&ctx, &full.clones[0]);
    assert_eq!(content(&full0), want_a);
    if sharing != Sharing::Unchecked {
        assert_eq!(
            has_shared_extents(&c1.container),
            sharing == Sharing::Reflink,
            "cow clone extents"
        );
        assert!(
            !has_shared_extents(&full0.container),
            "a cow=false clone shares nothing"
        );
    }

    // Export (read_flat) then adopt the flattened files as a new box.
    let import_dir = ctx.staging.join("import-test");
    fs::create_dir_all(&import_dir).unwrap();
    let mut staged = Vec::new();
    for (role, p) in live1.iter() {
        let mut flat = backend.read_flat(&ctx, p).await.unwrap();
        assert_eq!(flat.virtual_size(), DISK);
        let mut buf = Vec::new();
        let n = flat.write_to(&mut buf).unwrap();
        assert_eq!(n, flat.size_bytes());
        assert_eq!(n, buf.len() as u64);
        let f = import_dir.join(role.file_name());
        fs::write(&f, &buf).unwrap();
        assert_standalone_clean(&f);
        staged.push(f);
    }
    let id4 = BoxId::generate();
    let adopted = backend
        .adopt_disks(
            &ctx,
            &id4,
            &DiskSource {
                guest_rootfs: staged[0].clone(),
                container: staged[1].clone(),
            },
        )
        .await
        .unwrap();
    assert!(!staged[0].exists() && !staged[1].exists());
    fs::remove_dir(&import_dir).unwrap();
    let adopted_a = abs(&ctx, &adopted);
    assert_eq!(content(&adopted_a), want_a);

    // Garbage model: the stored files are exactly the roots' references plus live0 (replaced
    // by the restore). The runtime's collector deletes what no root references.
    let mut roots = vec![
        live1.clone(),
        cap.snapshot.clone(),
        out.clones[0].clone(),
        out.clones[1].clone(),
        full.clones[0].clone(),
        adopted.clone(),
    ];
    let stored: BTreeSet<PathBuf> = backend
        .stored_files(&ctx)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(stored, files_under(&ctx.store.join("boxes")));
    let refs = references(backend, &ctx, &roots).await;
    let garbage: BTreeSet<PathBuf> = stored.difference(&refs).cloned().collect();
    let live0_files: BTreeSet<PathBuf> = live0a
        .iter()
        .map(|(_, p)| fs::canonicalize(p).unwrap())
        .collect();
    assert_eq!(garbage, live0_files);
    for f in &garbage {
        fs::remove_file(f).unwrap();
    }
    for f in &stored {
        if f.exists() {
            assert_standalone_clean(f);
        }
    }

    // Removing a snapshot releases exactly its files; other roots are untouched. The box's
    // empty live/ directory (emptied by the collector above) is tidied away.
    roots.retain(|r| *r != cap.snapshot);
    let remaining = boxlite::api::Roots {
        live: roots.clone(),
        snapshots: Vec::new(),
    };
    let rel = backend
        .remove_snapshot(&ctx, &cap.snapshot, &remaining)
        .await
        .unwrap();
    let released: BTreeSet<PathBuf> = rel.delete_after_commit.into_iter().collect();
    let snap_files: BTreeSet<PathBuf> = snap
        .iter()
        .map(|(_, p)| fs::canonicalize(p).unwrap())
        .collect();
    assert_eq!(released, snap_files);
    assert!(!ctx.store.join(format!("boxes/{id}/live")).exists());
    for f in &released {
        fs::remove_file(f).unwrap();
    }
    for (r, want) in [
        (&live1a, &want_a),
        (&c1, &want_b),
        (&full0, &want_a),
        (&adopted_a, &want_a),
    ] {
        assert_eq!(&content(r), want);
    }
    // Removing a box's disks releases its files.
    roots.retain(|r| *r != full.clones[0]);
    let remaining = boxlite::api::Roots {
        live: roots.clone(),
        snapshots: Vec::new(),
    };
    let rel = backend
        .remove_disks(&ctx, &full.clones[0], &remaining)
        .await
        .unwrap();
    assert_eq!(rel.delete_after_commit.len(), 2);
    for f in &rel.delete_after_commit {
        fs::remove_file(f).unwrap();
    }
    // Everything left is referenced, standalone and clean.
    let stored: BTreeSet<PathBuf> = backend
        .stored_files(&ctx)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(stored, references(backend, &ctx, &roots).await);
    stored.iter().for_each(|f| assert_standalone_clean(f));
    let usage = backend.usage(&ctx, &live1).await.unwrap();
    assert!(usage.guest_disk_bytes > 0 && usage.container_disk_bytes > 0);
}

async fn references(
    backend: &dyn SnapshotBackend,
    ctx: &StorageContext,
    roots: &[DiskSet],
) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for r in roots {
        out.extend(backend.references(ctx, r).await.unwrap());
    }
    out
}

/// Open a runtime on `home` with storage backend `storage`.
pub async fn open_runtime(home: &Path, storage: &str) -> BoxliteRuntime {
    let sources = ConfigSources {
        home: Some(home.to_path_buf()),
        storage: Some(storage.to_owned()),
        ..Default::default()
    };
    BoxliteRuntime::open(Config::load(&sources).unwrap())
        .await
        .unwrap()
}

async fn box_content(b: &LiteBox) -> (Vec<u8>, Vec<u8>) {
    content(&b.info().await.unwrap().disks)
}

/// Store invariants after a successful runtime operation (case A04): every disk the catalog
/// references exists, is standalone and clean; the stored files are exactly the referenced
/// ones; staging is empty.
pub async fn assert_store_consistent(rt: &BoxliteRuntime, home: &Path, storage: &str, step: &str) {
    let mut referenced = BTreeSet::new();
    for info in rt.list().await.unwrap() {
        let b = rt
            .get(info.name.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let mut sets = vec![info.disks.clone()];
        for s in b.snapshot().list().await.unwrap() {
            sets.push(b.snapshot().disks(&s.name).await.unwrap());
        }
        for set in sets {
            for (_, p) in set.iter() {
                assert!(
                    p.exists(),
                    "{step}: referenced disk {} is missing",
                    p.display()
                );
                assert_standalone_clean(p);
                referenced.insert(fs::canonicalize(p).unwrap());
            }
        }
    }
    let stored = files_under(&home.join("storage").join(storage));
    assert_eq!(
        stored, referenced,
        "{step}: stored files must be exactly the referenced ones (left: stored, right: referenced)"
    );
    let staging: Vec<_> = fs::read_dir(home.join("staging")).unwrap().collect();
    assert!(
        staging.is_empty(),
        "{step}: staging must be empty: {staging:?}"
    );
}

/// The eight operations through the runtime with storage `storage` in `home` (scratch
/// images and archives in `work`): create, snapshot, write, restore, clone (current, and
/// from the snapshot as a full copy), export, import, remove; content checked via qcow2
/// reads and store invariants after every step.
pub async fn sdk_scenario(storage: &str, home: &Path, work: &Path) {
    use boxlite::api::{CloneOptions, ExportOptions, SnapshotOptions};
    let rt = open_runtime(home, storage).await;
    assert_eq!(rt.storage_name(), storage);
    let src = make_images(work);
    let want0 = (
        fs::read(&src.guest_rootfs).unwrap(),
        read_disk(&src.container),
    );
    let opts = BoxOptions {
        disk: src.container.clone(),
        guest_rootfs: src.guest_rootfs.clone(),
    };
    let b = rt.create(opts, "web").await.unwrap();
    assert_eq!(box_content(&b).await, want0);
    assert_store_consistent(&rt, home, storage, "create").await;

    let live = b.info().await.unwrap().disks;
    write_disk(&live.container, 3 << 20, 65536, 0xA0);
    let want_a = box_content(&b).await;
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();
    write_disk(&live.container, 0, 65536, 0xB0);
    write_disk(&live.guest_rootfs, 5 << 20, 4096, 0xB1);
    let want_b = box_content(&b).await;
    assert_eq!(content(&b.snapshot().disks("v1").await.unwrap()), want_a);
    assert_store_consistent(&rt, home, storage, "snapshot").await;

    b.snapshot().restore("v1").await.unwrap();
    assert_eq!(box_content(&b).await, want_a);
    assert_store_consistent(&rt, home, storage, "restore").await;
    write_disk(
        &b.info().await.unwrap().disks.container,
        7 << 20,
        4096,
        0xD0,
    );
    let want_d = box_content(&b).await;

    let c1 = b.clone("c1", &CloneOptions::default()).await.unwrap();
    assert_eq!(box_content(&c1).await, want_d);
    let mut from_snap = CloneOptions::default();
    from_snap.from_snapshot("v1").cow(false);
    let c2 = b.clone("c2", &from_snap).await.unwrap();
    assert_eq!(box_content(&c2).await, want_a);
    write_disk(&c1.info().await.unwrap().disks.container, 0, 4096, 0xC1);
    assert_eq!(box_content(&b).await, want_d);
    assert_eq!(box_content(&c2).await, want_a);
    assert_store_consistent(&rt, home, storage, "clone").await;

    let out_dir = work.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let archive = b.export(&out_dir, &ExportOptions::default()).await.unwrap();
    let imp = rt.import(&archive, "imp").await.unwrap();
    assert_eq!(box_content(&imp).await, want_d);
    assert_store_consistent(&rt, home, storage, "export/import").await;

    b.snapshot().remove("v1").await.unwrap();
    assert_eq!(box_content(&b).await, want_d);
    assert_eq!(box_content(&c2).await, want_a);
    assert_store_consistent(&rt, home, storage, "remove snapshot").await;
    rt.remove("web", false).await.unwrap();
    assert_eq!(box_content(&imp).await, want_d);
    assert_eq!(box_content(&c2).await, want_a);
    assert_store_consistent(&rt, home, storage, "remove box").await;
    for n in ["c1", "c2", "imp"] {
        rt.remove(n, false).await.unwrap();
    }
    assert!(rt.list().await.unwrap().is_empty());
    assert_store_consistent(&rt, home, storage, "remove all").await;
    let _ = want_b;
}

/// Serialises the tests that use loop devices and mounts, across threads and processes
/// (nextest runs each test in its own process): an exclusive `flock` held while alive.
pub struct MountLock(File);

impl MountLock {
    /// Wait for the lock.
    pub fn acquire() -> MountLock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("boxlite-storage-mount-tests.lock"))
            .unwrap();
        f.lock().unwrap();
        MountLock(f)
    }
}

/// Filesystems the tests make on loop devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    /// btrfs (reflink).
    Btrfs,
    /// xfs with `-m reflink=1`.
    XfsReflink,
    /// xfs with `-m reflink=0`.
    XfsNoReflink,
    /// ext4 (no reflink).
    Ext4,
}

/// A mounted scratch filesystem; unmounted (and its loop device detached, its backing file
/// removed) on drop, also when the test panics.
pub struct Mount {
    /// The mount point.
    pub dir: PathBuf,
    loop_dev: Option<String>,
    _scratch: Option<tempfile::TempDir>,
}

impl Mount {
    /// A fresh filesystem of kind `fs` on a `size_mib` MiB file-backed loop device.
    pub fn loop_fs(fs_kind: Fs, size_mib: u64) -> Result<Mount, String> {
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = scratch.path().join("fs.img");
        let f = File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        let dev = try_run(Command::new("losetup").args(["-f", "--show"]).arg(&img))?
            .trim()
            .to_owned();
        let dir = scratch.path().join("mnt");
        let mut m = Mount {
            dir: dir.clone(),
            loop_dev: Some(dev.clone()),
            _scratch: None,
        };
        fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let mkfs = match fs_kind {
            Fs::Btrfs => try_run(Command::new("mkfs.btrfs").args(["-q", "-f", &dev])),
            Fs::XfsReflink => {
                try_run(Command::new("mkfs.xfs").args(["-q", "-f", "-m", "reflink=1", &dev]))
            }
            Fs::XfsNoReflink => {
                try_run(Command::new("mkfs.xfs").args(["-q", "-f", "-m", "reflink=0", &dev]))
            }
            Fs::Ext4 => try_run(Command::new("mkfs.ext4").args(["-q", "-F", &dev])),
        };
        mkfs?;
        try_run(Command::new("mount").arg(&dev).arg(&dir))?;
        m._scratch = Some(scratch);
        Ok(m)
    }

    /// A tmpfs of `size` (e.g. `"64M"`).
    pub fn tmpfs(size: &str) -> Result<Mount, String> {
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = scratch.path().join("mnt");
        fs::create_dir(&dir).map_err(|e| e.to_string())?;
        try_run(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&dir),
        )?;
        Ok(Mount {
            dir,
            loop_dev: None,
            _scratch: Some(scratch),
        })
    }

    /// Bind-mount `source` (a directory) onto `target` (an existing directory). The returned
    /// guard must be dropped before the mount holding `source`.
    pub fn bind(source: &Path, target: &Path) -> Result<Mount, String> {
        try_run(Command::new("mount").arg("--bind").arg(source).arg(target))?;
        Ok(Mount {
            dir: target.to_path_buf(),
            loop_dev: None,
            _scratch: None,
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Only unmount what was mounted (a failed mkfs leaves a loop device but no mount).
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(true);
        if mounted {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("umount {} failed; lazy unmount", self.dir.display());
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

/// Build a `DiskSet` of catalog-relative paths from absolute ones.
pub fn relative(ctx: &StorageContext, set: &DiskSet) -> DiskSet {
    DiskSet::try_from_fn(|r: DiskRole| ctx.relative(set.get(r))).unwrap()
}
