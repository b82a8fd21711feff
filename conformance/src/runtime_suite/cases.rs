//! The cases of the runtime suite. Each takes a fresh [`Harness`] and returns `Err` with the
//! first violated expectation. Names say what the contract promises.

use std::fmt::Display;
use std::path::PathBuf;

use boxlite::api::{
    BoxController, BoxStatus, CloneOptions, DiskRole, Error, ExportOptions, LiveBox,
    SnapshotOptions,
};
use boxlite::{BoxliteRuntime, LiteBox};

use crate::live::{check_region, StandinVmm};

use super::model::{check_box, check_snapshot, write_box, write_file, Model};
use super::{Harness, RuntimeCase};

/// The single list of case names: used by `all()` and by `runtime_suite_tests!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __runtime_suite_case_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { { $($args)* }
            create_content_equals_images,
            create_invalid_names_change_nothing,
            create_duplicate_name_is_already_exists,
            create_missing_image_changes_nothing,
            create_from_qcow2_with_backing_chain,
            create_from_non_image_file_is_refused,
            get_unknown_box_is_none,
            list_boxes_in_creation_order,
            snapshot_captures_content,
            snapshot_unchanged_by_later_writes,
            snapshot_duplicate_name_is_already_exists,
            snapshot_invalid_names_change_nothing,
            snapshot_get_unknown_is_none,
            snapshot_list_keeps_creation_order_within_a_second,
            snapshot_info_sizes_add_up,
            snapshot_of_removed_box_is_not_found,
            restore_returns_snapshot_content,
            restore_keeps_every_snapshot,
            restore_unknown_is_not_found,
            restore_running_is_invalid_state,
            restore_then_snapshot_branches,
            remove_first_snapshot,
            remove_middle_snapshot,
            remove_last_snapshot,
            remove_unknown_snapshot_is_not_found,
            remove_snapshot_running_is_invalid_state,
            remove_snapshot_keeps_clones_made_from_it,
            chain_of_128_snapshots,
            clone_current_state_equal,
            clone_isolated_both_ways,
            clone_from_snapshot_equal,
            clone_fan_out_from_snapshot,
            clone_without_cow_is_standalone,
            clone_to_existing_name_is_already_exists,
            clone_same_name_twice_is_invalid,
            clone_from_unknown_snapshot_is_not_found,
            clone_from_snapshot_of_running_box_is_allowed,
            remove_source_box_keeps_clones,
            remove_box_removes_its_snapshots,
            remove_running_box_needs_force,
            remove_unknown_box_is_not_found,
            export_import_round_trip,
            export_keeps_sparse_size,
            export_uncompressed_round_trip,
            export_to_directory_names_archive_after_box,
            import_existing_or_invalid_name_changes_nothing,
            import_corrupted_archive_changes_nothing,
            import_truncated_archive_changes_nothing,
            start_stop_status_rules,
            live_snapshot_holds_exactly_the_acknowledged_writes,
            live_clone_and_export_hold_the_capture,
            live_capture_failure_changes_nothing,
            concurrent_snapshot_create_exactly_one,
            concurrent_snapshot_remove_exactly_one,
            reopen_keeps_everything,
            storage_reclaimed_after_everything_is_removed,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __runtime_suite_build {
    ({} $($case:ident),* $(,)?) => {
        vec![$(
            $crate::runtime_suite::RuntimeCase {
                name: stringify!($case),
                run: |h| -> $crate::runtime_suite::CaseFuture {
                    ::std::boxed::Box::pin($crate::runtime_suite::cases_impl::$case(h))
                },
            }
        ),*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __runtime_suite_stamp {
    ({ $combo:expr } $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::runtime_suite::run_named_blocking(stringify!($case), $combo);
            }
        )*
    };
}

/// Stamp one `#[test]` per runtime case into the calling crate, each running against the
/// given [`Combo`](crate::Combo) expression (evaluated per test).
#[macro_export]
macro_rules! runtime_suite_tests {
    ($combo:expr) => {
        $crate::__runtime_suite_case_names!(__runtime_suite_stamp { $combo });
    };
}

pub(crate) fn all() -> Vec<RuntimeCase> {
    crate::__runtime_suite_case_names!(__runtime_suite_build {})
}

macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        if !$cond {
            return Err(format!($($t)*));
        }
    };
}

fn ok<T, E: Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error: {e}"))
}

fn expect_err<T>(
    r: boxlite::api::Result<T>,
    what: &str,
    kind: &str,
    pred: fn(&Error) -> bool,
) -> Result<Error, String> {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected {kind}")),
        Err(e) if pred(&e) => Ok(e),
        Err(e) => Err(format!("{what}: expected {kind}, got: {e:?}")),
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound { .. })
}
fn is_exists(e: &Error) -> bool {
    matches!(e, Error::AlreadyExists { .. })
}
fn is_invalid_name(e: &Error) -> bool {
    matches!(e, Error::InvalidName { .. })
}
fn is_invalid_state(e: &Error) -> bool {
    matches!(e, Error::InvalidState { .. })
}

fn snap() -> SnapshotOptions {
    SnapshotOptions::default()
}

fn from_snapshot(name: &str) -> CloneOptions {
    let mut c = CloneOptions::default();
    c.from_snapshot(name);
    c
}

/// Every regular file under `dir`, recursively (for "nothing changed" checks).
fn tree(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.retain(|p| !p.components().any(|c| c.as_os_str() == "locks"));
    out.retain(|p| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // catalog files change on every open (WAL, shm); storage and staging must not
        !n.contains(".db") && !n.contains(".redb")
    });
    out.sort();
    out
}

/// Open a runtime and create box `name` from fresh images.
async fn setup(h: &Harness, name: &str) -> Result<(BoxliteRuntime, LiteBox, Model), String> {
    let rt = h.open().await?;
    let (opts, model) = h.images(name)?;
    let b = ok(rt.create(opts, name).await, "create")?;
    Ok((rt, b, model))
}

