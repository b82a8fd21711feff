//! The eight operations end to end on the default plugins (qcow2 storage, SQLite catalog,
//! zstd archives), on real qcow2/raw images, checking guest-visible content and store
//! invariants after every step (cases A04, A06, A07, A13).

mod common;

use std::process::Command;

use boxlite::api::{BoxStatus, CloneOptions, Error, ExportOptions, SnapshotOptions};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_remove_middle_and_clone_chain() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = make_images(tmp.path());
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(opts.clone(), "web").await.unwrap();
    assert_store_consistent(&rt, &home, "step 1").await;

    // The box starts equal to the images (raw rootfs, qcow2 container).
    let (g0, c0) = box_content(&b).await;
    assert_eq!(g0, std::fs::read(&opts.guest_rootfs).unwrap());
    assert!(c0[..1 << 20].iter().all(|&x| x == 0x11) && c0[1 << 20..].iter().all(|&x| x == 0));
    // Later changes to the user's files never affect the box.
    write_disk(&opts.disk, 0, 4096, 0xEE);
    assert_eq!(box_content(&b).await.1, c0);

    // A06: write A, s1, write B, s2, write C.
    let sopts = SnapshotOptions::default();
    write_disk(&live(&b).await.container, 0, 65536, 0xA0);
    b.snapshot().create("s1", &sopts).await.unwrap();
    let a = box_content(&b).await;
    write_disk(&live(&b).await.container, 2 << 20, 65536, 0xB0);
    b.snapshot().create("s2", &sopts).await.unwrap();
    let ab = box_content(&b).await;
    write_disk(&live(&b).await.container, 4 << 20, 65536, 0xC0);
    let abc = box_content(&b).await;
    assert_store_consistent(&rt, &home, "step 2").await;

    let names: Vec<_> = b
        .snapshot()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "s2"]);

    b.snapshot().remove("s1").await.unwrap();
    assert_eq!(
        box_content(&b).await,
        abc,
        "box reads A+B+C after removing s1"
    );
    assert_store_consistent(&rt, &home, "step 3").await;
    assert!(b.snapshot().get("s1").await.unwrap().is_none());

    b.snapshot().restore("s2").await.unwrap();
    assert_eq!(box_content(&b).await, ab, "s2 restores to A+B");
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);
    assert_store_consistent(&rt, &home, "step 4").await;
    let _ = a;

    // Clone w1 from s2, snapshot s3, remove s2: both keep their content.
    let mut copts = CloneOptions::default();
    copts.from_snapshot("s2");
    let w1 = b.clone("w1", &copts).await.unwrap();
    assert_eq!(box_content(&w1).await, ab);
    write_disk(&live(&b).await.container, 6 << 20, 4096, 0xD0);
    let b_now = box_content(&b).await;
    b.snapshot().create("s3", &sopts).await.unwrap();
    b.snapshot().remove("s2").await.unwrap();
    assert_eq!(box_content(&b).await, b_now);
    assert_eq!(box_content(&w1).await, ab);
    assert_store_consistent(&rt, &home, "step 5").await;

    // Remove the source box: w1 still works.
    rt.remove("web", false).await.unwrap();
    assert_eq!(box_content(&w1).await, ab);
    assert_store_consistent(&rt, &home, "step 6").await;
    rt.remove("w1", false).await.unwrap();
    assert_store_consistent(&rt, &home, "step 7").await;
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_fan_out_survives_removal_of_source() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = make_images(tmp.path());
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(opts, "src").await.unwrap();
    write_disk(
        &b.info().await.unwrap().disks.container,
        1 << 20,
        8192,
        0x5A,
    );
    b.snapshot()
        .create("base", &SnapshotOptions::default())
        .await
        .unwrap();
    let want = box_content(&b).await;
    write_disk(&b.info().await.unwrap().disks.container, 0, 8192, 0x77);

    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut copts = CloneOptions::default();
    copts.from_snapshot("base");
    let clones = b.clone_many(&refs, &copts).await.unwrap();
    assert_eq!(clones.len(), 10);
    // Writes to one clone never show in another or in the source.
    write_disk(
        &clones[0].info().await.unwrap().disks.container,
        0,
        4096,
        0x99,
    );
    for c in &clones[1..] {
        assert_eq!(box_content(c).await, want);
    }
    b.snapshot().remove("base").await.unwrap();
    rt.remove("src", false).await.unwrap();
    for c in &clones[1..] {
        assert_eq!(box_content(c).await, want);
    }
    assert_store_consistent(&rt, &home, "step 8").await;
    for n in &names {
        rt.remove(n, false).await.unwrap();
    }
    assert_store_consistent(&rt, &home, "step 9").await;
    // Everything reclaimed once the last dependant went.
    let left: Vec<_> = std::fs::read_dir(home.join("storage/qcow2/layers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Clone from current state, cow and full copy.
    let b = rt.create(make_images(tmp.path()), "src2").await.unwrap();
    let cow = b.clone("cow", &CloneOptions::default()).await.unwrap();
    let mut full = CloneOptions::default();
    full.cow(false);
    let copy = b.clone("copy", &full).await.unwrap();
    assert_eq!(box_content(&cow).await, box_content(&b).await);
    assert_eq!(box_content(&copy).await, box_content(&b).await);
    let out = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&copy.info().await.unwrap().disks.container));
    assert!(
        !out.contains("backing-filename"),
        "a full copy has no backing file: {out}"
    );
    assert_store_consistent(&rt, &home, "step 10").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip_and_refusals() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "exp").await.unwrap();
    // A07: data, snapshot, more data, then export carries the whole chain.
    write_disk(
        &b.info().await.unwrap().disks.container,
        3 << 20,
        1 << 20,
        0x3C,
    );
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();
    write_disk(
        &b.info().await.unwrap().disks.container,
        5 << 20,
        256 << 10,
        0x4D,
    );
    let want = box_content(&b).await;

    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let archive = b.export(&out_dir, &ExportOptions::default()).await.unwrap();
    assert_eq!(archive, out_dir.join("exp.boxsnap"));
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);

    // System tar extracts it; the disks are standalone.
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&x));
    for f in ["guest-rootfs.qcow2", "disk.qcow2"] {
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(x.join(f)));
        assert!(!info.contains("backing-filename"), "{info}");
        run(Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(x.join(f)));
    }
    run(Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(x.join("disk.qcow2"))
        .arg(&b.info().await.unwrap().disks.container));

    let imp = rt.import(&archive, "imp").await.unwrap();
    assert_eq!(box_content(&imp).await, want);
    assert_eq!(imp.info().await.unwrap().status, BoxStatus::Stopped);
    assert_store_consistent(&rt, &home, "step 11").await;

    // Name taken, bad name: refused before anything.
    assert!(matches!(
        rt.import(&archive, "imp").await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        rt.import(&archive, "../x").await,
        Err(Error::InvalidName { .. })
    ));

    // A13: truncated and bit-flipped archives are refused and leave nothing behind.
    let bytes = std::fs::read(&archive).unwrap();
    let cut = tmp.path().join("cut.boxsnap");
    std::fs::write(&cut, &bytes[..bytes.len() - bytes.len().min(100 << 10) / 2]).unwrap();
    let err = rt.import(&cut, "cut").await.unwrap_err();
    assert!(matches!(err, Error::Archive { .. }), "{err}");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let flip = tmp.path().join("flip.boxsnap");
    std::fs::write(&flip, &flipped).unwrap();
    assert!(rt.import(&flip, "flip").await.is_err());
    assert!(rt.get("cut").await.unwrap().is_none() && rt.get("flip").await.unwrap().is_none());
    assert_store_consistent(&rt, &home, "step 12").await;

    // Uncompressed export (codec none) is a plain tar.
    let mut plain = ExportOptions::default();
    plain.compress(false);
    let p = b
        .export(&tmp.path().join("plain.boxsnap"), &plain)
        .await
        .unwrap();
    run(Command::new("tar").arg("-tf").arg(&p));
    let imp2 = rt.import(&p, "imp2").await.unwrap();
    assert_eq!(box_content(&imp2).await, want);

    // lz4 with the default options (level 3 is zstd's: lz4 uses its own default), detected
    // by magic on import whatever the file is called.
    let mut lz = ExportOptions::default();
    lz.codec("lz4");
    let p = b.export(&tmp.path().join("lz.tar"), &lz).await.unwrap();
    let imp3 = rt.import(&p, "imp3").await.unwrap();
    assert_eq!(box_content(&imp3).await, want);
    lz.compression_level(9);
    assert!(matches!(
        b.export(&tmp.path().join("lz9.tar"), &lz).await,
        Err(Error::Config { .. })
    ));
    assert!(!tmp.path().join("lz9.tar").exists());
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rules_and_typed_errors() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rt = open_runtime(&home).await;
    let b = rt.create(make_images(tmp.path()), "st").await.unwrap();
    let s = SnapshotOptions::default();
    b.snapshot().create("v1", &s).await.unwrap();

    assert!(matches!(
        b.snapshot().create("v1", &s).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        b.snapshot().create("-rf", &s).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        b.snapshot().restore("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        b.snapshot().remove("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(b.snapshot().get("nope").await.unwrap().is_none());
    assert!(matches!(
        rt.create(make_images(tmp.path()), "st").await,
        Err(Error::AlreadyExists { .. })
    ));
    let missing = boxlite::BoxOptions {
        disk: tmp.path().join("missing.qcow2"),
        guest_rootfs: tmp.path().join("missing.raw"),
    };
    assert!(matches!(
        rt.create(missing, "m").await,
        Err(Error::Io { .. })
    ));
    // A file that is neither qcow2 nor a plausible raw disk is refused, not imported.
    let junk = tmp.path().join("hostname.img");
    std::fs::write(&junk, b"vm\n").unwrap();
    let empty = tmp.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    for bad in [&junk, &empty] {
        let mut o = make_images(tmp.path());
        o.disk = bad.clone();
        let err = rt.create(o, "junk").await.unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(rt.get("junk").await.unwrap().is_none());
    }

    // Running: restore and remove refused with InvalidState; status unchanged.
    b.start().await.unwrap();
    assert!(matches!(
        b.snapshot().restore("v1").await,
        Err(Error::InvalidState { .. })
    ));
    assert!(matches!(
        b.snapshot().remove("v1").await,
        Err(Error::InvalidState { .. })
    ));
    assert!(matches!(
        rt.remove("st", false).await,
        Err(Error::InvalidState { .. })
    ));
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
    // Listing and cloning from a snapshot are allowed in any status.
    assert_eq!(b.snapshot().list().await.unwrap().len(), 1);
    let mut c = CloneOptions::default();
    c.from_snapshot("v1");
    b.clone("from-running", &c).await.unwrap();
    assert!(matches!(b.start().await, Err(Error::InvalidState { .. })));
    b.stop().await.unwrap();

    // Reopening the home keeps everything.
    drop(rt);
    let rt = open_runtime(&home).await;
    let b = rt.get("st").await.unwrap().unwrap();
    assert_eq!(b.snapshot().list().await.unwrap().len(), 1);
    assert_eq!(rt.list().await.unwrap().len(), 2);
    assert!(rt.recovery_report().is_empty());
    assert_store_consistent(&rt, &home, "step 13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_another_storage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    drop(open_runtime(&home).await);
    let sources = boxlite::ConfigSources {
        home: Some(home.clone()),
        catalog: Some("no-such-catalog".into()),
        ..Default::default()
    };
    let err = boxlite::BoxliteRuntime::open(boxlite::Config::load(&sources).unwrap())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unknown catalog 'no-such-catalog'") && msg.contains("sqlite"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_past_max_chain_depth_is_refused_and_changes_nothing() {
    if !common::have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        "[plugin.qcow2]\nmax_chain_depth = 6\n",
    )
    .unwrap();
    let rt = common::open_runtime(&home).await;
    let b = rt
        .create(common::make_images(dir.path()), "web")
        .await
        .unwrap();
    let mut made = 0;
    let err = loop {
        match b
            .snapshot()
            .create(&format!("s{made}"), &Default::default())
            .await
        {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 10, "max_chain_depth = 6 was never enforced");
    };
    assert!(
        matches!(err, boxlite::api::Error::Unsupported { .. })
            && err.to_string().contains("max_chain_depth"),
        "{err}"
    );
    let before = b.info().await.unwrap();
    assert_eq!(b.snapshot().list().await.unwrap().len(), made);
    // Still usable: every snapshot opens, the box opens, doctor is clean; removing a snapshot
    // merges a layer and makes room again.
    assert!(rt.doctor(false).await.unwrap().problems.is_empty());
    common::assert_store_consistent(&rt, &home, "at max depth").await;
    assert_eq!(b.info().await.unwrap(), before);
    b.snapshot().remove("s1").await.unwrap();
    b.snapshot()
        .create("again", &Default::default())
        .await
        .unwrap();
    common::assert_store_consistent(&rt, &home, "after making room").await;
}
