//! Issue 6, "hostile input: fail closed, change nothing": every case of the corpus
//! (`tests/corpus/`, built at run time) is fed to a real runtime (qcow2 storage, SQLite
//! catalog) whose home already holds boxes and a snapshot. For each case the test checks:
//!
//! - the exact typed error (`boxlite_api::Error` variant, entry, message substring);
//! - no panic (a panic in a worker thread would surface as "worker task failed");
//! - nothing changed outside `<home>/staging`: every path under the home and under the
//!   input's directory, with size, mode, mtime and SHA-256 of file contents (directories by
//!   mode and mtime; the catalog's own database files are compared only for cases that must
//!   fail before any I/O, since every other operation journals its intent there);
//! - `<home>/staging` is empty afterwards;
//! - the catalog (`runtime.list()` and every box's snapshot list) is unchanged.
//!
//! A table of case -> error is printed at the end (`--no-capture` to see it). With
//! `BOXLITE_FUZZ_SEED_DIR=<dir>` the archive inputs are also written to
//! `<dir>/import_archive/` and the image inputs to `<dir>/open_image/` as fuzz seeds
//! (`fuzz/run.sh`). `BOXLITE_CORPUS_STORAGE=copy` runs the corpus on another storage backend
//! (exploratory: the expectations are written for qcow2, e.g. its `max_chain_depth`).

mod common;
mod corpus;

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boxlite::api::{BoxInfo, CloneOptions, Error, ExportOptions, SnapshotInfo, SnapshotOptions};
use boxlite::qcow2::{Chain, OpenOptions};
use boxlite::{BoxOptions, BoxliteRuntime};
use common::{have_qemu, open_runtime};
use corpus::{Base, Case, Op};
use sha2::Digest;

/// Largest input copied into the fuzz seed directory, in bytes.
const MAX_SEED: u64 = 1 << 20;
/// A case that takes longer than this is reported as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The observable state the corpus must not change.
#[derive(PartialEq, Eq)]
struct State {
    files: BTreeMap<PathBuf, String>,
    catalog: Vec<(BoxInfo, Vec<SnapshotInfo>)>,
}

fn describe(path: &Path, md: &std::fs::Metadata) -> String {
    let ft = md.file_type();
    let common = format!(
        "mode {:o} mtime {}.{}",
        md.mode(),
        md.mtime(),
        md.mtime_nsec()
    );
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map(|t| t.display().to_string());
        format!("symlink -> {target:?}")
    } else if ft.is_dir() {
        format!("dir {common}")
    } else if ft.is_file() {
        let hash = std::fs::read(path)
            .map(|b| format!("{:x}", sha2::Sha256::digest(&b)))
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        format!("file {} bytes {common} sha256 {hash}", md.len())
    } else {
        format!("special {common}")
    }
}

/// Every path under `root` (including `root`), skipping `skip`.
fn walk(root: &Path, skip: &dyn Fn(&Path) -> bool, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(md) = std::fs::symlink_metadata(root) else {
        return;
    };
    out.insert(root.to_path_buf(), describe(root, &md));
    if !md.is_dir() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !skip(&p) {
            walk(&p, skip, out);
        }
    }
}

/// Catalog database files (changed by every operation's journal entry, even a refused one).
fn is_catalog_file(home: &Path, p: &Path) -> bool {
    p.parent() == Some(home)
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("boxlite.db") || n.starts_with("boxlite.redb"))
}

async fn capture(rt: &BoxliteRuntime, home: &Path, extra: &[PathBuf], strict: bool) -> State {
    let staging = home.join("staging");
    let mut files = BTreeMap::new();
    let skip = |p: &Path| p.starts_with(&staging) || (!strict && is_catalog_file(home, p));
    walk(home, &skip, &mut files);
    // The staging directory itself changes (entries come and go); its contents are checked
    // separately (empty after every case).
    files.remove(&staging);
    for dir in extra {
        walk(dir, &|_| false, &mut files);
    }
    let mut catalog = Vec::new();
    for info in rt.list().await.expect("list") {
        let name = info.name.clone().expect("named box");
        let b = rt.get(&name).await.expect("get").expect("box");
        let snaps = b.snapshot().list().await.expect("snapshot list");
        catalog.push((info, snaps));
    }
    State { files, catalog }
}

fn diff(before: &State, after: &State) -> Vec<String> {
    let mut out = Vec::new();
    for (p, d) in &before.files {
        match after.files.get(p) {
            None => out.push(format!("removed {}", p.display())),
            Some(a) if a != d => out.push(format!("changed {}: {d} -> {a}", p.display())),
            _ => {}
        }
    }
    for (p, a) in &after.files {
        if !before.files.contains_key(p) {
            out.push(format!("created {}: {a}", p.display()));
        }
    }
    if before.catalog != after.catalog {
        out.push(format!(
            "catalog changed: {:?} -> {:?}",
            before
                .catalog
                .iter()
                .map(|(b, s)| (&b.name, s.len()))
                .collect::<Vec<_>>(),
            after
                .catalog
                .iter()
                .map(|(b, s)| (&b.name, s.len()))
                .collect::<Vec<_>>()
        ));
    }
    out
}

