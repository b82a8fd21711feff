//! SQLite-specific tests: pragmas, migrations, schema-version refusal, foreign keys, corrupt
//! rows, settings, registry, lock timeouts, and a cross-process churn test (case A05).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxlite_api::{
    BoxId, BoxRecord, BoxStatus, CatalogBackend, CatalogOp, DiskSet, Error, PluginConfig,
    SnapshotRecord,
};
use boxlite_catalog_sqlite::{SqliteCatalog, SqliteSettings, DEFAULT_FILE, SCHEMA_VERSION};
use chrono::Utc;
use rusqlite::Connection;

fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("boxlite-sqlite-test-")
        .tempdir()
        .expect("temp dir")
}

fn db(home: &Path) -> PathBuf {
    home.join(DEFAULT_FILE)
}

fn raw(home: &Path) -> Connection {
    let c = Connection::open(db(home)).expect("raw connection");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

fn disks(tag: &str) -> DiskSet {
    DiskSet {
        guest_rootfs: format!("boxes/{tag}/guest-rootfs.qcow2").into(),
        container: format!("boxes/{tag}/disk.qcow2").into(),
    }
}

fn new_box(name: Option<&str>) -> BoxRecord {
    let id = BoxId::generate();
    BoxRecord {
        disks: disks(id.as_str()),
        id,
        name: name.map(str::to_owned),
        status: BoxStatus::Stopped,
        created_at: Utc::now(),
        image: "alpine.qcow2".into(),
        storage: "qcow2".into(),
    }
}

fn snap(b: &BoxRecord, name: &str) -> SnapshotRecord {
    SnapshotRecord {
        box_id: b.id.clone(),
        name: name.into(),
        created_at: Utc::now(),
        disks: disks(&format!("{}/snapshots/{name}", b.id)),
        guest_disk_bytes: 1,
        container_disk_bytes: 2,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn wal_mode_synchronous_and_foreign_keys() {
    let h = home();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    assert_eq!(cat.path(), db(h.path()));
    let c = raw(h.path());
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(h.path().join("boxlite.db-wal").exists() || h.path().join("boxlite.db").exists());

    // Foreign keys: the schema declares them, and a connection that enforces them (as every
    // catalog connection does) refuses orphans.
    c.pragma_update(None, "foreign_keys", true).unwrap();
    let e = c
        .execute(
            "INSERT INTO box_snapshot (box_id, name, created_at, guest_rootfs, container, \
             guest_disk_bytes, container_disk_bytes) VALUES ('01J00000000000000000000000', \
             'v1', '2024-01-01T00:00:00.000000000Z', 'a', 'b', 0, 0)",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
    let e = c
        .execute(
            "INSERT INTO box_state (id, status, guest_rootfs, container) \
             VALUES ('01J00000000000000000000000', 'stopped', 'a', 'b')",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("FOREIGN KEY"), "{e}");

    // box_config rows are immutable.
    rt().block_on(async {
        let b = new_box(Some("web"));
        cat.apply(vec![CatalogOp::InsertBox(b.clone())])
            .await
            .unwrap();
        let e = c
            .execute("UPDATE box_config SET name = 'x'", [])
            .unwrap_err();
        assert!(e.to_string().contains("immutable"), "{e}");
        // The catalog enforces the cascade itself (its connections have foreign_keys=ON).
        cat.apply(vec![CatalogOp::InsertSnapshot(snap(&b, "v1"))])
            .await
            .unwrap();
        cat.apply(vec![CatalogOp::RemoveBox {
            box_id: b.id.clone(),
        }])
        .await
        .unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM box_snapshot", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM box_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    });
}

#[test]
fn migrates_an_empty_file_and_an_existing_catalog_is_left_alone() {
    let h = home();
    std::fs::write(db(h.path()), b"").unwrap();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt().block_on(cat.schema_version()).unwrap(), SCHEMA_VERSION);
    let c = raw(h.path());
    let mut tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.retain(|t| !t.starts_with("sqlite_"));
    assert_eq!(
        tables,
        [
            "box_config",
            "box_snapshot",
            "box_state",
            "journal",
            "schema_version"
        ]
    );
    let v: i64 = c
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION as i64);
    drop(cat);
    // Reopening runs no migration and keeps the single version row.
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt().block_on(cat.schema_version()).unwrap(), SCHEMA_VERSION);
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn refuses_a_newer_schema_version() {
    let h = home();
    drop(SqliteCatalog::open_default(h.path()).unwrap());
    let newer = SCHEMA_VERSION + 1;
    raw(h.path())
        .execute("UPDATE schema_version SET version = ?1", [newer])
        .unwrap();
    let e = SqliteCatalog::open_default(h.path()).unwrap_err();
    match &e {
        Error::Catalog {
            backend, detail, ..
        } => {
            assert_eq!(backend, "sqlite");
            assert!(detail.contains("upgrade boxlite"), "{detail}");
            assert!(detail.contains(&newer.to_string()), "{detail}");
            assert!(
                detail.contains(&db(h.path()).display().to_string()),
                "{detail}"
            );
        }
        other => panic!("expected Error::Catalog, got {other:?}"),
    }
    // Nothing was downgraded.
    let v: i64 = raw(h.path())
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, newer as i64);
}

#[test]
fn not_a_database_is_corrupt() {
    let h = home();
    std::fs::write(db(h.path()), vec![0x5a; 8192]).unwrap();
    match SqliteCatalog::open_default(h.path()).unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(path, db(h.path())),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn corrupt_rows_are_error_corrupt_with_the_db_path() {
    let h = home();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    let rt = rt();
    let b = new_box(Some("web"));
    let other = new_box(Some("ok"));
    rt.block_on(cat.apply(vec![
        CatalogOp::InsertBox(b.clone()),
        CatalogOp::InsertBox(other.clone()),
        CatalogOp::InsertSnapshot(snap(&b, "v1")),
    ]))
    .unwrap();
    let c = raw(h.path());
    let expect_corrupt = |what: &str, r: boxlite_api::Result<()>, needle: &str| match r {
        Err(Error::Corrupt { path, detail }) => {
            assert_eq!(path, db(h.path()), "{what}");
            assert!(detail.contains(needle), "{what}: {detail}");
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    };

    // Bad status string.
    c.execute(
        "UPDATE box_state SET status = 'frozen' WHERE id = ?1",
        [b.id.as_str()],
    )
    .unwrap();
    expect_corrupt(
        "get_box",
        rt.block_on(cat.get_box(&b.id)).map(drop),
        "frozen",
    );
    expect_corrupt(
        "find_box",
        rt.block_on(cat.find_box("web")).map(drop),
        "frozen",
    );
    expect_corrupt(
        "list_boxes",
        rt.block_on(cat.list_boxes()).map(drop),
        "frozen",
    );
    // A CAS that has to report the actual status also reports the corruption.
    expect_corrupt(
        "SetBoxStatus",
        rt.block_on(cat.apply(vec![CatalogOp::SetBoxStatus {
            box_id: b.id.clone(),
            expected: BoxStatus::Stopped,
            new: BoxStatus::Running,
        }])),
        "frozen",
    );
    // Other rows are still readable.
    assert_eq!(
        rt.block_on(cat.get_box(&other.id)).unwrap(),
        Some(other.clone())
    );
    c.execute("UPDATE box_state SET status = 'stopped'", [])
        .unwrap();

    // Bad date and negative size in a snapshot.
    c.execute("UPDATE box_snapshot SET created_at = 'yesterday'", [])
        .unwrap();
    expect_corrupt(
        "list_snapshots",
        rt.block_on(cat.list_snapshots(&b.id)).map(drop),
        "yesterday",
    );
    // The CHECK constraint refuses this; a damaged file or another tool may not.
    c.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    c.execute(
        "UPDATE box_snapshot SET created_at = '2024-01-01T00:00:00.000000000Z', \
         guest_disk_bytes = -5",
        [],
    )
    .unwrap();
    expect_corrupt(
        "get_snapshot",
        rt.block_on(cat.get_snapshot(&b.id, "v1")).map(drop),
        "guest_disk_bytes",
    );
    c.execute("UPDATE box_snapshot SET guest_disk_bytes = 5", [])
        .unwrap();

    // Bad id.
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO box_config (id, seq, name, created_at, image, storage)
           VALUES ('../etc', 99, NULL, '2024-01-01T00:00:00.000000000Z', 'i', 's');
         INSERT INTO box_state (id, status, guest_rootfs, container)
           VALUES ('../etc', 'stopped', 'a', 'b');",
    )
    .unwrap();
    expect_corrupt(
        "list_boxes (bad id)",
        rt.block_on(cat.list_boxes()).map(drop),
        "../etc",
    );
    c.execute("DELETE FROM box_config WHERE id = '../etc'", [])
        .unwrap();
    c.execute("DELETE FROM box_state WHERE id = '../etc'", [])
        .unwrap();

    // A box without its state row.
    c.execute("DELETE FROM box_state WHERE id = ?1", [other.id.as_str()])
        .unwrap();
    expect_corrupt(
        "get_box (no state row)",
        rt.block_on(cat.get_box(&other.id)).map(drop),
        "box_state",
    );

    // Bad JSON in the journal.
    c.execute(
        "INSERT INTO journal (id, operation, box_id, prior_status, owner_pid, started_at, staged) \
         VALUES ('j', 'op', NULL, NULL, 1, '2024-01-01T00:00:00.000000000Z', '{not json')",
        [],
    )
    .unwrap();
    expect_corrupt(
        "list_journal",
        rt.block_on(cat.list_journal()).map(drop),
        "staged",
    );
}

#[test]
fn home_must_exist_and_is_not_created() {
    let h = home();
    let missing = h.path().join("nope");
    match SqliteCatalog::open_default(&missing).unwrap_err() {
        Error::Catalog { detail, .. } => {
            assert!(detail.contains("does not exist"), "{detail}");
            assert!(detail.contains(&missing.display().to_string()), "{detail}");
        }
        other => panic!("expected Catalog, got {other:?}"),
    }
    assert!(!missing.exists());
}

#[test]
fn settings_are_parsed_strictly() {
    let h = home();
    let cfg = |s: &str| PluginConfig {
        home: h.path().to_path_buf(),
        settings: toml::from_str(s).unwrap(),
    };
    let open_err = |s: &str| match SqliteCatalog::from_config(&cfg(s)) {
        Ok(_) => panic!("settings {s:?} were accepted"),
        Err(e) => e,
    };
    let e = open_err("busy_timout_ms = 5");
    assert!(
        matches!(&e, Error::Config { detail, .. } if detail.contains("busy_timout_ms")),
        "{e:?}"
    );
    let e = open_err("busy_timeout_ms = \"fast\"");
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    let e = open_err("file = \"../elsewhere.db\"");
    assert!(
        matches!(&e, Error::Config { detail, .. } if detail.contains("plain file name")),
        "{e:?}"
    );

    let cat =
        SqliteCatalog::from_config(&cfg("file = \"other.db\"\nbusy_timeout_ms = 250")).unwrap();
    assert_eq!(cat.name(), "sqlite");
    assert!(h.path().join("other.db").exists());
    assert!(!h.path().join(DEFAULT_FILE).exists());
    assert_eq!(
        SqliteSettings::default(),
        SqliteSettings {
            busy_timeout_ms: 10_000,
            file: "boxlite.db".into()
        }
    );
}

#[test]
fn registered_as_sqlite() {
    let names: Vec<_> = boxlite_api::registry::registered(boxlite_api::PluginKind::Catalog)
        .iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"sqlite"), "{names:?}");
    let h = home();
    let cat = boxlite_api::registry::catalog(
        "sqlite",
        &PluginConfig {
            home: h.path().to_path_buf(),
            settings: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(cat.name(), "sqlite");
    assert!(db(h.path()).exists());
}

#[test]
fn non_utf8_paths_are_refused_not_mangled() {
    use std::os::unix::ffi::OsStrExt;
    let h = home();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    let rt = rt();
    let mut b = new_box(Some("web"));
    b.disks.container = PathBuf::from(std::ffi::OsStr::from_bytes(b"boxes/\xff/disk.qcow2"));
    match rt.block_on(cat.apply(vec![CatalogOp::InsertBox(b.clone())])) {
        Err(Error::Unsupported {
            path: Some(p),
            what,
            ..
        }) => {
            assert_eq!(p, b.disks.container);
            assert!(what.contains("UTF-8"), "{what}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(rt.block_on(cat.list_boxes()).unwrap(), vec![]);
}

#[test]
fn a_lock_held_past_the_timeout_is_a_clear_catalog_error_and_reads_go_on() {
    let h = home();
    let settings = SqliteSettings {
        busy_timeout_ms: 300,
        ..Default::default()
    };
    let cat = SqliteCatalog::open(h.path(), &settings).unwrap();
    let rt = rt();
    let b = new_box(Some("web"));
    rt.block_on(cat.apply(vec![CatalogOp::InsertBox(b.clone())]))
        .unwrap();

    // Another "process" holds the write lock.
    let holder = raw(h.path());
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    // Reads do not wait for the writer (WAL): were they to wait, they would fail with the
    // 300 ms timeout, since the lock is held until we release it below.
    assert_eq!(rt.block_on(cat.get_box(&b.id)).unwrap(), Some(b.clone()));
    assert_eq!(rt.block_on(cat.list_boxes()).unwrap(), vec![b.clone()]);

    let t = Instant::now();
    let e = rt
        .block_on(cat.apply(vec![CatalogOp::InsertSnapshot(snap(&b, "v1"))]))
        .unwrap_err();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "waited only {:?}",
        t.elapsed()
    );
    match &e {
        Error::Catalog {
            backend, detail, ..
        } => {
            assert_eq!(backend, "sqlite");
            assert!(detail.contains("busy_timeout_ms = 300"), "{detail}");
            assert!(
                detail.contains(&db(h.path()).display().to_string()),
                "{detail}"
            );
            assert!(!detail.contains("database is locked"), "{detail}");
        }
        other => panic!("expected Catalog, got {other:?}"),
    }
    holder.execute_batch("ROLLBACK").unwrap();

    // Within the timeout, the writer just waits.
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        holder.execute_batch("COMMIT").unwrap();
    });
    rt.block_on(cat.apply(vec![CatalogOp::InsertSnapshot(snap(&b, "v1"))]))
        .unwrap();
    release.join().unwrap();
    assert_eq!(rt.block_on(cat.list_snapshots(&b.id)).unwrap().len(), 1);
}

#[test]
fn catalog_works_without_a_tokio_runtime_in_the_calling_thread() {
    // The async methods fall back to running inline when not polled inside tokio.
    let h = home();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    let b = new_box(None);
    let id = b.id.clone();
    let fut = async {
        cat.apply(vec![CatalogOp::InsertBox(b.clone())]).await?;
        cat.get_box(&b.id).await
    };
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let got = loop {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            break r.unwrap();
        }
    };
    assert_eq!(got.map(|g| g.id), Some(id));
}

// ---------------------------------------------------------------------------------------------
// A05: two processes each create and remove 100 snapshots on different boxes of one home while
// a third lists in a loop. Children are this test binary re-executed with A05_ROLE set.
// ---------------------------------------------------------------------------------------------

const A05_SNAPSHOTS: usize = 100;
const ROLE: &str = "BOXLITE_A05_ROLE";
const HOME: &str = "BOXLITE_A05_HOME";
const BOX_NAME: &str = "BOXLITE_A05_BOX";

/// The child side of [`a05_two_processes_churn_snapshots_while_a_third_lists`]. Does nothing
/// when run as a normal test.
#[test]
fn a05_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let home = PathBuf::from(std::env::var(HOME).expect("A05 home"));
    let rt = rt();
    rt.block_on(async move {
        let cat: Arc<dyn CatalogBackend> = Arc::new(
            SqliteCatalog::open_default(&home).unwrap_or_else(|e| panic!("A05 open: {e}")),
        );
        match role.as_str() {
            "writer" => {
                let name = std::env::var(BOX_NAME).expect("A05 box");
                let b = new_box(Some(&name));
                let mut errors = Vec::new();
                let (mut created, mut removed) = (0, 0);
                let note = |errors: &mut Vec<String>, e: Error| errors.push(e.to_string());
                if let Err(e) = cat.apply(vec![CatalogOp::InsertBox(b.clone())]).await {
                    note(&mut errors, e);
                }
                for i in 0..A05_SNAPSHOTS {
                    // The runtime's shape of a snapshot commit: CAS, insert, CAS back.
                    let r = cat
                        .apply(vec![
                            CatalogOp::SetBoxStatus {
                                box_id: b.id.clone(),
                                expected: BoxStatus::Stopped,
                                new: BoxStatus::Snapshotting,
                            },
                            CatalogOp::InsertSnapshot(snap(&b, &format!("s{i:03}"))),
                            CatalogOp::SetBoxStatus {
                                box_id: b.id.clone(),
                                expected: BoxStatus::Snapshotting,
                                new: BoxStatus::Stopped,
                            },
                        ])
                        .await;
                    match r {
                        Ok(()) => created += 1,
                        Err(e) => note(&mut errors, e),
                    }
                }
                for i in 0..A05_SNAPSHOTS {
                    match cat
                        .apply(vec![CatalogOp::RemoveSnapshot {
                            box_id: b.id.clone(),
                            name: format!("s{i:03}"),
                        }])
                        .await
                    {
                        Ok(()) => removed += 1,
                        Err(e) => note(&mut errors, e),
                    }
                }
                println!(
                    "A05 writer {name} created={created} removed={removed} errors={}",
                    errors.len()
                );
                for e in &errors {
                    println!("A05 error: {e}");
                }
            }
            "lister" => {
                let stop = home.join("a05.stop");
                let deadline = Instant::now() + Duration::from_secs(60);
                let (mut rounds, mut errors, mut max_seen) = (0u64, Vec::new(), 0usize);
                while !stop.exists() && Instant::now() < deadline {
                    match cat.list_boxes().await {
                        Ok(boxes) => {
                            for b in boxes {
                                match cat.list_snapshots(&b.id).await {
                                    Ok(s) => max_seen = max_seen.max(s.len()),
                                    Err(e) => errors.push(e.to_string()),
                                }
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    if let Err(e) = cat.list_all_snapshots().await {
                        errors.push(e.to_string());
                    }
                    rounds += 1;
                }
                println!(
                    "A05 lister rounds={rounds} max_seen={max_seen} errors={}",
                    errors.len()
                );
                for e in &errors {
                    println!("A05 error: {e}");
                }
            }
            other => panic!("unknown A05 role {other}"),
        }
    });
}

/// The child's result line (libtest may print "test a05_child ... " before it on the same line).
fn result_line(stdout: &str, prefix: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.find(prefix).map(|i| l[i..].to_owned()))
}

#[test]
fn a05_two_processes_churn_snapshots_while_a_third_lists() {
    let h = home();
    let exe = std::env::current_exe().expect("test binary path");
    let spawn = |role: &str, box_name: &str| {
        Command::new(&exe)
            .args(["--exact", "a05_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(HOME, h.path())
            .env(BOX_NAME, box_name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn A05 child")
    };
    let start = Instant::now();
    // All three open the (not yet existing) catalog at the same time: migrations race too.
    let lister = spawn("lister", "");
    let w1 = spawn("writer", "a05-one");
    let w2 = spawn("writer", "a05-two");
    let mut writer_lines = Vec::new();
    for (name, w) in [("a05-one", w1), ("a05-two", w2)] {
        let out = w.wait_with_output().expect("wait for writer");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "writer {name} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = result_line(&stdout, "A05 writer")
            .unwrap_or_else(|| panic!("no result line from writer {name}: {stdout}"));
        assert_eq!(
            line,
            format!("A05 writer {name} created={A05_SNAPSHOTS} removed={A05_SNAPSHOTS} errors=0"),
            "{stdout}"
        );
        assert!(!stdout.contains("database is locked"), "{stdout}");
        writer_lines.push(line);
    }
    let writers_done = start.elapsed();
    std::fs::write(h.path().join("a05.stop"), b"").unwrap();
    let out = lister.wait_with_output().expect("wait for lister");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lister failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = result_line(&stdout, "A05 lister")
        .unwrap_or_else(|| panic!("no result line from the lister: {stdout}"));
    assert!(line.ends_with("errors=0"), "{stdout}");
    assert!(!stdout.contains("database is locked"), "{stdout}");

    // Every create and remove is accounted for in the final state.
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    let rt = rt();
    let boxes = rt.block_on(cat.list_boxes()).unwrap();
    let mut names: Vec<_> = boxes.iter().filter_map(|b| b.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["a05-one", "a05-two"]);
    assert!(boxes.iter().all(|b| b.status == BoxStatus::Stopped));
    assert_eq!(rt.block_on(cat.list_all_snapshots()).unwrap(), vec![]);
    let commits = 2 * (1 + 2 * A05_SNAPSHOTS);
    eprintln!(
        "A05: {commits} write transactions from 2 processes in {:.2?} ({:.0} commits/s) \
         while the lister ran: {line}",
        writers_done,
        commits as f64 / writers_done.as_secs_f64()
    );
}

/// A new catalog file and its `-wal` and `-shm` files are 0600 (the umask, usually 022, is not
/// what decides); an existing file keeps its mode and SQLite gives it to `-wal`/`-shm`.
#[test]
fn new_database_wal_and_shm_are_0600_an_existing_file_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let h = home();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    rt().block_on(cat.apply(vec![CatalogOp::InsertBox(new_box(Some("web")))]))
        .unwrap();
    for f in ["boxlite.db", "boxlite.db-wal", "boxlite.db-shm"] {
        assert_eq!(mode(&h.path().join(f)), 0o600, "{f}");
    }
    drop(cat);

    let h = home();
    std::fs::write(db(h.path()), b"").unwrap();
    std::fs::set_permissions(db(h.path()), PermissionsExt::from_mode(0o640)).unwrap();
    let cat = SqliteCatalog::open_default(h.path()).unwrap();
    rt().block_on(cat.apply(vec![CatalogOp::InsertBox(new_box(Some("web")))]))
        .unwrap();
    for f in ["boxlite.db", "boxlite.db-wal", "boxlite.db-shm"] {
        assert_eq!(mode(&h.path().join(f)), 0o640, "{f}");
    }
}
