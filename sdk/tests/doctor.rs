//! `doctor` on real homes: clean, stray files, a missing layer, a dead process's operation.

mod common;

use boxlite::api::registry;
use boxlite::api::{BoxStatus, CatalogOp, JournalEntry, SnapshotOptions};
use boxlite::ProblemKind;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_home_then_stray_file_then_missing_layer() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "d").await.unwrap();
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();
    let r = rt.doctor(false).await.unwrap();
    assert!(r.is_consistent() && r.problems.is_empty(), "{r:?}");
    assert_eq!(r.roots_checked, 2);
    assert!(r.files_checked >= 4, "{r:?}");

    // A stray file in the store and a staging leftover: reported, then deleted by --fix.
    let stray = home.join("storage/qcow2/layers/stray.qcow2");
    std::fs::copy(&b.info().await.unwrap().disks.container, &stray).unwrap();
    std::fs::create_dir(home.join("staging/import-left")).unwrap();
    let r = rt.doctor(false).await.unwrap();
    assert!(!r.is_consistent());
    let kinds: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::Unreferenced), "{kinds:?}");
    assert!(kinds.contains(&ProblemKind::StagingLeftover), "{kinds:?}");
    assert!(stray.exists(), "doctor without --fix changes nothing");
    let r = rt.doctor(true).await.unwrap();
    assert!(r.is_consistent(), "{r:?}");
    assert!(!stray.exists());
    assert!(rt.doctor(false).await.unwrap().problems.is_empty());

    // A missing layer breaks the snapshot's and the box's chains: reported, never "fixed" by
    // deleting what looks unreferenced.
    let layer = b.snapshot().disks("v1").await.unwrap().container;
    std::fs::remove_file(&layer).unwrap();
    let before: Vec<_> = std::fs::read_dir(home.join("storage/qcow2/layers"))
        .unwrap()
        .collect();
    let r = rt.doctor(true).await.unwrap();
    assert!(!r.is_consistent());
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::BrokenChain && p.detail.contains("v1")),
        "{r:?}"
    );
    let after: Vec<_> = std::fs::read_dir(home.join("storage/qcow2/layers"))
        .unwrap()
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "nothing deleted while a chain is broken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_of_a_dead_process_is_rolled_back() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "d").await.unwrap();
    let id = b.id().clone();
    // What a process killed mid-snapshot leaves: the box held, a journal entry, no commit.
    let cat = registry::catalog("sqlite", &rt.config().plugin_config("sqlite")).unwrap();
    cat.apply(vec![
        CatalogOp::SetBoxStatus {
            box_id: id.clone(),
            expected: BoxStatus::Stopped,
            new: BoxStatus::Snapshotting,
        },
        CatalogOp::InsertJournal(JournalEntry {
            id: "01JDEADPROCESS0000000000000".into(),
            operation: "snapshot_create".into(),
            box_id: Some(id.clone()),
            prior_status: Some(BoxStatus::Stopped),
            owner_pid: 4_194_000,
            started_at: chrono::Utc::now(),
            staged: vec![],
        }),
    ])
    .await
    .unwrap();
    assert!(matches!(
        b.snapshot().create("v1", &SnapshotOptions::default()).await,
        Err(boxlite::api::Error::Busy { .. })
    ));
    let r = rt.doctor(false).await.unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::StaleJournal),
        "{r:?}"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::StuckStatus),
        "{r:?}"
    );
    let r = rt.doctor(true).await.unwrap();
    assert!(r.is_consistent(), "{r:?}");
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();

    // The same state found at open is repaired by recovery.
    cat.apply(vec![
        CatalogOp::SetBoxStatus {
            box_id: id.clone(),
            expected: BoxStatus::Stopped,
            new: BoxStatus::Restoring,
        },
        CatalogOp::InsertJournal(JournalEntry {
            id: "01JDEADPROCESS0000000000001".into(),
            operation: "snapshot_restore".into(),
            box_id: Some(id.clone()),
            prior_status: Some(BoxStatus::Stopped),
            owner_pid: 4_194_001,
            started_at: chrono::Utc::now(),
            staged: vec![],
        }),
    ])
    .await
    .unwrap();
    drop((b, rt, cat));
    let rt = open_runtime(&home).await;
    assert_eq!(
        rt.recovery_report().rolled_back.len(),
        1,
        "{:?}",
        rt.recovery_report()
    );
    assert_eq!(
        rt.get("d")
            .await
            .unwrap()
            .unwrap()
            .info()
            .await
            .unwrap()
            .status,
        BoxStatus::Stopped
    );
    assert!(rt.doctor(false).await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_removes_a_dead_exports_partial_archive_outside_the_home() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "e").await.unwrap();
    // What a process killed mid-export leaves: the box held, the journal entry naming the
    // temporary archive's prefix, and the partial file next to the destination.
    let dead = out.join(".boxsnap-deadbeef0123x7Yz.partial");
    let other = out.join(".boxsnap-someoneelse9Qw.partial");
    std::fs::write(&dead, b"half an archive").unwrap();
    std::fs::write(&other, b"another export's file").unwrap();
    let cat = registry::catalog("sqlite", &rt.config().plugin_config("sqlite")).unwrap();
    cat.apply(vec![
        CatalogOp::SetBoxStatus {
            box_id: b.id().clone(),
            expected: BoxStatus::Stopped,
            new: BoxStatus::Exporting,
        },
        CatalogOp::InsertJournal(JournalEntry {
            id: "01JDEADEXPORT00000000000000".into(),
            operation: "export".into(),
            box_id: Some(b.id().clone()),
            prior_status: Some(BoxStatus::Stopped),
            owner_pid: 4_194_002,
            started_at: chrono::Utc::now(),
            staged: vec![out.join(".boxsnap-deadbeef0123")],
        }),
    ])
    .await
    .unwrap();
    drop((b, rt, cat));
    let rt = open_runtime(&home).await;
    assert!(
        !dead.exists(),
        "the dead export's partial archive is removed"
    );
    assert!(other.exists(), "files of other operations are kept");
    assert!(
        rt.recovery_report().deleted.contains(&dead),
        "{:?}",
        rt.recovery_report()
    );
    let b = rt.get("e").await.unwrap().unwrap();
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);
    // A real export journals its prefix and leaves no partial behind on success.
    b.export(&out, &boxlite::api::ExportOptions::default())
        .await
        .unwrap();
    let partials: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        partials,
        [std::ffi::OsString::from(".boxsnap-someoneelse9Qw.partial")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_layer_does_not_lock_the_user_out_and_inspection_changes_nothing() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "d").await.unwrap();
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();
    let layer = b.snapshot().disks("v1").await.unwrap().container;
    drop((b, rt));
    std::fs::remove_file(&layer).unwrap();
    let stray = home.join("storage/qcow2/layers/stray.bin");
    std::fs::write(&stray, b"x").unwrap();

    // Normal open still works (garbage collection is skipped, nothing deleted).
    let rt = open_runtime(&home).await;
    assert!(
        rt.recovery_report().gc_skipped.is_some(),
        "{:?}",
        rt.recovery_report()
    );
    assert!(stray.exists());
    assert_eq!(rt.list().await.unwrap().len(), 1);
    drop(rt);

    // Inspection opens without recovery and reports; plain doctor deletes nothing.
    let sources = boxlite::ConfigSources {
        home: Some(home.clone()),
        ..Default::default()
    };
    let config = boxlite::Config::load(&sources).unwrap();
    let rt = boxlite::BoxliteRuntime::open_for_inspection(config.clone())
        .await
        .unwrap();
    let r = rt.doctor(false).await.unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::BrokenChain),
        "{r:?}"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::Unreferenced),
        "{r:?}"
    );
    assert!(stray.exists(), "doctor without --fix deletes nothing");

    // No home is created at a mistyped path.
    let mut missing = config;
    missing.home = tmp.path().join("typo");
    assert!(boxlite::BoxliteRuntime::open_for_inspection(missing)
        .await
        .is_err());
    assert!(!tmp.path().join("typo").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_keeps_its_backend_when_none_is_configured() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let with = |storage: Option<&str>| boxlite::ConfigSources {
        home: Some(home.clone()),
        storage: storage.map(str::to_owned),
        ..Default::default()
    };
    let rt = boxlite::BoxliteRuntime::open(boxlite::Config::load(&with(Some("copy"))).unwrap())
        .await
        .unwrap();
    rt.create(make_images(tmp.path()), "c").await.unwrap();
    drop(rt);
    let rt = boxlite::BoxliteRuntime::open(boxlite::Config::load(&with(None)).unwrap())
        .await
        .unwrap();
    assert_eq!(rt.storage_name(), "copy");
    drop(rt);
    let err = boxlite::BoxliteRuntime::open(boxlite::Config::load(&with(Some("qcow2"))).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("created with storage 'copy'"),
        "{err}"
    );
}