async fn run_op(rt: &BoxliteRuntime, op: &Op) -> Result<(), Error> {
    let get_box = |name: &str| {
        let rt = rt.clone();
        let name = name.to_owned();
        async move {
            rt.get(&name)
                .await?
                .ok_or_else(|| Error::box_not_found(&name))
        }
    };
    match op {
        Op::Import { archive, name } => rt.import(archive, name).await.map(drop),
        Op::Create { opts, name } => rt.create(opts.clone(), name).await.map(drop),
        Op::SnapshotCreate { box_name, snap } => get_box(box_name)
            .await?
            .snapshot()
            .create(snap, &SnapshotOptions::default())
            .await
            .map(drop),
        Op::SnapshotRestore { box_name, snap } => {
            get_box(box_name).await?.snapshot().restore(snap).await
        }
        Op::SnapshotRemove { box_name, snap } => {
            get_box(box_name).await?.snapshot().remove(snap).await
        }
        Op::SnapshotGet { box_name, snap } => get_box(box_name)
            .await?
            .snapshot()
            .get(snap)
            .await
            .map(drop),
        Op::Clone {
            box_name,
            name,
            from,
        } => {
            let mut opts = CloneOptions::default();
            if let Some(s) = from {
                opts.from_snapshot(s.clone());
            }
            get_box(box_name).await?.clone(name, &opts).await.map(drop)
        }
        Op::Remove { name } => rt.remove(name, false).await,
        Op::Get { name } => rt.get(name).await.map(drop),
    }
}

/// Write `len` pseudo-random bytes at `off` of a disk through the qcow2 layer (as a VMM).
fn write_random(path: &Path, off: u64, len: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut chain = Chain::open(path, &OpenOptions::new().writable(true)).unwrap();
    chain.write_at(&data, off).unwrap();
    chain.close().unwrap();
}

/// Copy the case inputs into the fuzz seed directory named by `BOXLITE_FUZZ_SEED_DIR`.
fn write_seeds(base: &Base, cases: &[Case]) {
    let Ok(dir) = std::env::var("BOXLITE_FUZZ_SEED_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let archives = dir.join("import_archive");
    let images = dir.join("open_image");
    std::fs::create_dir_all(&archives).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    for codec in ["zstd", "lz4", "none"] {
        std::fs::write(archives.join(format!("good-{codec}")), base.good(codec)).unwrap();
    }
    std::fs::write(images.join("good-guest"), &base.guest).unwrap();
    std::fs::write(images.join("good-container"), &base.container).unwrap();
    for case in cases {
        let (target, file) = match &case.op {
            Op::Import { archive, .. } => (&archives, archive),
            Op::Create { opts, .. } => (&images, &opts.disk),
            _ => continue,
        };
        if std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() <= MAX_SEED) {
            std::fs::copy(file, target.join(&case.name)).unwrap();
        }
    }
    eprintln!("fuzz seeds written to {}", dir.display());
}

/// After a hang: open every FIFO input for writing (and close it), so that a reader blocked
/// in open(2) gets end-of-file and the worker thread ends.
fn unblock_fifos(case: &Case) {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    for p in case.inputs() {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo()) {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(p);
        }
    }
}

