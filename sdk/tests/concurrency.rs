//! Concurrency (DESIGN.md section 10): cases A09 (concurrent operations on one box) and A05
//! (several processes on one home), and a mixed load over several boxes. Every wait is bounded
//! (a deadlock fails the test instead of hanging it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxlite::api::{CloneOptions, Error, ExportOptions, SnapshotOptions};
use boxlite::{BoxliteRuntime, LiteBox};
use common::*;

/// Env var that makes `a05_child` act: `writer|HOME|BOX` or `lister|HOME|STOPFILE`.
const CHILD_ENV: &str = "BOXLITE_CONCURRENCY_CHILD";
const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress in {LIMIT:?} (deadlock?)"))
}

async fn get(rt: &BoxliteRuntime, name: &str) -> LiteBox {
    rt.get(name).await.unwrap().unwrap()
}

async fn assert_resting(rt: &BoxliteRuntime, step: &str) {
    for info in rt.list().await.unwrap() {
        assert_eq!(
            info.status,
            boxlite::api::BoxStatus::Stopped,
            "{step}: box {:?} not back to Stopped",
            info.name
        );
    }
    let r = rt.doctor(false).await.unwrap();
    assert!(r.problems.is_empty(), "{step}: doctor: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a09_concurrent_operations_on_one_box() {
    if !have_qemu() {
        return;
    }
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let a = rt.create(make_images(tmp.path()), "a").await.unwrap();
    write_disk(&live(&a).await.container, 0, 64 << 10, 0xA1);

    // 20 concurrent creates of one name: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            get(&rt, "a")
                .await
                .snapshot()
                .create("v1", &SnapshotOptions::default())
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match bounded("create v1", t).await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::AlreadyExists { .. } | Error::Busy { .. }) => {}
            Err(e) => panic!("create v1: unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one create of v1 succeeds");
    assert_eq!(a.snapshot().list().await.unwrap().len(), 1);
    assert_resting(&rt, "after creates").await;
    assert_store_consistent(&rt, &home, "after creates").await;

    // 50 concurrent removes: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            get(&rt, "a").await.snapshot().remove("v1").await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match bounded("remove v1", t).await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::NotFound { .. } | Error::Busy { .. }) => {}
            Err(e) => panic!("remove v1: unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one remove of v1 succeeds");
    assert!(a.snapshot().list().await.unwrap().is_empty());
    assert_resting(&rt, "after removes").await;
    assert_store_consistent(&rt, &home, "after removes").await;

    // Clone (from the current state) during a restore, a few rounds.
    a.snapshot()
        .create("s", &SnapshotOptions::default())
        .await
        .unwrap();
    write_disk(&live(&a).await.container, 0, 4096, 0xB2);
    for round in 0..4 {
        let (r1, r2) = (rt.clone(), rt.clone());
        let restore =
            tokio::spawn(async move { get(&r1, "a").await.snapshot().restore("s").await });
        let name = format!("cl{round}");
        let clone = tokio::spawn(async move {
            get(&r2, "a")
                .await
                .clone(&name, &CloneOptions::default())
                .await
                .map(|_| ())
        });
        for (what, t) in [("restore", restore), ("clone", clone)] {
            match bounded(what, t).await.unwrap() {
                Ok(()) | Err(Error::Busy { .. }) => {}
                Err(e) => panic!("{what} during the other: {e}"),
            }
        }
        assert_resting(&rt, "clone during restore").await;
        assert_store_consistent(&rt, &home, "clone during restore").await;
    }

    // Export while the box is being removed, on clones (each round removes one).
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for round in 0..4 {
        let name = format!("cl{round}");
        if rt.get(&name).await.unwrap().is_none() {
            continue;
        }
        let b = get(&rt, &name).await;
        let dest = out.join(format!("{name}.boxsnap"));
        let d2 = dest.clone();
        let export =
            tokio::spawn(async move { b.export(&d2, &ExportOptions::default()).await.map(|_| ()) });
        let r = rt.clone();
        let n2 = name.clone();
        let remove = tokio::spawn(async move { r.remove(&n2, false).await });
        let exported = bounded("export", export).await.unwrap();
        let removed = bounded("remove", remove).await.unwrap();
        match &exported {
            Ok(()) => {
                let imp = rt.import(&dest, "reimported").await.unwrap();
                drop(imp);
                rt.remove("reimported", false).await.unwrap();
            }
            Err(Error::Busy { .. } | Error::NotFound { .. }) => {
                assert!(!dest.exists(), "a failed export leaves no archive")
            }
            Err(e) => panic!("export during remove: {e}"),
        }
        match &removed {
            Ok(()) => assert!(rt.get(&name).await.unwrap().is_none()),
            Err(Error::Busy { .. }) => assert!(rt.get(&name).await.unwrap().is_some()),
            Err(e) => panic!("remove during export: {e}"),
        }
        let partial: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "temporary archives left: {partial:?}");
        assert_resting(&rt, "export during remove").await;
        assert_store_consistent(&rt, &home, "export during remove").await;
    }
    eprintln!("A09 in {:.1} s", start.elapsed().as_secs_f64());
}

