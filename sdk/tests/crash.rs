//! Crash consistency at every step of every operation (DESIGN.md section 9, case A10).
//!
//! For each (operation x failpoint x storage backend) the parent prepares a home from a
//! template (a box `a` with written data and snapshots s1/s2, a clone `c` with its own data,
//! an exported archive), records the content model of every box and snapshot (read through
//! the qcow2 layer), then re-executes this test binary as a CHILD (`crash_child`) that runs
//! the operation with `BOXLITE_FAILPOINT=<point>=abort` and dies there (SIGABRT: no
//! destructor, no rollback). The parent reopens the home (recovery runs) and checks: doctor
//! clean, the exact model of the old state (points before the commit) or of the new state
//! (points after it), no transient status, the box still takes and restores a snapshot.
//!
//! `error_variants_in_process` arms `<point>=error` in-process instead: the operation returns
//! the injected error, statuses and content are back to the prior state, doctor is clean.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use boxlite::api::registry::{self, PluginKind};
use boxlite::api::{BoxStatus, CloneOptions, ExportOptions, SnapshotOptions};
use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources};
use common::*;

/// Env var that makes `crash_child` act: `storage|operation|home|archive|dest|images_dir`.
const CHILD_ENV: &str = "BOXLITE_CRASH_CHILD";

/// In-process tests of this binary arm failpoints through the environment: serialize them.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (operation, journal prefix, steps inside the operation besides after_begin/before_commit/
/// after_commit). Failpoints named without a dot are prefixed with the journal name.
const OPS: &[(&str, &str, &[&str])] = &[
    (
        "box_create",
        "box_create",
        &["after_storage", "qcow2.between_roles"],
    ),
    (
        "snapshot_create",
        "snapshot_create",
        &["after_storage", "qcow2.between_roles"],
    ),
    (
        "snapshot_restore",
        "snapshot_restore",
        &["after_storage", "qcow2.between_roles", "gc.mid_delete"],
    ),
    (
        "snapshot_remove",
        "snapshot_remove",
        &["after_storage", "gc.mid_delete"],
    ),
    ("clone", "clone", &["after_storage", "qcow2.between_roles"]),
    (
        "clone_snapshot",
        "clone",
        &["after_storage", "qcow2.between_roles"],
    ),
    ("export", "export", &["after_write"]),
    ("import", "import", &["after_extract", "after_adopt"]),
    (
        "box_remove",
        "box_remove",
        &["after_storage", "gc.mid_delete"],
    ),
];

/// Failpoints after the commit: the new state must be what recovery leaves.
fn is_post_commit(point: &str) -> bool {
    point.ends_with(".after_commit") || point == "gc.mid_delete"
}

fn points(storage: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (op, prefix, steps) in OPS {
        let mut all = vec![format!("{prefix}.after_begin")];
        for s in *steps {
            if s.starts_with("qcow2.") && storage != "qcow2" {
                continue;
            }
            all.push(if s.contains('.') {
                (*s).to_owned()
            } else {
                format!("{prefix}.{s}")
            });
        }
        all.push(format!("{prefix}.before_commit"));
        all.push(format!("{prefix}.after_commit"));
        out.extend(all.into_iter().map(|p| (*op, p)));
    }
    out
}

/// The guest-visible content of every box and snapshot, by name (hashes of whole disks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoxModel {
    status: BoxStatus,
    live: (u64, u64),
    snapshots: BTreeMap<String, (u64, u64)>,
}
type Model = BTreeMap<String, BoxModel>;

fn hash_disk(p: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    read_disk(p).hash(&mut h);
    h.finish()
}

fn hash_set(d: &boxlite::api::DiskSet) -> (u64, u64) {
    (hash_disk(&d.guest_rootfs), hash_disk(&d.container))
}

async fn model_of(rt: &BoxliteRuntime) -> Model {
    let mut m = Model::new();
    for info in rt.list().await.unwrap() {
        let name = info.name.clone().unwrap();
        let b = rt.get(&name).await.unwrap().unwrap();
        let mut snapshots = BTreeMap::new();
        for s in b.snapshot().list().await.unwrap() {
            let d = b.snapshot().disks(&s.name).await.unwrap();
            snapshots.insert(s.name.clone(), hash_set(&d));
        }
        m.insert(
            name,
            BoxModel {
                status: info.status,
                live: hash_set(&info.disks),
                snapshots,
            },
        );
    }
    m
}