struct Row {
    name: String,
    covers: &'static str,
    op: &'static str,
    result: String,
    millis: u128,
    problems: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_fails_closed_and_changes_nothing() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs");
    let shared = inputs.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let home = tmp.path().join("home");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&home)
        .unwrap();
    // A small chain-depth bound, so that the depth case needs only a few files. The storage
    // backend is qcow2 (the default) unless BOXLITE_CORPUS_STORAGE names another.
    let storage = std::env::var("BOXLITE_CORPUS_STORAGE").unwrap_or_else(|_| "qcow2".into());
    std::fs::write(
        home.join("config.toml"),
        format!("storage = \"{storage}\"\n[plugin.qcow2]\nmax_chain_depth = 8\n"),
    )
    .unwrap();

    // Good inputs: two small images, a box with random data and a snapshot, exported with
    // every codec (over 200 KiB each, for the truncation cases).
    let container = corpus::images::tiny(&shared, "container.qcow2", 0x11);
    let rootfs = shared.join("rootfs.raw");
    std::fs::write(&rootfs, vec![0x22u8; 1 << 20]).unwrap();
    let images = BoxOptions {
        disk: container.clone(),
        guest_rootfs: rootfs,
    };
    let rt = open_runtime(&home).await;
    let keep = rt.create(images.clone(), "keep").await.unwrap();
    write_random(&keep.info().await.unwrap().disks.container, 0, 300 << 10, 7);
    keep.snapshot()
        .create("s1", &SnapshotOptions::default())
        .await
        .unwrap();
    let mut exports = Vec::new();
    for (codec, level) in [("none", 0), ("zstd", 3), ("lz4", 0)] {
        let opts = ExportOptions {
            compress: codec != "none",
            compression_level: level,
            codec: Some(codec.to_owned()),
            ..ExportOptions::default()
        };
        let p = keep
            .export(&shared.join(format!("keep-{codec}.boxsnap")), &opts)
            .await
            .unwrap();
        exports.push((codec.to_owned(), p));
    }
    let tiny = inputs.join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let base = Base {
        dir: inputs.clone(),
        guest: std::fs::read(corpus::images::tiny(&tiny, "guest.qcow2", 0x47)).unwrap(),
        container: std::fs::read(corpus::images::tiny(&tiny, "disk.qcow2", 0x44)).unwrap(),
        exports,
        images,
        box_name: "keep".into(),
        snapshot: "s1".into(),
    };

    // Controls: the good inputs the hostile ones are derived from are accepted.
    for codec in ["zstd", "lz4", "none"] {
        let p = base.write(&format!("control-{codec}"), &base.good(codec));
        rt.import(&p, &format!("control-{codec}"))
            .await
            .unwrap_or_else(|e| panic!("control archive ({codec}) refused: {e}"));
    }
    let (_, big) = &base.exports[1];
    rt.import(big, "control-export").await.unwrap();
    rt.create(base.images.clone(), "control-create")
        .await
        .unwrap();

    let started = Instant::now();
    let cases = base.cases();
    let build_secs = started.elapsed().as_secs_f64();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    write_seeds(&base, &cases);

    let mut rows = Vec::new();
    for case in &cases {
        let extra: Vec<PathBuf> = {
            let mut dirs: Vec<PathBuf> = case
                .inputs()
                .iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf))
                .filter(|d| d.starts_with(tmp.path()))
                .collect();
            dirs.sort();
            dirs.dedup();
            dirs
        };
        let strict = matches!(case.expect, corpus::Expect::InvalidName(None));
        let before = capture(&rt, &home, &extra, strict).await;
        let t = Instant::now();
        let res = tokio::time::timeout(CASE_TIMEOUT, run_op(&rt, &case.op)).await;
        let millis = t.elapsed().as_millis();
        let mut problems = Vec::new();
        let result = match &res {
            Err(_) => {
                problems.push(format!("no answer within {CASE_TIMEOUT:?} (hang)"));
                unblock_fifos(case);
                "HANG".to_owned()
            }
            Ok(Ok(())) => {
                problems.push("the operation SUCCEEDED".to_owned());
                "Ok".to_owned()
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                if msg.contains("worker task failed") || msg.contains("panicked") {
                    problems.push(format!("panic in a worker: {msg}"));
                }
                if let Err(why) = case.expect.check(&case.op, e) {
                    problems.push(why);
                }
                let variant = format!("{e:?}");
                let variant = variant
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let mut short: String = msg.chars().take(110).collect();
                if msg.chars().count() > 110 {
                    short.push_str("...");
                }
                format!("{variant}: {short}")
            }
        };
        if matches!(res, Ok(Ok(()))) {
            // Undo an accepted input so that later cases start from the same catalog.
            let _ = rt.remove(corpus::TARGET, true).await;
        }
        let after = capture(&rt, &home, &extra, strict).await;
        problems.extend(diff(&before, &after));
        let left: Vec<_> = std::fs::read_dir(home.join("staging"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        if !left.is_empty() {
            problems.push(format!("staging not empty: {left:?}"));
        }
        rows.push(Row {
            name: case.name.clone(),
            covers: case.covers,
            op: case.op.label(),
            result,
            millis,
            problems,
        });
    }

    println!(
        "\nhostile corpus: {} cases (built in {build_secs:.1} s, run in {:.1} s)",
        rows.len(),
        started.elapsed().as_secs_f64() - build_secs
    );
    println!(
        "{:<44} {:<7} {:<17} {:>6}  error",
        "case", "covers", "operation", "ms"
    );
    for r in &rows {
        println!(
            "{:<44} {:<7} {:<17} {:>6}  {}{}",
            r.name,
            r.covers,
            r.op,
            r.millis,
            r.result.replace('\n', "\\n"),
            if r.problems.is_empty() {
                ""
            } else {
                "  <-- FAIL"
            }
        );
    }
    let mut by_cover = BTreeMap::new();
    for r in &rows {
        *by_cover.entry(r.covers).or_insert(0) += 1;
    }
    println!("cases per area: {by_cover:?}");
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| {
            format!(
                "{} ({}): {}\n    {}",
                r.name,
                r.op,
                r.result,
                r.problems.join("\n    ")
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(rows.len() >= 40, "the corpus must hold at least 40 cases");
}