/// A box `name` whose stand-in VM (in-process, see [`crate::live`]) is writing, recorded
/// Running, on a runtime given that VMM as its controller.
async fn running(
    h: &Harness,
    name: &str,
) -> Result<(BoxliteRuntime, LiteBox, std::sync::Arc<StandinVmm>), String> {
    let vmm = StandinVmm::in_process();
    let rt = h.open_with(Some(vmm.clone())).await?;
    let (opts, _) = h.images(name)?;
    let b = ok(rt.create(opts, name).await, "create")?;
    let info = ok(b.info().await, "info")?;
    let live = LiveBox {
        id: info.id,
        name: name.to_owned(),
        disks: info.disks,
    };
    ok(vmm.start(&live).await, "start the stand-in VM")?;
    ok(b.start().await, "start")?;
    vmm.wait_for(b.id(), 50)?;
    Ok((rt, b, vmm))
}

/// Stop a running box's stand-in VM and record it Stopped; the final acknowledged count.
async fn shut_down(vmm: &StandinVmm, b: &LiteBox) -> Result<u64, String> {
    let info = ok(b.info().await, "info")?;
    let live = LiveBox {
        id: info.id,
        name: b.name().to_owned(),
        disks: info.disks,
    };
    ok(vmm.stop(&live).await, "stop the stand-in VM")?;
    ok(b.stop().await, "stop")?;
    vmm.last_halt(b.id())
        .ok_or_else(|| "the VM reported no count at stop".to_owned())
}

fn crash_consistent() -> SnapshotOptions {
    let mut o = SnapshotOptions::default();
    o.quiesce(false);
    o
}

/// Every stored file of the home (storage + staging) for leak checks.
fn stored_files(h: &Harness) -> Vec<PathBuf> {
    let mut v = tree(&h.home().join("storage"));
    v.extend(tree(&h.home().join("staging")));
    v
}

#[doc(hidden)]
pub mod cases_impl {
    use super::*;

    pub async fn create_content_equals_images(h: Harness) -> Result<(), String> {
        let (rt, b, model) = setup(&h, "web").await?;
        check_box(&b, &model).await?;
        let info = ok(b.info().await, "info")?;
        ensure!(
            info.status == BoxStatus::Stopped,
            "new box is {}",
            info.status
        );
        ensure!(info.name.as_deref() == Some("web"), "name {:?}", info.name);
        ensure!(
            info.snapshot_count == 0,
            "snapshot_count {}",
            info.snapshot_count
        );
        for (_, p) in info.disks.iter() {
            ensure!(p.is_absolute() && p.exists(), "disk path {}", p.display());
        }
        // Later changes to the user's images never affect the box.
        let (opts, _) = h.images("web")?;
        std::fs::write(&opts.disk, vec![0xEEu8; 4096]).map_err(|e| e.to_string())?;
        check_box(&b, &model).await?;
        drop(rt);
        Ok(())
    }

    pub async fn create_invalid_names_change_nothing(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        let (opts, _) = h.images("x")?;
        let before = stored_files(&h);
        let long = "a".repeat(300);
        for bad in [
            "",
            "../v1",
            "a/b",
            ".",
            "..",
            "-rf",
            "a\0b",
            "ab\u{202e}cd",
            &long,
        ] {
            expect_err(
                rt.create(opts.clone(), bad).await,
                &format!("create {bad:?}"),
                "InvalidName",
                is_invalid_name,
            )?;
        }
        ensure!(
            stored_files(&h) == before,
            "files changed after refused creates"
        );
        ensure!(ok(rt.list().await, "list")?.is_empty(), "a box appeared");
        Ok(())
    }

    pub async fn create_duplicate_name_is_already_exists(h: Harness) -> Result<(), String> {
        let (rt, b, model) = setup(&h, "dup").await?;
        let (opts, _) = h.images("dup2")?;
        let before = stored_files(&h);
        expect_err(
            rt.create(opts, "dup").await,
            "second create",
            "AlreadyExists",
            is_exists,
        )?;
        ensure!(
            stored_files(&h) == before,
            "files changed after refused create"
        );
        check_box(&b, &model).await
    }

    pub async fn create_missing_image_changes_nothing(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        let (mut opts, _) = h.images("m")?;
        opts.disk = h.scratch().join("does-not-exist.raw");
        let before = stored_files(&h);
        let r = rt.create(opts, "m").await;
        ensure!(r.is_err(), "create from a missing image succeeded");
        ensure!(stored_files(&h) == before, "files left after failed create");
        ensure!(
            ok(rt.get("m").await, "get")?.is_none(),
            "box exists after failed create"
        );
        Ok(())
    }

    pub async fn create_from_qcow2_with_backing_chain(h: Harness) -> Result<(), String> {
        // base.qcow2 <- top.qcow2 made in-process; the box must equal the chain's content and
        // not depend on either file afterwards.
        let rt = h.open().await?;
        let (opts, mut model) = h.images("q")?;
        let base = h.scratch().join("base.qcow2");
        let top = h.scratch().join("top.qcow2");
        ok(
            boxlite::qcow2::create_image(&base, super::super::DISK_SIZE),
            "create base",
        )?;
        write_file(&base, 0, 8192, 0x31)?;
        ok(
            boxlite::qcow2::create_overlay(
                &top,
                Some(("base.qcow2", boxlite::qcow2::BackingFormat::Qcow2)),
                super::super::DISK_SIZE,
            ),
            "create overlay",
        )?;
        write_file(&top, 4096, 8192, 0x32)?;
        model.container = vec![0; super::super::DISK_SIZE as usize];
        model.write(DiskRole::Container, 0, 8192, 0x31);
        model.write(DiskRole::Container, 4096, 8192, 0x32);
        let mut o = opts;
        o.disk = top.clone();
        let b = ok(rt.create(o, "q").await, "create")?;
        std::fs::remove_file(&base).map_err(|e| e.to_string())?;
        std::fs::remove_file(&top).map_err(|e| e.to_string())?;
        check_box(&b, &model).await
    }