pub async fn open_with(home: &Path, storage: &str) -> BoxliteRuntime {
    let sources = ConfigSources {
        home: Some(home.to_path_buf()),
        storage: Some(storage.to_owned()),
        ..Default::default()
    };
    BoxliteRuntime::open(Config::load(&sources).unwrap())
        .await
        .unwrap()
}

/// Paths one case needs.
struct Case {
    storage: String,
    home: PathBuf,
    archive: PathBuf,
    dest: PathBuf,
    images: PathBuf,
}

impl Case {
    fn env(&self, op: &str) -> String {
        format!(
            "{}|{op}|{}|{}|{}|{}",
            self.storage,
            self.home.display(),
            self.archive.display(),
            self.dest.display(),
            self.images.display()
        )
    }
}

fn images_in(dir: &Path) -> BoxOptions {
    BoxOptions {
        disk: dir.join("container.qcow2"),
        guest_rootfs: dir.join("rootfs.raw"),
    }
}

/// Run operation `op` on a prepared home.
async fn run_op(rt: &BoxliteRuntime, op: &str, c: &Case) -> boxlite::api::Result<()> {
    let a = || async { rt.get("a").await.unwrap().unwrap() };
    match op {
        "box_create" => rt.create(images_in(&c.images), "n").await.map(|_| ()),
        "snapshot_create" => a()
            .await
            .snapshot()
            .create("s3", &SnapshotOptions::default())
            .await
            .map(|_| ()),
        "snapshot_restore" => a().await.snapshot().restore("s1").await,
        "snapshot_remove" => a().await.snapshot().remove("s1").await,
        "clone" => a()
            .await
            .clone("c2", &CloneOptions::default())
            .await
            .map(|_| ()),
        "clone_snapshot" => {
            let opts = CloneOptions {
                from_snapshot: Some("s2".into()),
                ..Default::default()
            };
            a().await.clone("c3", &opts).await.map(|_| ())
        }
        "export" => a()
            .await
            .export(&c.dest, &ExportOptions::default())
            .await
            .map(|_| ()),
        "import" => rt.import(&c.archive, "imp").await.map(|_| ()),
        "box_remove" => rt.remove("a", false).await,
        other => panic!("unknown operation {other}"),
    }
}

/// The child: runs one operation with a failpoint armed (it should abort there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let c = Case {
        storage: f[0].into(),
        home: f[2].into(),
        archive: f[3].into(),
        dest: f[4].into(),
        images: f[5].into(),
    };
    let rt = open_with(&c.home, &c.storage).await;
    run_op(&rt, f[1], &c).await.unwrap();
}

/// A template home: box `a` (data, s1, more data, s2, more data), clone `c` (own data), and
/// `a`'s archive. Returns its model.
async fn template(root: &Path, storage: &str) -> (Case, Model) {
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    make_images(&images);
    let c = Case {
        storage: storage.into(),
        home: root.join("home"),
        archive: root.join("a.boxsnap"),
        dest: root.join("out"),
        images,
    };
    let rt = open_with(&c.home, storage).await;
    let a = rt.create(images_in(&c.images), "a").await.unwrap();
    let d = live(&a).await;
    write_disk(&d.container, 0, 64 << 10, 0xA1);
    write_disk(&d.guest_rootfs, 2 << 20, 64 << 10, 0xA1);
    a.snapshot()
        .create("s1", &SnapshotOptions::default())
        .await
        .unwrap();
    write_disk(&live(&a).await.container, 1 << 20, 128 << 10, 0xA2);
    a.snapshot()
        .create("s2", &SnapshotOptions::default())
        .await
        .unwrap();
    write_disk(&live(&a).await.container, 3 << 20, 64 << 10, 0xA3);
    let cl = a.clone("c", &CloneOptions::default()).await.unwrap();
    write_disk(&live(&cl).await.container, 5 << 20, 64 << 10, 0xC1);
    a.export(&c.archive, &ExportOptions::default())
        .await
        .unwrap();
    let m = model_of(&rt).await;
    assert!(rt.doctor(false).await.unwrap().problems.is_empty());
    (c, m)
}

