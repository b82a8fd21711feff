//! redb-specific tests: refusal while another process holds the file, sharing within one
//! process, schema-version refusal, corrupt records and files, settings, registry, home and
//! UTF-8 checks, and use without a tokio runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxlite_api::{
    BoxId, BoxRecord, BoxStatus, CatalogBackend, CatalogOp, DiskSet, Error, JournalEntry,
    PluginConfig, SnapshotRecord,
};
use boxlite_catalog_redb::{RedbCatalog, RedbSettings, DEFAULT_FILE, SCHEMA_VERSION};
use chrono::Utc;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

// The on-disk layout (see src/schema.rs), for poking at the file directly.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("boxes");
const BOX_NAMES: TableDefinition<&str, &str> = TableDefinition::new("box_names");
const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");
const SNAPSHOT_NAMES: TableDefinition<(&str, &str), u64> = TableDefinition::new("snapshot_names");
const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");

fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("boxlite-redb-test-")
        .tempdir()
        .expect("temp dir")
}

fn db(home: &Path) -> PathBuf {
    std::fs::canonicalize(home).unwrap().join(DEFAULT_FILE)
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

/// Open the file with redb directly (the catalog must be closed) and run `f` in a write
/// transaction.
fn poke(home: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let raw = Database::open(db(home)).expect("raw open");
    let tx = raw.begin_write().unwrap();
    f(&tx);
    tx.commit().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Another process holds the file. The holder is this test binary re-executed with HOLD_HOME set.
// ---------------------------------------------------------------------------------------------

const HOLD_HOME: &str = "BOXLITE_REDB_HOLD_HOME";

/// The child side of [`a_second_process_is_refused_at_once_with_a_clear_error`]: opens the
/// catalog, inserts a box, says "ready" and holds the file until told to release it (at most
/// 60 s). Does nothing when run as a normal test.
#[test]
fn hold_child() {
    let Ok(home) = std::env::var(HOLD_HOME) else {
        return;
    };
    let home = PathBuf::from(home);
    let cat = RedbCatalog::open_default(&home).unwrap_or_else(|e| panic!("holder open: {e}"));
    rt().block_on(cat.apply(vec![CatalogOp::InsertBox(new_box(Some("held")))]))
        .unwrap_or_else(|e| panic!("holder insert: {e}"));
    std::fs::write(home.join("ready"), std::process::id().to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !home.join("release").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(cat);
}

#[test]
fn a_second_process_is_refused_at_once_with_a_clear_error() {
    let h = home();
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", "hold_child", "--nocapture", "--test-threads=1"])
        .env(HOLD_HOME, h.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let ready = h.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the holder exited early: {status}");
        }
        assert!(Instant::now() < deadline, "the holder never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(&ready).unwrap();

    let t = Instant::now();
    let e = RedbCatalog::open_default(h.path()).unwrap_err();
    let took = t.elapsed();
    let check = |e: &Error| match e {
        Error::Catalog {
            backend, detail, ..
        } => {
            assert_eq!(backend, "redb");
            assert!(
                detail.contains(&db(h.path()).display().to_string()),
                "{detail}"
            );
            assert!(detail.contains("another process"), "{detail}");
            assert!(detail.contains("single-process"), "{detail}");
            if Path::new("/proc/locks").exists() {
                assert!(detail.contains(&format!("pid {pid}")), "{detail}");
            }
        }
        other => panic!("expected Error::Catalog, got {other:?}"),
    };
    eprintln!("refusal after {took:?}: {e}");
    check(&e);
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    // The same through the registry.
    let cfg = PluginConfig {
        home: h.path().to_path_buf(),
        settings: Default::default(),
    };
    match boxlite_api::registry::catalog("redb", &cfg) {
        Ok(_) => panic!("the registry opened a held catalog"),
        Err(e) => check(&e),
    }

    std::fs::write(h.path().join("release"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "holder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once released, this process opens it and sees the holder's writes.
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    let got = rt().block_on(cat.find_box("held")).unwrap();
    assert_eq!(got.map(|b| b.name), Some(Some("held".to_owned())));
}

#[test]
fn opens_in_one_process_share_the_database() {
    let h = home();
    let a = RedbCatalog::open_default(h.path()).unwrap();
    // Through another spelling of the same home, too.
    let b = RedbCatalog::open_default(&h.path().join(".")).unwrap();
    assert_eq!(a.path(), b.path());
    let rt = rt();
    let x = new_box(Some("web"));
    rt.block_on(a.apply(vec![CatalogOp::InsertBox(x.clone())]))
        .unwrap();
    assert_eq!(rt.block_on(b.get_box(&x.id)).unwrap(), Some(x.clone()));
    drop(a);
    // The remaining handle still works; a new open after all handles are gone reopens.
    assert_eq!(rt.block_on(b.list_boxes()).unwrap(), vec![x.clone()]);
    drop(b);
    // Open/drop races between threads: every open succeeds.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let home = h.path().to_path_buf();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let c = RedbCatalog::open_default(&home).unwrap();
                    drop(c);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = RedbCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt.block_on(c.list_boxes()).unwrap(), vec![x]);
}

// ---------------------------------------------------------------------------------------------
// Schema version
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_file_is_at_the_current_schema_version_and_reopening_keeps_it() {
    let h = home();
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt().block_on(cat.schema_version()).unwrap(), SCHEMA_VERSION);
    drop(cat);
    let raw = Database::open(db(h.path())).unwrap();
    let tx = raw.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    assert_eq!(
        meta.get("schema_version").unwrap().map(|g| g.value()),
        Some(u64::from(SCHEMA_VERSION))
    );
    for name in [
        "boxes",
        "box_names",
        "snapshots",
        "snapshot_names",
        "journal",
    ] {
        let found = tx
            .list_tables()
            .unwrap()
            .any(|t| redb::TableHandle::name(&t) == name);
        assert!(found, "table {name} is missing");
    }
    drop((meta, tx, raw));
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt().block_on(cat.schema_version()).unwrap(), SCHEMA_VERSION);
}

#[test]
fn refuses_a_newer_schema_version() {
    let h = home();
    drop(RedbCatalog::open_default(h.path()).unwrap());
    let newer = u64::from(SCHEMA_VERSION) + 1;
    poke(h.path(), |tx| {
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", newer)
            .unwrap();
    });
    let e = RedbCatalog::open_default(h.path()).unwrap_err();
    match &e {
        Error::Catalog {
            backend, detail, ..
        } => {
            assert_eq!(backend, "redb");
            assert!(detail.contains("upgrade boxlite"), "{detail}");
            assert!(detail.contains(&newer.to_string()), "{detail}");
            assert!(
                detail.contains(&db(h.path()).display().to_string()),
                "{detail}"
            );
        }
        other => panic!("expected Error::Catalog, got {other:?}"),
    }
    // Nothing was downgraded, and the refused open released the file.
    let raw = Database::open(db(h.path())).unwrap();
    let tx = raw.begin_read().unwrap();
    let v = tx
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .map(|g| g.value());
    assert_eq!(v, Some(newer));
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

#[test]
fn not_a_database_is_corrupt() {
    let h = home();
    std::fs::write(h.path().join(DEFAULT_FILE), vec![0x5a; 8192]).unwrap();
    match RedbCatalog::open_default(h.path()).unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(path, db(h.path())),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A short file too.
    std::fs::write(h.path().join(DEFAULT_FILE), b"redb?").unwrap();
    match RedbCatalog::open_default(h.path()).unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(path, db(h.path())),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_table_of_the_wrong_type_is_corrupt() {
    let h = home();
    drop(RedbCatalog::open_default(h.path()).unwrap());
    poke(h.path(), |tx| {
        tx.delete_table(BOXES).unwrap();
        let wrong: TableDefinition<u64, u64> = TableDefinition::new("boxes");
        tx.open_table(wrong).unwrap().insert(1, 2).unwrap();
    });
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    match rt().block_on(cat.list_boxes()) {
        Err(Error::Corrupt { path, detail }) => {
            assert_eq!(path, db(h.path()));
            assert!(detail.contains("boxes"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn corrupt_records_are_error_corrupt_with_the_db_path() {
    let h = home();
    let b = new_box(Some("web"));
    let other = new_box(Some("ok"));
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        rt().block_on(cat.apply(vec![
            CatalogOp::InsertBox(b.clone()),
            CatalogOp::InsertBox(other.clone()),
            CatalogOp::InsertSnapshot(snap(&b, "v1")),
        ]))
        .unwrap();
    }
    let expect_corrupt = |what: &str, r: boxlite_api::Result<()>, needle: &str| match r {
        Err(Error::Corrupt { path, detail }) => {
            assert_eq!(path, db(h.path()), "{what}");
            assert!(detail.contains(needle), "{what}: {detail}");
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    };
    let edit_box = |id: &BoxId, f: &dyn Fn(&mut serde_json::Value)| {
        poke(h.path(), |tx| {
            let mut t = tx.open_table(BOXES).unwrap();
            let bytes = t.get(id.as_str()).unwrap().unwrap().value().to_vec();
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            f(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            t.insert(id.as_str(), bytes.as_slice()).unwrap();
        })
    };
    let rt = rt();

    // Bad status string.
    edit_box(&b.id, &|v| v["status"] = "frozen".into());
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
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
        // A CAS that has to read the status reports the corruption, and changes nothing.
        expect_corrupt(
            "SetBoxStatus",
            rt.block_on(cat.apply(vec![
                CatalogOp::SetBoxStatus {
                    box_id: other.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Running,
                },
                CatalogOp::SetBoxStatus {
                    box_id: b.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Running,
                },
            ])),
            "frozen",
        );
        // Other records are still readable, and unchanged.
        assert_eq!(
            rt.block_on(cat.get_box(&other.id)).unwrap(),
            Some(other.clone())
        );
    }
    edit_box(&b.id, &|v| v["status"] = "stopped".into());

    // Bad date, negative size and garbage in a snapshot.
    let edit_snap = |f: &dyn Fn(&mut serde_json::Value)| {
        poke(h.path(), |tx| {
            let mut t = tx.open_table(SNAPSHOTS).unwrap();
            let (key, bytes) = {
                let (k, v) = t.iter().unwrap().next().unwrap().unwrap();
                let (id, seq) = k.value();
                ((id.to_owned(), seq), v.value().to_vec())
            };
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            f(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            t.insert((key.0.as_str(), key.1), bytes.as_slice()).unwrap();
        })
    };
    edit_snap(&|v| v["created_at"] = "yesterday".into());
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        expect_corrupt(
            "list_snapshots",
            rt.block_on(cat.list_snapshots(&b.id)).map(drop),
            "yesterday",
        );
    }
    edit_snap(&|v| {
        v["created_at"] = "2024-01-01T00:00:00Z".into();
        v["guest_disk_bytes"] = (-5).into();
    });
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        expect_corrupt(
            "get_snapshot",
            rt.block_on(cat.get_snapshot(&b.id, "v1")).map(drop),
            "-5",
        );
        expect_corrupt(
            "list_all_snapshots",
            rt.block_on(cat.list_all_snapshots()).map(drop),
            "snapshots",
        );
    }
    edit_snap(&|v| v["guest_disk_bytes"] = 5.into());

    // A record that is not JSON at all, and a bad id.
    poke(h.path(), |tx| {
        tx.open_table(BOXES)
            .unwrap()
            .insert(other.id.as_str(), &b"\x00\xffnot json"[..])
            .unwrap();
        let mut row: serde_json::Value = {
            let t = tx.open_table(BOXES).unwrap();
            let g = t.get(b.id.as_str()).unwrap().unwrap();
            serde_json::from_slice(g.value()).unwrap()
        };
        row["id"] = "../etc".into();
        tx.open_table(BOXES)
            .unwrap()
            .insert("../etc", serde_json::to_vec(&row).unwrap().as_slice())
            .unwrap();
    });
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        expect_corrupt(
            "get_box (not JSON)",
            rt.block_on(cat.get_box(&other.id)).map(drop),
            "not a valid record",
        );
        expect_corrupt(
            "list_boxes (bad id)",
            rt.block_on(cat.list_boxes()).map(drop),
            "boxes[",
        );
        // A damaged box can still be removed (names and snapshots go with it).
        rt.block_on(cat.apply(vec![CatalogOp::RemoveBox {
            box_id: other.id.clone(),
        }]))
        .unwrap();
        assert_eq!(rt.block_on(cat.find_box("ok")).unwrap(), None);
    }
    poke(h.path(), |tx| {
        tx.open_table(BOXES).unwrap().remove("../etc").unwrap();
    });

    // A name index entry pointing nowhere.
    poke(h.path(), |tx| {
        tx.open_table(BOX_NAMES)
            .unwrap()
            .insert("ghost", "01J00000000000000000000000")
            .unwrap();
        tx.open_table(SNAPSHOT_NAMES)
            .unwrap()
            .insert((b.id.as_str(), "ghost"), 999_999)
            .unwrap();
    });
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        expect_corrupt(
            "find_box (dangling name)",
            rt.block_on(cat.find_box("ghost")).map(drop),
            "does not exist",
        );
        expect_corrupt(
            "get_snapshot (dangling name)",
            rt.block_on(cat.get_snapshot(&b.id, "ghost")).map(drop),
            "does not exist",
        );
        // The good records are intact.
        assert_eq!(rt.block_on(cat.list_boxes()).unwrap().len(), 1);
        assert_eq!(rt.block_on(cat.list_snapshots(&b.id)).unwrap().len(), 1);
    }

    // Bad journal record.
    poke(h.path(), |tx| {
        tx.open_table(JOURNAL)
            .unwrap()
            .insert("j", &b"{\"staged\": 3}"[..])
            .unwrap();
    });
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    expect_corrupt(
        "list_journal",
        rt.block_on(cat.list_journal()).map(drop),
        "journal[j]",
    );
}

#[test]
fn remove_box_cascades_on_disk_and_sequence_survives_reopen() {
    let h = home();
    let rt = rt();
    let b = new_box(Some("web"));
    let keep = new_box(None);
    let t = Utc::now();
    let tied = |name: &str| {
        let mut s = snap(&b, name);
        s.created_at = t;
        s
    };
    {
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        rt.block_on(cat.apply(vec![
            CatalogOp::InsertBox(b.clone()),
            CatalogOp::InsertBox(keep.clone()),
            CatalogOp::InsertSnapshot(tied("z")),
            CatalogOp::InsertSnapshot(snap(&keep, "k")),
        ]))
        .unwrap();
    }
    {
        // Insertion order of ties continues across a reopen (the counter is persisted).
        let cat = RedbCatalog::open_default(h.path()).unwrap();
        rt.block_on(cat.apply(vec![CatalogOp::InsertSnapshot(tied("a"))]))
            .unwrap();
        let names: Vec<_> = rt
            .block_on(cat.list_snapshots(&b.id))
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["z", "a"]);
        rt.block_on(cat.apply(vec![CatalogOp::RemoveBox {
            box_id: b.id.clone(),
        }]))
        .unwrap();
    }
    let raw = Database::open(db(h.path())).unwrap();
    let tx = raw.begin_read().unwrap();
    let snaps: Vec<String> = tx
        .open_table(SNAPSHOTS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value().0.to_owned())
        .collect();
    assert_eq!(snaps, [keep.id.to_string()]);
    let names: Vec<(String, String)> = tx
        .open_table(SNAPSHOT_NAMES)
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let (k, _) = r.unwrap();
            let (a, b) = k.value();
            (a.to_owned(), b.to_owned())
        })
        .collect();
    assert_eq!(names, [(keep.id.to_string(), "k".to_owned())]);
    assert_eq!(tx.open_table(BOX_NAMES).unwrap().len().unwrap(), 0);
    assert_eq!(tx.open_table(BOXES).unwrap().len().unwrap(), 1);
    assert!(
        tx.open_table(META)
            .unwrap()
            .get("next_seq")
            .unwrap()
            .unwrap()
            .value()
            >= 6
    );
}

// ---------------------------------------------------------------------------------------------
// Settings, registry, home, paths, runtime-less use
// ---------------------------------------------------------------------------------------------

#[test]
fn home_must_exist_and_is_not_created() {
    let h = home();
    let missing = h.path().join("nope");
    match RedbCatalog::open_default(&missing).unwrap_err() {
        Error::Catalog { detail, .. } => {
            assert!(detail.contains("does not exist"), "{detail}");
            assert!(detail.contains(&missing.display().to_string()), "{detail}");
        }
        other => panic!("expected Catalog, got {other:?}"),
    }
    assert!(!missing.exists());
    let file = h.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    match RedbCatalog::open_default(&file).unwrap_err() {
        Error::Catalog { detail, .. } => assert!(detail.contains("not a directory"), "{detail}"),
        other => panic!("expected Catalog, got {other:?}"),
    }
}

#[test]
fn settings_are_parsed_strictly() {
    let h = home();
    let cfg = |s: &str| PluginConfig {
        home: h.path().to_path_buf(),
        settings: toml::from_str(s).unwrap(),
    };
    let open_err = |s: &str| match RedbCatalog::from_config(&cfg(s)) {
        Ok(_) => panic!("settings {s:?} were accepted"),
        Err(e) => e,
    };
    let e = open_err("fiel = \"x.redb\"");
    assert!(
        matches!(&e, Error::Config { detail, .. } if detail.contains("fiel")),
        "{e:?}"
    );
    let e = open_err("busy_timeout_ms = 5");
    assert!(
        matches!(&e, Error::Config { detail, .. } if detail.contains("busy_timeout_ms")),
        "{e:?}"
    );
    let e = open_err("file = 3");
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    for bad in ["../elsewhere.redb", "", "a/b", ".."] {
        let e = open_err(&format!("file = {bad:?}"));
        assert!(
            matches!(&e, Error::Config { detail, .. } if detail.contains("plain file name")),
            "{bad}: {e:?}"
        );
    }
    let cat = RedbCatalog::from_config(&cfg("file = \"other.redb\"")).unwrap();
    assert_eq!(cat.name(), "redb");
    assert!(h.path().join("other.redb").exists());
    assert!(!h.path().join(DEFAULT_FILE).exists());
    assert_eq!(
        RedbSettings::default(),
        RedbSettings {
            file: "boxlite.redb".into()
        }
    );
}

#[test]
fn registered_as_redb() {
    let names: Vec<_> = boxlite_api::registry::registered(boxlite_api::PluginKind::Catalog)
        .iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"redb"), "{names:?}");
    let h = home();
    let cat = boxlite_api::registry::catalog(
        "redb",
        &PluginConfig {
            home: h.path().to_path_buf(),
            settings: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(cat.name(), "redb");
    assert!(db(h.path()).exists());
    assert_eq!(rt().block_on(cat.schema_version()).unwrap(), SCHEMA_VERSION);
}

#[test]
fn non_utf8_paths_are_refused_not_mangled() {
    use std::os::unix::ffi::OsStrExt;
    let h = home();
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    let rt = rt();
    let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"boxes/\xff/disk.qcow2"));
    let expect = |r: boxlite_api::Result<()>| match r {
        Err(Error::Unsupported {
            path: Some(p),
            what,
            ..
        }) => {
            assert_eq!(p, bad);
            assert!(what.contains("UTF-8"), "{what}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    };
    let mut b = new_box(Some("web"));
    b.disks.container = bad.clone();
    expect(rt.block_on(cat.apply(vec![CatalogOp::InsertBox(b)])));
    let good = new_box(Some("good"));
    rt.block_on(cat.apply(vec![CatalogOp::InsertBox(good.clone())]))
        .unwrap();
    let mut s = snap(&good, "v1");
    s.disks.guest_rootfs = bad.clone();
    expect(rt.block_on(cat.apply(vec![CatalogOp::InsertSnapshot(s)])));
    expect(rt.block_on(cat.apply(vec![CatalogOp::SetBoxDisks {
        box_id: good.id.clone(),
        disks: DiskSet {
            guest_rootfs: "a".into(),
            container: bad.clone(),
        },
    }])));
    expect(
        rt.block_on(cat.apply(vec![CatalogOp::InsertJournal(JournalEntry {
            id: "j".into(),
            operation: "import".into(),
            box_id: None,
            prior_status: None,
            owner_pid: 1,
            started_at: Utc::now(),
            staged: vec![bad.clone()],
        })])),
    );
    assert_eq!(rt.block_on(cat.list_boxes()).unwrap(), vec![good.clone()]);
    assert_eq!(rt.block_on(cat.list_all_snapshots()).unwrap(), vec![]);
    assert_eq!(rt.block_on(cat.list_journal()).unwrap(), vec![]);
}

#[test]
fn catalog_works_without_a_tokio_runtime_in_the_calling_thread() {
    // The async methods fall back to running inline when not polled inside tokio.
    let h = home();
    let cat: Arc<dyn CatalogBackend> = Arc::new(RedbCatalog::open_default(h.path()).unwrap());
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

/// A new catalog file is 0600 (not 0666 minus the umask); an existing file keeps its mode.
#[test]
fn new_database_file_is_0600_an_existing_file_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let h = home();
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    rt().block_on(cat.apply(vec![CatalogOp::InsertBox(new_box(Some("web")))]))
        .unwrap();
    assert_eq!(mode(&db(h.path())), 0o600);
    drop(cat);
    std::fs::set_permissions(db(h.path()), PermissionsExt::from_mode(0o640)).unwrap();
    let cat = RedbCatalog::open_default(h.path()).unwrap();
    assert_eq!(rt().block_on(cat.list_boxes()).unwrap().len(), 1);
    assert_eq!(mode(&db(h.path())), 0o640);
}