    pub async fn create_from_non_image_file_is_refused(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        let before = stored_files(&h);
        for (tag, bytes) in [("junk", b"vm\n".to_vec()), ("empty", Vec::new())] {
            let (mut opts, _) = h.images(tag)?;
            opts.disk = h.scratch().join(format!("{tag}.img"));
            std::fs::write(&opts.disk, &bytes).map_err(|e| e.to_string())?;
            expect_err(rt.create(opts, tag).await, tag, "Unsupported", |e| {
                matches!(e, Error::Unsupported { .. })
            })?;
            ensure!(ok(rt.get(tag).await, "get")?.is_none(), "box {tag} created");
        }
        ensure!(
            stored_files(&h) == before,
            "files left after refused creates"
        );
        Ok(())
    }

    pub async fn get_unknown_box_is_none(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        ensure!(
            ok(rt.get("nobody").await, "get")?.is_none(),
            "unknown box found"
        );
        expect_err(
            rt.get("../x").await,
            "get ../x",
            "InvalidName",
            is_invalid_name,
        )?;
        Ok(())
    }

    pub async fn list_boxes_in_creation_order(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        for n in ["c", "a", "b"] {
            let (o, _) = h.images(n)?;
            ok(rt.create(o, n).await, "create")?;
        }
        let names: Vec<_> = ok(rt.list().await, "list")?
            .into_iter()
            .filter_map(|b| b.name)
            .collect();
        ensure!(names == ["c", "a", "b"], "list order {names:?}");
        Ok(())
    }