fn copy_home(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A fresh case directory with a copy of the template home.
fn new_case(t: &Case, dir: &Path) -> Case {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    copy_home(&t.home, &dir.join("home"));
    Case {
        storage: t.storage.clone(),
        home: dir.join("home"),
        archive: t.archive.clone(),
        dest: dir.join("out"),
        images: t.images.clone(),
    }
}

/// Every invariant after recovery: doctor clean, the exact model, store consistent, the
/// archive destination empty or a whole archive, the box usable.
async fn check_home(rt: &BoxliteRuntime, c: &Case, want: &Model, before: &Model, label: &str) {
    let r = rt.doctor(false).await.unwrap();
    assert!(r.problems.is_empty(), "{label}: doctor: {r:#?}");
    let got = model_of(rt).await;
    for (name, b) in &got {
        assert!(
            !b.status.is_busy(),
            "{label}: box {name} left in {}",
            b.status
        );
    }
    assert_eq!(&got, want, "{label}: content model");
    if c.storage == "qcow2" {
        assert_store_consistent(rt, &c.home, label).await;
    }
    // The export destination: nothing, or a complete archive whose content is a's.
    for e in std::fs::read_dir(&c.dest).unwrap() {
        let p = e.unwrap().path();
        let fname = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(fname, "a.boxsnap", "{label}: stray file in the destination");
        let b = rt.import(&p, "check-import").await.unwrap();
        let info = b.info().await.unwrap();
        assert_eq!(hash_set(&info.disks), before["a"].live, "{label}: archive");
        rt.remove("check-import", false).await.unwrap();
    }
    // Usable: snapshot, write, restore, remove the probe.
    let name = if got.contains_key("a") { "a" } else { "c" };
    let b = rt.get(name).await.unwrap().unwrap();
    b.snapshot()
        .create("probe", &SnapshotOptions::default())
        .await
        .unwrap();
    let before_write = hash_set(&live(&b).await);
    write_disk(&live(&b).await.container, 0, 4096, 0x5A);
    b.snapshot().restore("probe").await.unwrap();
    assert_eq!(hash_set(&live(&b).await), before_write, "{label}: probe");
    b.snapshot().remove("probe").await.unwrap();
    let r = rt.doctor(false).await.unwrap();
    assert!(r.problems.is_empty(), "{label}: doctor after probe: {r:#?}");
}

fn storages() -> Vec<String> {
    let mut out = vec!["qcow2".to_owned()];
    if registry::registered(PluginKind::Storage)
        .iter()
        .any(|r| r.name == "copy")
    {
        out.push("copy".into());
    }
    out
}

/// Cases of the abort matrix run at once.
const PARALLEL: usize = 4;

/// One abort case: a child dies at `point` during `op`; the reopened home must be `before`
/// (points before the commit) or `after` (points after it). Returns whether the child
/// reached the point (it exits normally otherwise, and the home must then be `after`).
async fn abort_case(
    t: &Case,
    dir: &Path,
    exe: &Path,
    op: &str,
    point: &str,
    before: &Model,
    after: &Model,
) -> bool {
    let label = format!("{}/{op}/{point}", t.storage);
    let c = new_case(t, dir);
    let out = tokio::process::Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, c.env(op))
        .env("BOXLITE_FAILPOINT", format!("{point}=abort"))
        .output()
        .await
        .unwrap();
    let aborted = {
        use std::os::unix::process::ExitStatusExt;
        out.status.signal() == Some(6)
    };
    let rt = open_with(&c.home, &c.storage).await;
    let want = if !aborted {
        assert!(
            out.status.success(),
            "{label}: child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        after
    } else if is_post_commit(point) {
        after
    } else {
        assert!(
            !rt.recovery_report().rolled_back.is_empty(),
            "{label}: recovery should roll back the dead operation"
        );
        before
    };
    check_home(&rt, &c, want, before, &label).await;
    aborted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_at_every_failpoint() {
    if !have_qemu() {
        return;
    }
    let _g = LOCK.lock().await;
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut covered = 0usize;
    let mut not_reached = Vec::new();
    let storages = storages();
    for storage in &storages {
        let root = tmp.path().join(storage);
        let (t, before) = template(&root.join("template"), storage).await;
        // The new state of each operation: run it to completion on a copy.
        let mut after = BTreeMap::new();
        for (op, _, _) in OPS {
            let c = new_case(&t, &root.join(format!("after-{op}")));
            let rt = open_with(&c.home, storage).await;
            run_op(&rt, op, &c).await.unwrap();
            after.insert(*op, model_of(&rt).await);
        }
        // Cases are independent homes: run a few at once (most of a case is waiting on
        // fsync and on the child process).
        let t = std::sync::Arc::new(t);
        let before = std::sync::Arc::new(before);
        let after = std::sync::Arc::new(after);
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for (i, (op, point)) in points(storage).into_iter().enumerate() {
            let (t, before, after, sem) = (t.clone(), before.clone(), after.clone(), sem.clone());
            let (exe, dir) = (exe.clone(), root.join(format!("case-{i}")));
            set.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let reached = abort_case(&t, &dir, &exe, op, &point, &before, &after[op]).await;
                std::fs::remove_dir_all(&dir).unwrap();
                (format!("{}/{op}/{point}", t.storage), reached)
            });
        }
        while let Some(r) = set.join_next().await {
            let (label, reached) = r.unwrap();
            if !reached {
                not_reached.push(label);
            }
            covered += 1;
        }
    }
    eprintln!(
        "crash matrix: {covered} (operation x failpoint x backend) combinations over {:?} \
         ({} operations), not reached: {not_reached:?}, in {:.1} s",
        storages,
        OPS.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        !not_reached.iter().any(|l| l.starts_with("qcow2/")),
        "every qcow2 failpoint must be reached: {not_reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_variants_in_process() {
    if !have_qemu() {
        return;
    }
    let _g = LOCK.lock().await;
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (t, before) = template(&tmp.path().join("template"), "qcow2").await;
    let mut covered = 0;
    // A subset: every point before the commit but the backend-internal one (which only
    // clone and snapshot_create keep), and after_commit of two operations.
    let subset = points("qcow2").into_iter().filter(|(op, p)| {
        if p == "qcow2.between_roles" {
            return matches!(*op, "clone" | "snapshot_create");
        }
        if is_post_commit(p) {
            return matches!(*op, "snapshot_restore" | "box_remove");
        }
        true
    });
    for (i, (op, point)) in subset.enumerate() {
        let label = format!("qcow2/{op}/{point}=error");
        let c = new_case(&t, &tmp.path().join(format!("case-{i}")));
        let rt = open_with(&c.home, "qcow2").await;
        std::env::set_var("BOXLITE_FAILPOINT", format!("{point}=error"));
        let res = run_op(&rt, op, &c).await;
        std::env::remove_var("BOXLITE_FAILPOINT");
        if is_post_commit(&point) {
            // Past the commit an injected error only skips (or interrupts) the collection:
            // the operation succeeded, and the next collection finishes the job.
            res.unwrap_or_else(|e| panic!("{label}: {e}"));
            rt.collect_garbage().await.unwrap();
            let r = rt.doctor(false).await.unwrap();
            assert!(r.problems.is_empty(), "{label}: {r:#?}");
        } else {
            let e = res.expect_err(&label);
            assert!(
                boxlite::api::failpoint::is_injected(&e),
                "{label}: not the injected error: {e}"
            );
            check_home(&rt, &c, &before, &before, &label).await;
        }
        drop(rt);
        std::fs::remove_dir_all(tmp.path().join(format!("case-{i}"))).unwrap();
        covered += 1;
    }
    eprintln!(
        "error variants: {covered} (operation x failpoint) combinations on qcow2 in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The failpoints are compiled into test builds (the sdk's dev-dependency turns the
/// feature on); docs/crash-safety.md shows how to check that normal builds lack them.
const _: () = assert!(boxlite::api::failpoint::ENABLED);