/// The A05 child: a writer creating and removing 100 snapshots on its own box, or a lister.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a05_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let rt = open_runtime(Path::new(f[1])).await;
    let mut errors: Vec<String> = Vec::new();
    match f[0] {
        "writer" => {
            let b = get(&rt, f[2]).await;
            let (mut created, mut removed) = (0, 0);
            for i in 0..100 {
                match b
                    .snapshot()
                    .create(&format!("s{i}"), &SnapshotOptions::default())
                    .await
                {
                    Ok(_) => created += 1,
                    Err(e) => errors.push(format!("create s{i}: {e}")),
                }
                if i % 2 == 1 {
                    for j in [i - 1, i] {
                        match b.snapshot().remove(&format!("s{j}")).await {
                            Ok(()) => removed += 1,
                            Err(e) => errors.push(format!("remove s{j}: {e}")),
                        }
                    }
                }
            }
            println!("RESULT created={created} removed={removed} errors={errors:?}");
        }
        "lister" => {
            let stop = PathBuf::from(f[2]);
            let mut lists = 0;
            while !stop.exists() {
                match rt.list().await {
                    Ok(boxes) => {
                        for info in boxes {
                            if let Ok(Some(b)) = rt.get(info.name.as_deref().unwrap()).await {
                                if let Err(e) = b.snapshot().list().await {
                                    errors.push(format!("list snapshots: {e}"));
                                }
                            }
                        }
                        lists += 1;
                    }
                    Err(e) => errors.push(format!("list: {e}")),
                }
            }
            println!("RESULT lists={lists} errors={errors:?}");
        }
        other => panic!("unknown role {other}"),
    }
    assert!(errors.is_empty(), "{errors:?}");
}

fn child(role: &str, home: &Path, arg: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a05_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{role}|{}|{arg}", home.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_child(c: std::process::Child, what: &str) -> String {
    let out = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stdout}\n{stderr}");
    assert!(
        !stdout.contains("database is locked") && !stderr.contains("database is locked"),
        "{what}: 'database is locked': {stdout}\n{stderr}"
    );
    stdout
        .lines()
        .find_map(|l| l.find("RESULT").map(|i| l[i..].to_owned()))
        .unwrap_or_else(|| panic!("{what}: no RESULT line: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a05_two_writer_processes_and_a_lister() {
    if !have_qemu() {
        return;
    }
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    {
        let rt = open_runtime(&home).await;
        let a = rt.create(make_images(tmp.path()), "a").await.unwrap();
        a.clone("b", &CloneOptions::default()).await.unwrap();
    }
    let stop = tmp.path().join("stop");
    let lister = child("lister", &home, stop.to_str().unwrap());
    let w1 = child("writer", &home, "a");
    let w2 = child("writer", &home, "b");
    let r1 = tokio::task::spawn_blocking(move || wait_child(w1, "writer a"));
    let r2 = tokio::task::spawn_blocking(move || wait_child(w2, "writer b"));
    let r1 = bounded("writer a", r1).await.unwrap();
    let r2 = bounded("writer b", r2).await.unwrap();
    std::fs::write(&stop, b"").unwrap();
    let rl = bounded(
        "lister",
        tokio::task::spawn_blocking(move || wait_child(lister, "lister")),
    )
    .await
    .unwrap();
    for r in [&r1, &r2] {
        assert_eq!(r, "RESULT created=100 removed=100 errors=[]");
    }
    assert!(rl.ends_with("errors=[]"), "{rl}");
    let rt = open_runtime(&home).await;
    for n in ["a", "b"] {
        assert!(get(&rt, n)
            .await
            .snapshot()
            .list()
            .await
            .unwrap()
            .is_empty());
    }
    assert_resting(&rt, "A05").await;
    assert_store_consistent(&rt, &home, "A05").await;
    eprintln!(
        "A05: {r1} / {r2} / lister {rl} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Deterministic xorshift for choosing operations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_mixed_operations_over_eight_boxes() {
    if !have_qemu() {
        return;
    }
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let a = rt.create(make_images(tmp.path()), "b0").await.unwrap();
    a.snapshot()
        .create("base", &SnapshotOptions::default())
        .await
        .unwrap();
    let names: Vec<String> = (1..8).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    a.clone_many(&refs, &CloneOptions::default()).await.unwrap();
    for i in 1..8 {
        get(&rt, &format!("b{i}"))
            .await
            .snapshot()
            .create("base", &SnapshotOptions::default())
            .await
            .unwrap();
    }
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let rt = rt.clone();
        let target = format!("b{}", rng.next() % 8);
        let kind = rng.next() % 7;
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let b = get(&rt, &target).await;
            let r = match kind {
                0 => b
                    .snapshot()
                    .create(&format!("m{i}"), &SnapshotOptions::default())
                    .await
                    .map(|_| ()),
                1 => b.snapshot().restore("base").await,
                2 => match b.snapshot().list().await {
                    Ok(l) => match l.iter().find(|s| s.name != "base") {
                        Some(s) => b.snapshot().remove(&s.name).await,
                        None => Ok(()),
                    },
                    Err(e) => Err(e),
                },
                3 => b
                    .clone(&format!("x{i}"), &CloneOptions::default())
                    .await
                    .map(|_| ()),
                4 => b
                    .export(
                        &out.join(format!("e{i}.boxsnap")),
                        &ExportOptions::default(),
                    )
                    .await
                    .map(|_| ()),
                5 => {
                    let opts = CloneOptions {
                        from_snapshot: Some("base".into()),
                        ..Default::default()
                    };
                    b.clone(&format!("y{i}"), &opts).await.map(|_| ())
                }
                _ => rt.list().await.map(|_| ()),
            };
            (kind, r)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match bounded("mixed operation", t).await.unwrap() {
            (_, Ok(())) => ok += 1,
            (_, Err(Error::Busy { .. } | Error::NotFound { .. })) => busy += 1,
            (k, Err(e)) => panic!("operation kind {k}: unexpected error {e}"),
        }
    }
    assert_resting(&rt, "mixed").await;
    assert_store_consistent(&rt, &home, "mixed").await;
    eprintln!(
        "mixed: 64 operations over 8 boxes: {ok} ok, {busy} busy/not found, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