    pub async fn snapshot_captures_content(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "s").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0xA1).await?;
        write_box(&b, &mut model, DiskRole::GuestRootfs, 2 << 20, 4096, 0xA2).await?;
        let info = ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ensure!(info.name == "v1", "info name {}", info.name);
        check_snapshot(&b, "v1", &model).await?;
        check_box(&b, &model).await
    }

    pub async fn snapshot_unchanged_by_later_writes(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "s").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let at_v1 = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 1 << 20, 65536, 0xB1).await?;
        write_box(&b, &mut model, DiskRole::GuestRootfs, 0, 100, 0xB2).await?;
        check_snapshot(&b, "v1", &at_v1).await?;
        check_box(&b, &model).await
    }

    pub async fn snapshot_duplicate_name_is_already_exists(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "s").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let v1 = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x55).await?;
        expect_err(
            b.snapshot().create("v1", &snap()).await,
            "again",
            "AlreadyExists",
            is_exists,
        )?;
        check_snapshot(&b, "v1", &v1).await?;
        check_box(&b, &model).await?;
        let list = ok(b.snapshot().list().await, "list")?;
        ensure!(list.len() == 1, "{} snapshots", list.len());
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status after failure {st}");
        Ok(())
    }

    pub async fn snapshot_invalid_names_change_nothing(h: Harness) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "s").await?;
        let before = stored_files(&h);
        for bad in ["", "..", "a/b", "-x", ".hidden", "sp ace", &"z".repeat(129)] {
            expect_err(
                b.snapshot().create(bad, &snap()).await,
                bad,
                "InvalidName",
                is_invalid_name,
            )?;
        }
        ensure!(stored_files(&h) == before, "files changed");
        ensure!(
            ok(b.snapshot().list().await, "list")?.is_empty(),
            "snapshot appeared"
        );
        Ok(())
    }

    pub async fn snapshot_get_unknown_is_none(h: Harness) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "s").await?;
        ensure!(
            ok(b.snapshot().get("nope").await, "get")?.is_none(),
            "found unknown snapshot"
        );
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let got = ok(b.snapshot().get("v1").await, "get")?;
        ensure!(got.is_some_and(|s| s.name == "v1"), "get v1 failed");
        Ok(())
    }

    pub async fn snapshot_list_keeps_creation_order_within_a_second(
        h: Harness,
    ) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "s").await?;
        let names = ["z", "b", "y", "a", "x", "c"];
        for n in names {
            ok(b.snapshot().create(n, &snap()).await, "snapshot")?;
        }
        let got: Vec<_> = ok(b.snapshot().list().await, "list")?
            .into_iter()
            .map(|s| s.name)
            .collect();
        ensure!(got == names, "order {got:?}");
        let info = ok(b.info().await, "info")?;
        ensure!(
            info.snapshot_count == 6,
            "snapshot_count {}",
            info.snapshot_count
        );
        Ok(())
    }

    pub async fn snapshot_info_sizes_add_up(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "s").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 1 << 20, 0x66).await?;
        let info = ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ensure!(
            info.size_bytes == info.guest_disk_bytes + info.container_disk_bytes,
            "size_bytes {} != {} + {}",
            info.size_bytes,
            info.guest_disk_bytes,
            info.container_disk_bytes
        );
        ensure!(
            info.container_disk_bytes > 0,
            "container_disk_bytes is 0 after a 1 MiB write"
        );
        let got = ok(b.snapshot().get("v1").await, "get")?;
        ensure!(
            got.as_ref() == Some(&info),
            "get {got:?} != create {info:?}"
        );
        Ok(())
    }

    pub async fn snapshot_of_removed_box_is_not_found(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "gone").await?;
        ok(rt.remove("gone", false).await, "remove")?;
        expect_err(
            b.snapshot().create("v1", &snap()).await,
            "snapshot",
            "NotFound",
            is_not_found,
        )?;
        expect_err(b.info().await, "info", "NotFound", is_not_found)?;
        Ok(())
    }

    pub async fn restore_returns_snapshot_content(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "r").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0x10).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let v1 = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0x20).await?;
        write_box(&b, &mut model, DiskRole::GuestRootfs, 3 << 20, 65536, 0x21).await?;
        ok(b.snapshot().restore("v1").await, "restore")?;
        check_box(&b, &v1).await?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status after restore {st}");
        // Writes after a restore change the box, never the snapshot it came from.
        let mut after = v1.clone();
        write_box(&b, &mut after, DiskRole::Container, 0, 4096, 0x30).await?;
        check_box(&b, &after).await?;
        check_snapshot(&b, "v1", &v1).await?;
        ok(b.snapshot().restore("v1").await, "second restore")?;
        check_box(&b, &v1).await
    }

    pub async fn restore_keeps_every_snapshot(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "r").await?;
        let mut states = Vec::new();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            write_box(
                &b,
                &mut model,
                DiskRole::Container,
                (i as u64) << 20,
                4096,
                0x40 + i as u8,
            )
            .await?;
            ok(b.snapshot().create(n, &snap()).await, "snapshot")?;
            states.push((n, model.clone()));
        }
        ok(b.snapshot().restore("a").await, "restore a")?;
        for (n, m) in &states {
            check_snapshot(&b, n, m).await?;
        }
        ok(b.snapshot().restore("c").await, "restore c")?;
        check_box(&b, &states[2].1).await
    }

    pub async fn restore_unknown_is_not_found(h: Harness) -> Result<(), String> {
        let (_rt, b, model) = setup(&h, "r").await?;
        expect_err(
            b.snapshot().restore("nope").await,
            "restore",
            "NotFound",
            is_not_found,
        )?;
        expect_err(
            b.snapshot().restore("../x").await,
            "restore",
            "InvalidName",
            is_invalid_name,
        )?;
        check_box(&b, &model).await
    }

    pub async fn restore_running_is_invalid_state(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "r").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x77).await?;
        ok(b.start().await, "start")?;
        expect_err(
            b.snapshot().restore("v1").await,
            "restore",
            "InvalidState",
            is_invalid_state,
        )?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Running, "status {st}");
        check_box(&b, &model).await
    }

    pub async fn restore_then_snapshot_branches(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "br").await?;
        ok(b.snapshot().create("root", &snap()).await, "snapshot")?;
        let root = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x01).await?;
        ok(b.snapshot().create("left", &snap()).await, "snapshot")?;
        let left = model.clone();
        ok(b.snapshot().restore("root").await, "restore")?;
        let mut right = root.clone();
        write_box(&b, &mut right, DiskRole::Container, 8192, 4096, 0x02).await?;
        ok(b.snapshot().create("right", &snap()).await, "snapshot")?;
        check_snapshot(&b, "root", &root).await?;
        check_snapshot(&b, "left", &left).await?;
        check_snapshot(&b, "right", &right).await?;
        ok(b.snapshot().remove("root").await, "remove root")?;
        check_snapshot(&b, "left", &left).await?;
        check_snapshot(&b, "right", &right).await?;
        ok(b.snapshot().restore("left").await, "restore left")?;
        check_box(&b, &left).await
    }

    async fn three_snapshots(h: &Harness) -> Result<(LiteBox, Vec<Model>, Model), String> {
        let (_rt, b, mut model) = setup(h, "chain").await?;
        let mut states = Vec::new();
        for (i, n) in ["s1", "s2", "s3"].into_iter().enumerate() {
            write_box(
                &b,
                &mut model,
                DiskRole::Container,
                (i as u64) << 20,
                65536,
                0xA0 + i as u8,
            )
            .await?;
            write_box(
                &b,
                &mut model,
                DiskRole::GuestRootfs,
                (i as u64) << 20,
                512,
                0xB0 + i as u8,
            )
            .await?;
            ok(b.snapshot().create(n, &snap()).await, "snapshot")?;
            states.push(model.clone());
        }
        write_box(&b, &mut model, DiskRole::Container, 3 << 20, 4096, 0xCC).await?;
        // Keep the runtime alive through the box handle (LiteBox holds it).
        Ok((b, states, model))
    }

    async fn remove_nth(h: Harness, n: usize) -> Result<(), String> {
        let (b, states, live) = three_snapshots(&h).await?;
        let names = ["s1", "s2", "s3"];
        ok(b.snapshot().remove(names[n]).await, "remove")?;
        ensure!(
            ok(b.snapshot().get(names[n]).await, "get")?.is_none(),
            "still listed"
        );
        check_box(&b, &live).await?;
        for (i, name) in names.iter().enumerate() {
            if i != n {
                check_snapshot(&b, name, &states[i]).await?;
            }
        }
        for (i, name) in names.iter().enumerate() {
            if i != n {
                ok(b.snapshot().restore(name).await, "restore")?;
                check_box(&b, &states[i]).await?;
            }
        }
        Ok(())
    }

    pub async fn remove_first_snapshot(h: Harness) -> Result<(), String> {
        remove_nth(h, 0).await
    }

    pub async fn remove_middle_snapshot(h: Harness) -> Result<(), String> {
        remove_nth(h, 1).await
    }

    pub async fn remove_last_snapshot(h: Harness) -> Result<(), String> {
        remove_nth(h, 2).await
    }

    pub async fn remove_unknown_snapshot_is_not_found(h: Harness) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "x").await?;
        expect_err(
            b.snapshot().remove("nope").await,
            "remove",
            "NotFound",
            is_not_found,
        )?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status {st}");
        Ok(())
    }

    pub async fn remove_snapshot_running_is_invalid_state(h: Harness) -> Result<(), String> {
        let (_rt, b, model) = setup(&h, "x").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ok(b.start().await, "start")?;
        expect_err(
            b.snapshot().remove("v1").await,
            "remove",
            "InvalidState",
            is_invalid_state,
        )?;
        check_snapshot(&b, "v1", &model).await
    }

    pub async fn remove_snapshot_keeps_clones_made_from_it(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0x12).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let c = ok(b.clone("c1", &from_snapshot("v1")).await, "clone")?;
        ok(b.snapshot().remove("v1").await, "remove")?;
        check_box(&c, &model).await?;
        let mut cm = model.clone();
        write_box(&c, &mut cm, DiskRole::Container, 1 << 20, 4096, 0x13).await?;
        check_box(&c, &cm).await?;
        check_box(&b, &model).await
    }

    pub async fn chain_of_128_snapshots(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "deep").await?;
        let mut states = Vec::new();
        for i in 0..128u64 {
            write_box(
                &b,
                &mut model,
                DiskRole::Container,
                (i * 4096) % (3 << 20),
                4096,
                i as u8,
            )
            .await?;
            ok(
                b.snapshot().create(&format!("s{i:03}"), &snap()).await,
                "snapshot",
            )?;
            states.push(model.clone());
        }
        check_box(&b, &model).await?;
        for i in [0usize, 1, 63, 64, 126, 127] {
            check_snapshot(&b, &format!("s{i:03}"), &states[i]).await?;
        }
        ok(b.snapshot().restore("s000").await, "restore first")?;
        check_box(&b, &states[0]).await?;
        ok(b.snapshot().remove("s064").await, "remove middle")?;
        check_snapshot(&b, "s065", &states[65]).await?;
        check_snapshot(&b, "s127", &states[127]).await?;
        let n = ok(b.snapshot().list().await, "list")?.len();
        ensure!(n == 127, "{n} snapshots listed");
        Ok(())
    }

    pub async fn clone_current_state_equal(h: Harness) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0x21).await?;
        let c = ok(b.clone("copy", &CloneOptions::default()).await, "clone")?;
        check_box(&c, &model).await?;
        check_box(&b, &model).await?;
        let info = ok(c.info().await, "info")?;
        ensure!(
            info.status == BoxStatus::Stopped,
            "clone status {}",
            info.status
        );
        ensure!(ok(rt.list().await, "list")?.len() == 2, "list size");
        Ok(())
    }

    pub async fn clone_isolated_both_ways(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "src").await?;
        let c = ok(b.clone("c", &CloneOptions::default()).await, "clone")?;
        let mut cm = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x31).await?;
        write_box(&c, &mut cm, DiskRole::Container, 8192, 4096, 0x32).await?;
        write_box(&c, &mut cm, DiskRole::GuestRootfs, 0, 4096, 0x33).await?;
        check_box(&b, &model).await?;
        check_box(&c, &cm).await
    }

    pub async fn clone_from_snapshot_equal(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x41).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let v1 = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x42).await?;
        let c = ok(b.clone("c", &from_snapshot("v1")).await, "clone")?;
        check_box(&c, &v1).await?;
        check_box(&b, &model).await
    }

    pub async fn clone_fan_out_from_snapshot(h: Harness) -> Result<(), String> {
        let (_rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x51).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let clones = ok(
            b.clone_many(&refs, &from_snapshot("v1")).await,
            "clone_many",
        )?;
        ensure!(clones.len() == 12, "{} clones", clones.len());
        let mut first = model.clone();
        write_box(&clones[0], &mut first, DiskRole::Container, 0, 4096, 0x52).await?;
        check_box(&clones[0], &first).await?;
        for c in &clones[1..] {
            check_box(c, &model).await?;
        }
        Ok(())
    }

    pub async fn clone_without_cow_is_standalone(h: Harness) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 65536, 0x61).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let mut o = CloneOptions::default();
        o.cow(false);
        let full = ok(b.clone("full", &o).await, "clone")?;
        o.from_snapshot("v1");
        let full2 = ok(b.clone("full2", &o).await, "clone from snapshot")?;
        ok(rt.remove("src", false).await, "remove source")?;
        check_box(&full, &model).await?;
        check_box(&full2, &model).await?;
        let info = ok(full.info().await, "info")?;
        for (_, p) in info.disks.iter() {
            let chain = ok(
                boxlite::qcow2::Chain::open(p, &boxlite::qcow2::OpenOptions::new()),
                "open",
            )?;
            ensure!(
                chain.layers().len() == 1,
                "cow=false disk {} has a backing chain",
                p.display()
            );
        }
        Ok(())
    }

    pub async fn clone_to_existing_name_is_already_exists(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "src").await?;
        let (o, _) = h.images("taken")?;
        ok(rt.create(o, "taken").await, "create")?;
        let before = stored_files(&h);
        expect_err(
            b.clone_many(&["new1", "taken"], &CloneOptions::default())
                .await,
            "clone",
            "AlreadyExists",
            is_exists,
        )?;
        ensure!(
            ok(rt.get("new1").await, "get")?.is_none(),
            "partial clone created"
        );
        ensure!(stored_files(&h) == before, "files changed");
        Ok(())
    }

    pub async fn clone_same_name_twice_is_invalid(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "src").await?;
        let r = b.clone_many(&["d", "d"], &CloneOptions::default()).await;
        ensure!(r.is_err(), "clone_many with a repeated name succeeded");
        ensure!(ok(rt.get("d").await, "get")?.is_none(), "box created");
        Ok(())
    }

    pub async fn clone_from_unknown_snapshot_is_not_found(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "src").await?;
        expect_err(
            b.clone("c", &from_snapshot("nope")).await,
            "clone",
            "NotFound",
            is_not_found,
        )?;
        ensure!(ok(rt.get("c").await, "get")?.is_none(), "box created");
        Ok(())
    }

    pub async fn clone_from_snapshot_of_running_box_is_allowed(h: Harness) -> Result<(), String> {
        let (_rt, b, model) = setup(&h, "src").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ok(b.start().await, "start")?;
        let c = ok(b.clone("c", &from_snapshot("v1")).await, "clone")?;
        check_box(&c, &model).await?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Running, "source status {st}");
        Ok(())
    }

    pub async fn remove_source_box_keeps_clones(h: Harness) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "src").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x71).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let c1 = ok(b.clone("c1", &from_snapshot("v1")).await, "clone")?;
        let c2 = ok(b.clone("c2", &CloneOptions::default()).await, "clone")?;
        ok(rt.remove("src", false).await, "remove")?;
        check_box(&c1, &model).await?;
        check_box(&c2, &model).await?;
        let mut m2 = model.clone();
        write_box(&c2, &mut m2, DiskRole::Container, 0, 4096, 0x72).await?;
        check_box(&c1, &model).await?;
        check_box(&c2, &m2).await
    }

    pub async fn remove_box_removes_its_snapshots(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "gone").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ok(rt.remove("gone", false).await, "remove")?;
        ensure!(
            ok(rt.get("gone").await, "get")?.is_none(),
            "box still there"
        );
        let (o, model) = h.images("gone2")?;
        let again = ok(rt.create(o, "gone").await, "re-create with the same name")?;
        ensure!(
            ok(again.snapshot().list().await, "list")?.is_empty(),
            "old snapshots visible on a new box with the same name"
        );
        check_box(&again, &model).await
    }

    pub async fn remove_running_box_needs_force(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "run").await?;
        ok(b.start().await, "start")?;
        expect_err(
            rt.remove("run", false).await,
            "remove",
            "InvalidState",
            is_invalid_state,
        )?;
        ok(rt.remove("run", true).await, "remove --force")?;
        ensure!(ok(rt.get("run").await, "get")?.is_none(), "box still there");
        Ok(())
    }

    pub async fn remove_unknown_box_is_not_found(h: Harness) -> Result<(), String> {
        let rt = h.open().await?;
        expect_err(
            rt.remove("nobody", false).await,
            "remove",
            "NotFound",
            is_not_found,
        )?;
        Ok(())
    }

    async fn round_trip(h: Harness, opts: ExportOptions) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "exp").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 1 << 20, 0x81).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        write_box(&b, &mut model, DiskRole::Container, 2 << 20, 65536, 0x82).await?;
        let dest = h.scratch().join("out.boxsnap");
        let path = ok(b.export(&dest, &opts).await, "export")?;
        ensure!(path == dest, "export wrote {}", path.display());
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status after export {st}");
        let imp = ok(rt.import(&path, "imp").await, "import")?;
        check_box(&imp, &model).await?;
        let info = ok(imp.info().await, "info")?;
        ensure!(
            info.status == BoxStatus::Stopped,
            "imported status {}",
            info.status
        );
        for (_, p) in info.disks.iter() {
            let chain = ok(
                boxlite::qcow2::Chain::open(p, &boxlite::qcow2::OpenOptions::new()),
                "open",
            )?;
            ensure!(
                chain.virtual_size() == super::super::DISK_SIZE,
                "virtual size {}",
                chain.virtual_size()
            );
        }
        // The imported box is independent of the source.
        let mut im = model.clone();
        write_box(&imp, &mut im, DiskRole::Container, 0, 4096, 0x83).await?;
        check_box(&b, &model).await
    }

    pub async fn export_import_round_trip(h: Harness) -> Result<(), String> {
        round_trip(h, ExportOptions::default()).await
    }

    pub async fn export_uncompressed_round_trip(h: Harness) -> Result<(), String> {
        let mut o = ExportOptions::default();
        o.compress(false);
        round_trip(h, o).await
    }

    pub async fn export_keeps_sparse_size(h: Harness) -> Result<(), String> {
        // A 16 GiB-virtual container disk with 8 MiB written: the archive stays small.
        let rt = h.open().await?;
        let (mut opts, _) = h.images("big")?;
        let big = h.scratch().join("big.qcow2");
        ok(
            boxlite::qcow2::create_image(&big, 16 << 30),
            "create 16 GiB image",
        )?;
        let mut pattern = vec![0u8; 8 << 20];
        for (i, b) in pattern.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2654435761).to_le_bytes()[2];
        }
        {
            let mut chain = ok(
                boxlite::qcow2::Chain::open(
                    &big,
                    &boxlite::qcow2::OpenOptions::new().writable(true),
                ),
                "open",
            )?;
            ok(chain.write_at(&pattern, 5 << 30), "write")?;
            ok(chain.close(), "close")?;
        }
        opts.disk = big;
        let b = ok(rt.create(opts, "big").await, "create")?;
        let path = ok(
            b.export(&h.scratch(), &ExportOptions::default()).await,
            "export",
        )?;
        let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        ensure!(len < 16 << 20, "archive of 8 MiB of data is {len} bytes");
        let imp = ok(rt.import(&path, "big2").await, "import")?;
        let info = ok(imp.info().await, "info")?;
        let chain = ok(
            boxlite::qcow2::Chain::open(&info.disks.container, &boxlite::qcow2::OpenOptions::new()),
            "open",
        )?;
        ensure!(
            chain.virtual_size() == 16 << 30,
            "virtual size {}",
            chain.virtual_size()
        );
        let mut got = vec![0u8; pattern.len()];
        ok(chain.read_at(&mut got, 5 << 30), "read")?;
        ensure!(got == pattern, "imported data differs");
        Ok(())
    }

    pub async fn export_to_directory_names_archive_after_box(h: Harness) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "named").await?;
        let dir = h.scratch().join("outdir");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let p = ok(b.export(&dir, &ExportOptions::default()).await, "export")?;
        ensure!(p == dir.join("named.boxsnap"), "archive at {}", p.display());
        // Exporting again to the same file refuses to overwrite and leaves it intact.
        let len = std::fs::metadata(&p).map_err(|e| e.to_string())?.len();
        let again = b.export(&p, &ExportOptions::default()).await;
        ensure!(again.is_err(), "export over an existing archive succeeded");
        let len2 = std::fs::metadata(&p).map_err(|e| e.to_string())?.len();
        ensure!(len == len2, "existing archive changed");
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status {st}");
        Ok(())
    }

    pub async fn import_existing_or_invalid_name_changes_nothing(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "exp").await?;
        let p = ok(
            b.export(&h.scratch(), &ExportOptions::default()).await,
            "export",
        )?;
        let before = stored_files(&h);
        expect_err(
            rt.import(&p, "exp").await,
            "import",
            "AlreadyExists",
            is_exists,
        )?;
        expect_err(
            rt.import(&p, "../x").await,
            "import",
            "InvalidName",
            is_invalid_name,
        )?;
        ensure!(stored_files(&h) == before, "files changed");
        Ok(())
    }

    async fn refused_archive(h: Harness, damage: fn(&mut Vec<u8>)) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "exp").await?;
        let p = ok(
            b.export(&h.scratch(), &ExportOptions::default()).await,
            "export",
        )?;
        let mut bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
        damage(&mut bytes);
        let bad = h.scratch().join("bad.boxsnap");
        std::fs::write(&bad, &bytes).map_err(|e| e.to_string())?;
        let before = stored_files(&h);
        let r = rt.import(&bad, "bad").await;
        ensure!(r.is_err(), "damaged archive imported");
        ensure!(ok(rt.get("bad").await, "get")?.is_none(), "box visible");
        ensure!(stored_files(&h) == before, "files left behind");
        Ok(())
    }

    pub async fn import_corrupted_archive_changes_nothing(h: Harness) -> Result<(), String> {
        refused_archive(h, |b| {
            let i = b.len() / 2;
            b[i] ^= 0x40;
        })
        .await
    }

    pub async fn import_truncated_archive_changes_nothing(h: Harness) -> Result<(), String> {
        refused_archive(h, |b| {
            let cut = b.len().min(100 << 10) / 2;
            b.truncate(b.len() - cut.max(1));
        })
        .await
    }

    pub async fn start_stop_status_rules(h: Harness) -> Result<(), String> {
        let (_rt, b, _) = setup(&h, "st").await?;
        expect_err(
            b.stop().await,
            "stop stopped",
            "InvalidState",
            is_invalid_state,
        )?;
        ok(b.start().await, "start")?;
        expect_err(
            b.start().await,
            "start running",
            "InvalidState",
            is_invalid_state,
        )?;
        let list = ok(b.snapshot().list().await, "list while running")?;
        ensure!(list.is_empty(), "snapshots {list:?}");
        ok(b.stop().await, "stop")?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(st == BoxStatus::Stopped, "status {st}");
        Ok(())
    }

    pub async fn live_snapshot_holds_exactly_the_acknowledged_writes(
        h: Harness,
    ) -> Result<(), String> {
        // A running box whose VM keeps writing: each live snapshot holds exactly the writes
        // the VM had acknowledged when the runtime paused it, and none after.
        let (_rt, b, vmm) = running(&h, "web").await?;
        let mut taken = Vec::new();
        for k in 0..3u64 {
            vmm.wait_for(b.id(), 100 * (k + 1) + 50)?;
            let name = format!("v{k}");
            let info = ok(
                b.snapshot().create(&name, &crash_consistent()).await,
                "live snapshot",
            )?;
            let report = info
                .capture
                .ok_or("create of a running box returned no capture report")?;
            ensure!(
                !report.stopped,
                "stopped although pausing works: {report:?}"
            );
            let acked = vmm.last_halt(b.id()).ok_or("the VM was never paused")?;
            let st = ok(b.info().await, "info")?.status;
            ensure!(
                st == BoxStatus::Running,
                "status after a live snapshot: {st}"
            );
            taken.push((name, acked));
            vmm.wait_for(b.id(), acked + 20)
                .map_err(|e| format!("the VM did not run on after the capture: {e}"))?;
        }
        for (name, acked) in &taken {
            let disks = ok(b.snapshot().disks(name).await, "snapshot disks")?;
            check_region(&disks.container, *acked, &format!("snapshot {name}"))?;
        }
        let fin = shut_down(&vmm, &b).await?;
        let live = ok(b.info().await, "info")?.disks;
        check_region(&live.container, fin, "the live disk after stop")?;
        ok(b.snapshot().restore("v1").await, "restore v1")?;
        let live = ok(b.info().await, "info")?.disks;
        check_region(&live.container, taken[1].1, "restored v1")
    }

    pub async fn live_clone_and_export_hold_the_capture(h: Harness) -> Result<(), String> {
        let (rt, b, vmm) = running(&h, "web").await?;
        vmm.wait_for(b.id(), 200)?;
        let mut copts = CloneOptions::default();
        copts.live(crash_consistent());
        let c = ok(b.clone("c", &copts).await, "live clone")?;
        let at_clone = vmm.last_halt(b.id()).ok_or("the VM was never paused")?;
        ensure!(
            b.last_capture().is_some(),
            "live clone left no capture report"
        );
        vmm.wait_for(b.id(), at_clone + 50)?;
        let mut eopts = ExportOptions::default();
        eopts.live(crash_consistent());
        let archive = ok(b.export(&h.scratch(), &eopts).await, "live export")?;
        let at_export = vmm.last_halt(b.id()).ok_or("the VM was never paused")?;
        let st = ok(b.info().await, "info")?.status;
        ensure!(
            st == BoxStatus::Running,
            "status after live clone/export: {st}"
        );
        let cdisks = ok(c.info().await, "clone info")?.disks;
        check_region(&cdisks.container, at_clone, "live clone")?;
        let imported = ok(rt.import(&archive, "imp").await, "import")?;
        let idisks = ok(imported.info().await, "import info")?.disks;
        check_region(&idisks.container, at_export, "imported live export")?;
        let fin = shut_down(&vmm, &b).await?;
        let live = ok(b.info().await, "info")?.disks;
        check_region(&live.container, fin, "the source's live disk")
    }

    pub async fn live_capture_failure_changes_nothing(h: Harness) -> Result<(), String> {
        // The VMM fails to pause, then (for backends that switch live files) to reopen:
        // typed error, nothing committed, the VM runs on its own disks.
        let (_rt, b, vmm) = running(&h, "web").await?;
        let before = ok(b.info().await, "info")?;
        for action in ["pause", "reopen"] {
            vmm.fail_next(action);
            match b.snapshot().create("v1", &crash_consistent()).await {
                Err(Error::Vmm { action: a, .. }) if a == action => {}
                // A backend that keeps the live files never calls reopen: the snapshot is fine.
                Ok(_) if action == "reopen" => continue,
                other => {
                    return Err(format!(
                        "{action} failure: expected a Vmm error, got {other:?}"
                    ))
                }
            }
            ensure!(
                ok(b.snapshot().list().await, "list")?.is_empty(),
                "{action} failure left a snapshot"
            );
            let now = ok(b.info().await, "info")?;
            ensure!(
                now == before,
                "{action} failure changed the box: {before:?} -> {now:?}"
            );
            let n = vmm.count(b.id())?;
            vmm.wait_for(b.id(), n + 20)
                .map_err(|e| format!("the VM did not run on after a {action} failure: {e}"))?;
        }
        let fin = shut_down(&vmm, &b).await?;
        let live = ok(b.info().await, "info")?.disks;
        check_region(&live.container, fin, "the live disk")
    }

    pub async fn concurrent_snapshot_create_exactly_one(h: Harness) -> Result<(), String> {
        let (rt, _b, model) = setup(&h, "cc").await?;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let rt = rt.clone();
            tasks.push(tokio::spawn(async move {
                let b = rt
                    .get("cc")
                    .await?
                    .ok_or_else(|| Error::box_not_found("cc"))?;
                b.snapshot().create("v1", &SnapshotOptions::default()).await
            }));
        }
        let mut okc = 0;
        for t in tasks {
            match t.await.map_err(|e| e.to_string())? {
                Ok(_) => okc += 1,
                Err(Error::AlreadyExists { .. } | Error::Busy { .. }) => {}
                Err(e) => return Err(format!("unexpected error: {e}")),
            }
        }
        ensure!(okc == 1, "{okc} creates succeeded");
        let b = ok(rt.get("cc").await, "get")?.ok_or("box gone")?;
        ensure!(
            ok(b.info().await, "info")?.status == BoxStatus::Stopped,
            "status not restored"
        );
        check_snapshot(&b, "v1", &model).await?;
        let n = ok(b.snapshot().list().await, "list")?.len();
        ensure!(n == 1, "{n} snapshots");
        Ok(())
    }

    pub async fn concurrent_snapshot_remove_exactly_one(h: Harness) -> Result<(), String> {
        let (rt, b, _) = setup(&h, "cr").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let rt = rt.clone();
            tasks.push(tokio::spawn(async move {
                let b = rt
                    .get("cr")
                    .await?
                    .ok_or_else(|| Error::box_not_found("cr"))?;
                b.snapshot().remove("v1").await
            }));
        }
        let mut okc = 0;
        for t in tasks {
            match t.await.map_err(|e| e.to_string())? {
                Ok(()) => okc += 1,
                Err(Error::NotFound { .. } | Error::Busy { .. }) => {}
                Err(e) => return Err(format!("unexpected error: {e}")),
            }
        }
        ensure!(okc == 1, "{okc} removes succeeded");
        ensure!(
            ok(b.info().await, "info")?.status == BoxStatus::Stopped,
            "status not restored"
        );
        Ok(())
    }

    pub async fn reopen_keeps_everything(h: Harness) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "keep").await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        let v1 = model.clone();
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x91).await?;
        ok(b.clone("kc", &from_snapshot("v1")).await, "clone")?;
        drop(b);
        drop(rt);
        let rt = h.open().await?;
        ensure!(
            rt.recovery_report().is_empty(),
            "recovery ran: {:?}",
            rt.recovery_report()
        );
        let b = ok(rt.get("keep").await, "get")?.ok_or("box lost")?;
        check_box(&b, &model).await?;
        check_snapshot(&b, "v1", &v1).await?;
        let kc = ok(rt.get("kc").await, "get")?.ok_or("clone lost")?;
        check_box(&kc, &v1).await
    }

    pub async fn storage_reclaimed_after_everything_is_removed(h: Harness) -> Result<(), String> {
        let (rt, b, mut model) = setup(&h, "a").await?;
        write_box(&b, &mut model, DiskRole::Container, 0, 4096, 0x99).await?;
        ok(b.snapshot().create("v1", &snap()).await, "snapshot")?;
        ok(
            b.clone_many(&["b", "c"], &from_snapshot("v1")).await,
            "clone",
        )?;
        ok(b.clone("d", &CloneOptions::default()).await, "clone")?;
        ok(b.snapshot().remove("v1").await, "remove snapshot")?;
        for n in ["a", "b", "c", "d"] {
            ok(rt.remove(n, false).await, "remove")?;
        }
        let left = stored_files(&h);
        ensure!(
            left.is_empty(),
            "files left after removing everything: {left:?}"
        );
        Ok(())
    }
}
