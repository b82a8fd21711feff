//! The catalog contract suite: every [`CatalogBackend`] implementation (the in-tree `sqlite`
//! and `redb` catalogs, or a third-party one) must pass all of these cases.
//!
//! Modelled on containerd's `MetaStoreSuite`: a list of named async cases ([`cases`]), each run
//! against a **fresh** catalog in a **fresh** temporary home, and a macro,
//! [`catalog_suite_tests!`](crate::catalog_suite_tests), that stamps one `#[test]` per case
//! into the caller's test crate:
//!
//! ```ignore
//! // tests/suite.rs of a catalog crate
//! use std::sync::Arc;
//! boxlite_conformance::catalog_suite_tests!(|home: &std::path::Path| {
//!     Ok(Arc::new(my_catalog::MyCatalog::open(home)?) as Arc<dyn boxlite_api::CatalogBackend>)
//! });
//! ```
//!
//! The open function gets the home directory (it exists and is empty the first time) and must
//! open the catalog there; cases call it again on the same home to check persistence
//! ([`CatalogHarness::open`]), so it must be able to reopen an existing catalog.
//!
//! Each case checks exact record contents, typed errors, ordering, atomicity of
//! [`CatalogBackend::apply`] and behaviour under concurrent use from many tasks.

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use boxlite_api::{
    BoxId, BoxRecord, BoxStatus, CatalogBackend, CatalogOp, DiskSet, Error, JournalEntry,
    ObjectKind, SnapshotRecord,
};
use chrono::{DateTime, TimeZone, Utc};

/// What a case returns: `Err` holds a human-readable description of the first violated
/// expectation.
pub type CaseResult = Result<(), String>;

/// The future a case runs as.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send + 'static>>;

/// Opens (or reopens) the catalog under test in the given home directory.
pub type OpenCatalog =
    Arc<dyn Fn(&Path) -> boxlite_api::Result<Arc<dyn CatalogBackend>> + Send + Sync>;

/// Time limit for one case, after which it fails (a deadlock, a lock wait that never ends).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a case gets: its own home directory and a way to open the catalog there.
#[derive(Clone)]
pub struct CatalogHarness {
    home: PathBuf,
    open: OpenCatalog,
}

impl CatalogHarness {
    /// Build a harness for `home` (an existing directory) and the `open` function.
    pub fn new(home: PathBuf, open: OpenCatalog) -> CatalogHarness {
        CatalogHarness { home, open }
    }

    /// The home directory of this case (a fresh temporary directory).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Open the catalog in this case's home (again): the second call checks persistence.
    ///
    /// Errors: the implementation's open error, as text.
    pub fn open(&self) -> Result<Arc<dyn CatalogBackend>, String> {
        (self.open)(&self.home).map_err(|e| format!("opening the catalog: {e}"))
    }
}

/// One named case of the suite.
#[derive(Clone, Copy)]
pub struct CatalogCase {
    /// The case's name (also the `#[test]` function name stamped by the macro).
    pub name: &'static str,
    /// Runs the case against a harness whose home is fresh.
    pub run: fn(CatalogHarness) -> CaseFuture,
}

impl Debug for CatalogCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCase")
            .field("name", &self.name)
            .finish()
    }
}

/// The outcome of one case in [`run_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: &'static str,
    /// `Ok` or the failure description.
    pub result: CaseResult,
    /// Wall time of the case, including opening the catalog.
    pub elapsed: Duration,
}

/// The single list of case names. Used by [`cases`] and by
/// [`catalog_suite_tests!`](crate::catalog_suite_tests), so the two never disagree.
#[doc(hidden)]
#[macro_export]
macro_rules! __catalog_suite_case_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { { $($args)* }
            box_insert_get_find_list,
            box_duplicate_name_is_already_exists,
            box_duplicate_id_is_already_exists,
            box_nameless_boxes_coexist,
            box_status_compare_and_set,
            box_status_mismatch_is_busy_with_actual_status,
            box_ops_on_unknown_box_are_not_found,
            box_set_disks,
            box_remove_frees_the_name,
            unknown_lookups_are_none_or_empty,
            records_round_trip_exactly,
            snapshot_insert_get_list,
            snapshot_order_is_created_at_then_insertion,
            snapshot_name_unique_per_box,
            snapshot_of_unknown_box_is_not_found,
            snapshot_remove,
            box_remove_cascades_snapshots,
            list_all_snapshots_covers_every_box,
            apply_batch_is_atomic,
            apply_ops_run_in_order,
            apply_empty_batch_is_ok,
            journal_insert_list_remove,
            journal_duplicate_id_is_already_exists,
            reopen_persists_everything,
            schema_version_is_stable,
            concurrent_apply_many_tasks,
            concurrent_insert_same_snapshot_exactly_one,
            concurrent_status_cas_exactly_one,
            readers_see_whole_batches,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __catalog_suite_build_cases {
    ({} $($case:ident),* $(,)?) => {
        vec![$(
            $crate::catalog_suite::CatalogCase {
                name: stringify!($case),
                run: |h| -> $crate::catalog_suite::CaseFuture {
                    ::std::boxed::Box::pin($crate::catalog_suite::cases_impl::$case(h))
                },
            }
        ),*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __catalog_suite_stamp {
    ({ $open:expr } $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::catalog_suite::run_named_blocking(stringify!($case), $open);
            }
        )*
    };
}

/// Stamp one `#[test]` per catalog case into a module `catalog_suite` of the calling crate.
///
/// The argument is an expression usable as
/// `Fn(&Path) -> boxlite_api::Result<Arc<dyn CatalogBackend>> + Send + Sync + 'static`
/// (a closure or a function path); it is evaluated once per test. Each test builds its own
/// multi-threaded tokio runtime, so the caller needs no async test framework.
#[macro_export]
macro_rules! catalog_suite_tests {
    ($open:expr) => {
        mod catalog_suite {
            #[allow(unused_imports)]
            use super::*;
            $crate::__catalog_suite_case_names!(__catalog_suite_stamp { $open });
        }
    };
}

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<CatalogCase> {
    crate::__catalog_suite_case_names!(__catalog_suite_build_cases {})
}

/// Run one case in a fresh temporary home, with [`CASE_TIMEOUT`].
///
/// Errors: the case's failure, or a description of the harness failure (no temp dir, timeout).
pub async fn run_case(case: &CatalogCase, open: OpenCatalog) -> CaseResult {
    let tmp = tempfile::Builder::new()
        .prefix("boxlite-catalog-suite-")
        .tempdir()
        .map_err(|e| format!("creating a temporary home: {e}"))?;
    let harness = CatalogHarness::new(tmp.path().to_path_buf(), open);
    match tokio::time::timeout(CASE_TIMEOUT, (case.run)(harness)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "case {} did not finish within {CASE_TIMEOUT:?} (deadlock?)",
            case.name
        )),
    }
}

/// Run every case, each against a fresh catalog in a fresh temporary home, one after another.
/// Must be called inside a multi-threaded tokio runtime.
pub async fn run_all<F>(open: F) -> Vec<CaseOutcome>
where
    F: Fn(&Path) -> boxlite_api::Result<Arc<dyn CatalogBackend>> + Send + Sync + 'static,
{
    let open: OpenCatalog = Arc::new(open);
    let mut out = Vec::new();
    for case in cases() {
        let start = std::time::Instant::now();
        let result = run_case(&case, Arc::clone(&open)).await;
        out.push(CaseOutcome {
            name: case.name,
            result,
            elapsed: start.elapsed(),
        });
    }
    out
}

/// Run the case called `name` on a new multi-threaded tokio runtime; panic with the failure.
/// This is what the tests stamped by [`catalog_suite_tests!`](crate::catalog_suite_tests) call.
///
/// Panics: when the case fails, when no case has that name, or when no runtime can be built.
pub fn run_named_blocking<F>(name: &str, open: F)
where
    F: Fn(&Path) -> boxlite_api::Result<Arc<dyn CatalogBackend>> + Send + Sync + 'static,
{
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no catalog case named {name}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a tokio runtime: {e}"));
    let open: OpenCatalog = Arc::new(open);
    if let Err(msg) = rt.block_on(run_case(&case, open)) {
        panic!("catalog case {name} failed: {msg}");
    }
}

/// The cases themselves. Public only so that the macros can reach them; use [`cases`].
#[doc(hidden)]
pub mod cases_impl {
    use super::*;

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    /// 2024-05-01T12:00:00Z + `secs` seconds + `nanos` nanoseconds.
    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        let base = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("a valid fixed date");
        base + chrono::Duration::seconds(secs) + chrono::Duration::nanoseconds(nanos as i64)
    }

    fn disks(tag: &str) -> DiskSet {
        DiskSet {
            guest_rootfs: PathBuf::from(format!("boxes/{tag}/guest-rootfs.qcow2")),
            container: PathBuf::from(format!("boxes/{tag}/disk.qcow2")),
        }
    }

    fn new_box(name: Option<&str>, created_at: DateTime<Utc>) -> BoxRecord {
        let id = BoxId::generate();
        BoxRecord {
            disks: disks(id.as_str()),
            id,
            name: name.map(str::to_owned),
            status: BoxStatus::Stopped,
            created_at,
            image: "alpine-3.19.qcow2".to_owned(),
            storage: "qcow2".to_owned(),
        }
    }

    fn snap(b: &BoxRecord, name: &str, created_at: DateTime<Utc>) -> SnapshotRecord {
        SnapshotRecord {
            box_id: b.id.clone(),
            name: name.to_owned(),
            created_at,
            disks: disks(&format!("{}/snapshots/{name}", b.id)),
            guest_disk_bytes: 1 << 20,
            container_disk_bytes: 3 << 20,
        }
    }

    fn journal(id: &str, b: Option<&BoxRecord>, started_at: DateTime<Utc>) -> JournalEntry {
        JournalEntry {
            id: id.to_owned(),
            operation: "snapshot_create".to_owned(),
            box_id: b.map(|b| b.id.clone()),
            prior_status: b.map(|b| b.status),
            owner_pid: 4242,
            started_at,
            staged: vec![PathBuf::from(format!("/home/boxlite/staging/{id}"))],
        }
    }

    fn label(b: &BoxRecord) -> String {
        b.name.clone().unwrap_or_else(|| b.id.to_string())
    }

    fn eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> CaseResult {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}:\n  got:  {got:?}\n  want: {want:?}"))
        }
    }

    fn ensure(cond: bool, what: impl FnOnce() -> String) -> CaseResult {
        if cond {
            Ok(())
        } else {
            Err(what())
        }
    }

    fn ok<T>(what: &str, r: boxlite_api::Result<T>) -> Result<T, String> {
        r.map_err(|e| format!("{what}: unexpected error: {e} ({e:?})"))
    }

    fn err<T: Debug>(what: &str, r: boxlite_api::Result<T>) -> Result<Error, String> {
        match r {
            Ok(v) => Err(format!("{what}: expected an error, got Ok({v:?})")),
            Err(e) => Ok(e),
        }
    }

    async fn apply(c: &Arc<dyn CatalogBackend>, what: &str, ops: Vec<CatalogOp>) -> CaseResult {
        ok(what, c.apply(ops).await)
    }

    async fn insert_box(c: &Arc<dyn CatalogBackend>, b: &BoxRecord) -> CaseResult {
        apply(c, "InsertBox", vec![CatalogOp::InsertBox(b.clone())]).await
    }

    async fn insert_snap(c: &Arc<dyn CatalogBackend>, s: &SnapshotRecord) -> CaseResult {
        apply(
            c,
            "InsertSnapshot",
            vec![CatalogOp::InsertSnapshot(s.clone())],
        )
        .await
    }

    fn expect_not_found_box(what: &str, e: &Error, id: &BoxId) -> CaseResult {
        match e {
            Error::NotFound {
                kind: ObjectKind::Box,
                name,
                ..
            } if name == id.as_str() => Ok(()),
            other => Err(format!(
                "{what}: expected NotFound {{ kind: Box, name: {id} }}, got {other:?}"
            )),
        }
    }

    /// A predicate on the error a case expects.
    type ErrorCheck = fn(&Error) -> bool;

    /// Everything the catalog holds, for before/after comparisons.
    #[derive(Debug, Clone, PartialEq)]
    struct Dump {
        boxes: Vec<BoxRecord>,
        snapshots: Vec<SnapshotRecord>,
        per_box: Vec<Vec<SnapshotRecord>>,
        journal: Vec<JournalEntry>,
    }

    async fn dump(c: &Arc<dyn CatalogBackend>) -> Result<Dump, String> {
        let boxes = ok("list_boxes", c.list_boxes().await)?;
        let mut snapshots = ok("list_all_snapshots", c.list_all_snapshots().await)?;
        snapshots.sort_by(|a, b| (&a.box_id, &a.name).cmp(&(&b.box_id, &b.name)));
        let mut per_box = Vec::new();
        for b in &boxes {
            per_box.push(ok("list_snapshots", c.list_snapshots(&b.id).await)?);
        }
        let journal = ok("list_journal", c.list_journal().await)?;
        Ok(Dump {
            boxes,
            snapshots,
            per_box,
            journal,
        })
    }

    fn sorted(mut v: Vec<SnapshotRecord>) -> Vec<SnapshotRecord> {
        v.sort_by(|a, b| (&a.box_id, &a.name).cmp(&(&b.box_id, &b.name)));
        v
    }

    // -----------------------------------------------------------------------------------------
    // Boxes
    // -----------------------------------------------------------------------------------------

    /// Insert three boxes (one nameless, two with the same created_at), read each back by id
    /// and name, and list them in creation order with ties in insertion order.
    pub async fn box_insert_get_find_list(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let web = new_box(Some("web"), at(10, 123_456_789));
        let db = new_box(Some("db"), at(5, 1));
        let anon = new_box(None, at(10, 123_456_789));
        insert_box(&c, &web).await?;
        insert_box(&c, &db).await?;
        insert_box(&c, &anon).await?;
        eq(
            "get_box(web)",
            ok("get_box", c.get_box(&web.id).await)?,
            Some(web.clone()),
        )?;
        eq(
            "get_box(anon)",
            ok("get_box", c.get_box(&anon.id).await)?,
            Some(anon.clone()),
        )?;
        eq(
            "find_box(web)",
            ok("find_box", c.find_box("web").await)?,
            Some(web.clone()),
        )?;
        eq(
            "find_box(db)",
            ok("find_box", c.find_box("db").await)?,
            Some(db.clone()),
        )?;
        eq(
            "list_boxes (created_at, then insertion order)",
            ok("list_boxes", c.list_boxes().await)?,
            vec![db, web, anon],
        )
    }

    /// A second box with a taken name is `AlreadyExists { kind: Box, name }` and changes nothing.
    pub async fn box_duplicate_name_is_already_exists(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let first = new_box(Some("web"), at(0, 0));
        insert_box(&c, &first).await?;
        let mut second = new_box(Some("web"), at(1, 0));
        second.image = "other".into();
        let e = err(
            "InsertBox with a taken name",
            c.apply(vec![CatalogOp::InsertBox(second.clone())]).await,
        )?;
        match &e {
            Error::AlreadyExists {
                kind: ObjectKind::Box,
                name,
                ..
            } if name == "web" => {}
            other => {
                return Err(format!(
                    "expected AlreadyExists {{ kind: Box, name: \"web\" }}, got {other:?}"
                ))
            }
        }
        eq(
            "get_box(second)",
            ok("get_box", c.get_box(&second.id).await)?,
            None,
        )?;
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![first.clone()],
        )?;
        eq(
            "find_box(web)",
            ok("find_box", c.find_box("web").await)?,
            Some(first),
        )
    }

    /// A second box with a taken id is `AlreadyExists { kind: Box }` and changes nothing.
    pub async fn box_duplicate_id_is_already_exists(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let first = new_box(Some("web"), at(0, 0));
        insert_box(&c, &first).await?;
        let mut second = first.clone();
        second.name = Some("api".into());
        let e = err(
            "InsertBox with a taken id",
            c.apply(vec![CatalogOp::InsertBox(second)]).await,
        )?;
        ensure(
            matches!(
                &e,
                Error::AlreadyExists { kind: ObjectKind::Box, name, .. }
                    if name == first.id.as_str() || name == "api"
            ),
            || format!("expected AlreadyExists {{ kind: Box }} naming the id, got {e:?}"),
        )?;
        eq(
            "find_box(api)",
            ok("find_box", c.find_box("api").await)?,
            None,
        )?;
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![first],
        )
    }

    /// Any number of boxes may have no name.
    pub async fn box_nameless_boxes_coexist(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let boxes: Vec<_> = (0..4).map(|i| new_box(None, at(i, 0))).collect();
        for b in &boxes {
            insert_box(&c, b).await?;
        }
        for b in &boxes {
            eq(
                "get_box(nameless)",
                ok("get_box", c.get_box(&b.id).await)?,
                Some(b.clone()),
            )?;
        }
        eq("list_boxes", ok("list_boxes", c.list_boxes().await)?, boxes)?;
        eq(
            "find_box(\"\")",
            ok("find_box", c.find_box("").await)?,
            None,
        )
    }

    /// Status compare-and-set succeeds when `expected` matches and changes only the status.
    pub async fn box_status_compare_and_set(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        for (from, to) in [
            (BoxStatus::Stopped, BoxStatus::Snapshotting),
            (BoxStatus::Snapshotting, BoxStatus::Stopped),
            (BoxStatus::Stopped, BoxStatus::Running),
            (BoxStatus::Running, BoxStatus::Exporting),
            (BoxStatus::Exporting, BoxStatus::Running),
            (BoxStatus::Running, BoxStatus::Running),
        ] {
            apply(
                &c,
                &format!("SetBoxStatus {from} -> {to}"),
                vec![CatalogOp::SetBoxStatus {
                    box_id: b.id.clone(),
                    expected: from,
                    new: to,
                }],
            )
            .await?;
            b.status = to;
            eq(
                &format!("box after {from} -> {to}"),
                ok("get_box", c.get_box(&b.id).await)?,
                Some(b.clone()),
            )?;
        }
        Ok(())
    }

    /// A failed compare-and-set is `Busy { box_name, status: actual }` (the id for a nameless
    /// box) and changes nothing.
    pub async fn box_status_mismatch_is_busy_with_actual_status(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut named = new_box(Some("web"), at(0, 0));
        named.status = BoxStatus::Running;
        let mut anon = new_box(None, at(1, 0));
        anon.status = BoxStatus::Restoring;
        insert_box(&c, &named).await?;
        insert_box(&c, &anon).await?;
        for b in [&named, &anon] {
            let e = err(
                "SetBoxStatus with a wrong expected status",
                c.apply(vec![CatalogOp::SetBoxStatus {
                    box_id: b.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Snapshotting,
                }])
                .await,
            )?;
            match &e {
                Error::Busy { box_name, status }
                    if *box_name == label(b) && *status == b.status => {}
                other => {
                    return Err(format!(
                        "expected Busy {{ box_name: {:?}, status: {} }}, got {other:?}",
                        label(b),
                        b.status
                    ))
                }
            }
            eq(
                "box after a failed CAS",
                ok("get_box", c.get_box(&b.id).await)?,
                Some(b.clone()),
            )?;
        }
        Ok(())
    }

    /// SetBoxStatus, SetBoxDisks and RemoveBox on an unknown id are `NotFound { kind: Box }`.
    pub async fn box_ops_on_unknown_box_are_not_found(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let other = new_box(Some("web"), at(0, 0));
        insert_box(&c, &other).await?;
        let ghost = BoxId::generate();
        let ops = [
            CatalogOp::SetBoxStatus {
                box_id: ghost.clone(),
                expected: BoxStatus::Stopped,
                new: BoxStatus::Running,
            },
            CatalogOp::SetBoxDisks {
                box_id: ghost.clone(),
                disks: disks("x"),
            },
            CatalogOp::RemoveBox {
                box_id: ghost.clone(),
            },
        ];
        for op in ops {
            let what = format!("{op:?}");
            let e = err(&what, c.apply(vec![op]).await)?;
            expect_not_found_box(&what, &e, &ghost)?;
        }
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![other],
        )
    }

    /// SetBoxDisks replaces the live disks and nothing else (snapshots keep theirs).
    pub async fn box_set_disks(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let s = snap(&b, "v1", at(1, 0));
        insert_snap(&c, &s).await?;
        let new = DiskSet {
            guest_rootfs: "layers/0001/guest-rootfs.qcow2".into(),
            container: "layers/0001/disk.qcow2".into(),
        };
        apply(
            &c,
            "SetBoxDisks",
            vec![CatalogOp::SetBoxDisks {
                box_id: b.id.clone(),
                disks: new.clone(),
            }],
        )
        .await?;
        b.disks = new;
        eq(
            "get_box",
            ok("get_box", c.get_box(&b.id).await)?,
            Some(b.clone()),
        )?;
        eq(
            "find_box",
            ok("find_box", c.find_box("web").await)?,
            Some(b.clone()),
        )?;
        eq(
            "snapshot after SetBoxDisks",
            ok("get_snapshot", c.get_snapshot(&b.id, "v1").await)?,
            Some(s),
        )
    }

    /// RemoveBox removes the box; its name can be used again; a second remove is `NotFound`.
    pub async fn box_remove_frees_the_name(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        let keep = new_box(Some("db"), at(1, 0));
        insert_box(&c, &b).await?;
        insert_box(&c, &keep).await?;
        apply(
            &c,
            "RemoveBox",
            vec![CatalogOp::RemoveBox {
                box_id: b.id.clone(),
            }],
        )
        .await?;
        eq(
            "get_box(removed)",
            ok("get_box", c.get_box(&b.id).await)?,
            None,
        )?;
        eq(
            "find_box(removed)",
            ok("find_box", c.find_box("web").await)?,
            None,
        )?;
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![keep.clone()],
        )?;
        let e = err(
            "second RemoveBox",
            c.apply(vec![CatalogOp::RemoveBox {
                box_id: b.id.clone(),
            }])
            .await,
        )?;
        expect_not_found_box("second RemoveBox", &e, &b.id)?;
        let again = new_box(Some("web"), at(2, 0));
        insert_box(&c, &again).await?;
        eq(
            "find_box(reused name)",
            ok("find_box", c.find_box("web").await)?,
            Some(again.clone()),
        )?;
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![keep, again],
        )
    }

    /// Lookups of unknown objects are `Ok(None)` / empty lists, never errors.
    pub async fn unknown_lookups_are_none_or_empty(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let ghost = BoxId::generate();
        eq(
            "list_boxes (empty)",
            ok("list_boxes", c.list_boxes().await)?,
            vec![],
        )?;
        eq(
            "list_all_snapshots (empty)",
            ok("list_all_snapshots", c.list_all_snapshots().await)?,
            vec![],
        )?;
        eq(
            "list_journal (empty)",
            ok("list_journal", c.list_journal().await)?,
            vec![],
        )?;
        eq(
            "get_box(unknown)",
            ok("get_box", c.get_box(&ghost).await)?,
            None,
        )?;
        eq(
            "find_box(unknown)",
            ok("find_box", c.find_box("nope").await)?,
            None,
        )?;
        eq(
            "get_snapshot(unknown box)",
            ok("get_snapshot", c.get_snapshot(&ghost, "v1").await)?,
            None,
        )?;
        eq(
            "list_snapshots(unknown box)",
            ok("list_snapshots", c.list_snapshots(&ghost).await)?,
            vec![],
        )?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        eq(
            "get_snapshot(unknown name)",
            ok("get_snapshot", c.get_snapshot(&b.id, "v1").await)?,
            None,
        )?;
        eq(
            "list_snapshots(no snapshots)",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            vec![],
        )?;
        eq(
            "find_box(case differs)",
            ok("find_box", c.find_box("WEB").await)?,
            None,
        )
    }

    /// Unusual but valid values survive a round trip byte for byte: nanosecond times, Unicode
    /// and quotes in text and paths, large sizes, pid u32::MAX, empty staged lists.
    pub async fn records_round_trip_exactly(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut b = new_box(Some("a.b_c-9"), at(0, 999_999_999));
        b.image = "über \"image\" 'q' ; DROP TABLE x; -- 镜像".into();
        b.storage = "reflink".into();
        b.status = BoxStatus::Cloning;
        b.disks = DiskSet {
            guest_rootfs: "boxes/with space/ünïcödé/guest-rootfs.qcow2".into(),
            container: "boxes/%s/'quote'/disk.qcow2".into(),
        };
        let old = {
            let mut o = new_box(
                None,
                Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0)
                    .single()
                    .ok_or("date")?,
            );
            o.status = BoxStatus::Exporting;
            o
        };
        insert_box(&c, &b).await?;
        insert_box(&c, &old).await?;
        let mut s = snap(&b, "snap.1_x-y", at(3, 1));
        s.guest_disk_bytes = 0;
        s.container_disk_bytes = 1 << 62;
        s.disks.guest_rootfs = "layers/ü/é.qcow2".into();
        insert_snap(&c, &s).await?;
        let j = JournalEntry {
            id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            operation: "import".into(),
            box_id: None,
            prior_status: None,
            owner_pid: u32::MAX,
            started_at: at(4, 5),
            staged: vec![],
        };
        let mut j2 = journal("j2", Some(&b), at(4, 6));
        j2.staged = vec![
            "/home/ü/staging/a b".into(),
            "/tmp/\"x\"".into(),
            "relative/path".into(),
        ];
        apply(
            &c,
            "InsertJournal x2",
            vec![
                CatalogOp::InsertJournal(j.clone()),
                CatalogOp::InsertJournal(j2.clone()),
            ],
        )
        .await?;
        eq(
            "get_box",
            ok("get_box", c.get_box(&b.id).await)?,
            Some(b.clone()),
        )?;
        eq(
            "find_box",
            ok("find_box", c.find_box("a.b_c-9").await)?,
            Some(b.clone()),
        )?;
        eq(
            "get_box(1970)",
            ok("get_box", c.get_box(&old.id).await)?,
            Some(old.clone()),
        )?;
        eq(
            "list_boxes",
            ok("list_boxes", c.list_boxes().await)?,
            vec![old, b.clone()],
        )?;
        eq(
            "get_snapshot",
            ok("get_snapshot", c.get_snapshot(&b.id, &s.name).await)?,
            Some(s.clone()),
        )?;
        eq(
            "list_journal",
            ok("list_journal", c.list_journal().await)?,
            vec![j, j2],
        )
    }

    // -----------------------------------------------------------------------------------------
    // Snapshots
    // -----------------------------------------------------------------------------------------

    /// Insert snapshots, get them by (box, name), list them per box.
    pub async fn snapshot_insert_get_list(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let s1 = snap(&b, "v1", at(1, 0));
        let mut s2 = snap(&b, "v2", at(2, 0));
        s2.guest_disk_bytes = 7;
        s2.container_disk_bytes = 11;
        insert_snap(&c, &s1).await?;
        insert_snap(&c, &s2).await?;
        eq(
            "get_snapshot(v1)",
            ok("get_snapshot", c.get_snapshot(&b.id, "v1").await)?,
            Some(s1.clone()),
        )?;
        eq(
            "get_snapshot(v2)",
            ok("get_snapshot", c.get_snapshot(&b.id, "v2").await)?,
            Some(s2.clone()),
        )?;
        eq(
            "list_snapshots",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            vec![s1.clone(), s2.clone()],
        )?;
        eq(
            "list_all_snapshots",
            sorted(ok("list_all_snapshots", c.list_all_snapshots().await)?),
            vec![s1, s2],
        )?;
        eq(
            "box unchanged",
            ok("get_box", c.get_box(&b.id).await)?,
            Some(b),
        )
    }

    /// list_snapshots orders by created_at (nanosecond precision); equal times keep insertion
    /// order, whatever the names, within one batch and across batches.
    pub async fn snapshot_order_is_created_at_then_insertion(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let late = snap(&b, "late", at(30, 0));
        let first = snap(&b, "first", at(10, 0));
        let first_plus_1ns = snap(&b, "a-one-ns-later", at(10, 1));
        let tie_z = snap(&b, "zeta", at(20, 0));
        let tie_a = snap(&b, "alpha", at(20, 0));
        let tie_m = snap(&b, "mid", at(20, 0));
        let tie_b = snap(&b, "beta", at(20, 0));
        insert_snap(&c, &late).await?;
        insert_snap(&c, &first_plus_1ns).await?;
        insert_snap(&c, &tie_z).await?;
        apply(
            &c,
            "batch of tied snapshots",
            vec![
                CatalogOp::InsertSnapshot(tie_a.clone()),
                CatalogOp::InsertSnapshot(tie_m.clone()),
            ],
        )
        .await?;
        insert_snap(&c, &first).await?;
        insert_snap(&c, &tie_b).await?;
        let want = vec![first, first_plus_1ns, tie_z, tie_a, tie_m, tie_b, late];
        eq(
            "list_snapshots order",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            want.clone(),
        )?;
        // Removing one of the tied snapshots keeps the others' order.
        apply(
            &c,
            "RemoveSnapshot(alpha)",
            vec![CatalogOp::RemoveSnapshot {
                box_id: b.id.clone(),
                name: "alpha".into(),
            }],
        )
        .await?;
        let want: Vec<_> = want.into_iter().filter(|s| s.name != "alpha").collect();
        eq(
            "list_snapshots after remove",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            want,
        )
    }

    /// `(box_id, name)` is unique: a duplicate is `AlreadyExists { kind: Snapshot, name,
    /// box_name }` (box name, or id when nameless) and keeps the first; the same name in
    /// another box is fine.
    pub async fn snapshot_name_unique_per_box(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let a = new_box(Some("web"), at(0, 0));
        let anon = new_box(None, at(1, 0));
        insert_box(&c, &a).await?;
        insert_box(&c, &anon).await?;
        let first = snap(&a, "v1", at(1, 0));
        insert_snap(&c, &first).await?;
        let anon_v1 = snap(&anon, "v1", at(1, 0));
        insert_snap(&c, &anon_v1).await?;
        for (b, original) in [(&a, &first), (&anon, &anon_v1)] {
            let mut dup = snap(b, "v1", at(5, 0));
            dup.disks = disks("dup");
            let e = err(
                "duplicate InsertSnapshot",
                c.apply(vec![CatalogOp::InsertSnapshot(dup)]).await,
            )?;
            match &e {
                Error::AlreadyExists {
                    kind: ObjectKind::Snapshot,
                    name,
                    box_name: Some(bn),
                } if name == "v1" && *bn == label(b) => {}
                other => {
                    return Err(format!(
                        "expected AlreadyExists {{ kind: Snapshot, name: \"v1\", box_name: \
                         Some({:?}) }}, got {other:?}",
                        label(b)
                    ))
                }
            }
            eq(
                "the first snapshot is kept",
                ok("list_snapshots", c.list_snapshots(&b.id).await)?,
                vec![original.clone()],
            )?;
        }
        Ok(())
    }

    /// InsertSnapshot for an unknown box is `NotFound { kind: Box }` and inserts nothing.
    pub async fn snapshot_of_unknown_box_is_not_found(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let ghost = new_box(Some("ghost"), at(0, 0));
        let e = err(
            "InsertSnapshot for an unknown box",
            c.apply(vec![CatalogOp::InsertSnapshot(snap(
                &ghost,
                "v1",
                at(1, 0),
            ))])
            .await,
        )?;
        expect_not_found_box("InsertSnapshot for an unknown box", &e, &ghost.id)?;
        eq(
            "list_all_snapshots",
            ok("list_all_snapshots", c.list_all_snapshots().await)?,
            vec![],
        )?;
        eq(
            "get_snapshot",
            ok("get_snapshot", c.get_snapshot(&ghost.id, "v1").await)?,
            None,
        )
    }

    /// RemoveSnapshot removes exactly one snapshot; removing it again is `NotFound { kind:
    /// Snapshot, name, box_name }`; the name can then be reused (and sorts by its new time).
    pub async fn snapshot_remove(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        let other = new_box(Some("db"), at(0, 0));
        insert_box(&c, &b).await?;
        insert_box(&c, &other).await?;
        let v1 = snap(&b, "v1", at(1, 0));
        let v2 = snap(&b, "v2", at(2, 0));
        let other_v1 = snap(&other, "v1", at(1, 0));
        for s in [&v1, &v2, &other_v1] {
            insert_snap(&c, s).await?;
        }
        let rm = || CatalogOp::RemoveSnapshot {
            box_id: b.id.clone(),
            name: "v1".into(),
        };
        apply(&c, "RemoveSnapshot(v1)", vec![rm()]).await?;
        eq(
            "get_snapshot(removed)",
            ok("get_snapshot", c.get_snapshot(&b.id, "v1").await)?,
            None,
        )?;
        eq(
            "list_snapshots",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            vec![v2.clone()],
        )?;
        eq(
            "other box's v1",
            ok("get_snapshot", c.get_snapshot(&other.id, "v1").await)?,
            Some(other_v1.clone()),
        )?;
        let e = err("second RemoveSnapshot", c.apply(vec![rm()]).await)?;
        match &e {
            Error::NotFound {
                kind: ObjectKind::Snapshot,
                name,
                box_name: Some(bn),
            } if name == "v1" && bn == "web" => {}
            other => {
                return Err(format!(
                    "expected NotFound {{ kind: Snapshot, name: \"v1\", box_name: Some(\"web\") }}, got {other:?}"
                ))
            }
        }
        let e = err(
            "RemoveSnapshot on an unknown box",
            c.apply(vec![CatalogOp::RemoveSnapshot {
                box_id: BoxId::generate(),
                name: "v1".into(),
            }])
            .await,
        )?;
        ensure(matches!(e, Error::NotFound { .. }), || {
            format!("RemoveSnapshot on an unknown box: expected NotFound, got {e:?}")
        })?;
        let v1_again = snap(&b, "v1", at(3, 0));
        insert_snap(&c, &v1_again).await?;
        eq(
            "list_snapshots after reuse",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            vec![v2, v1_again],
        )
    }

    /// RemoveBox removes the box's snapshots in the same transaction, and only those.
    pub async fn box_remove_cascades_snapshots(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let a = new_box(Some("web"), at(0, 0));
        let b = new_box(Some("db"), at(1, 0));
        insert_box(&c, &a).await?;
        insert_box(&c, &b).await?;
        for n in ["v1", "v2", "v3"] {
            insert_snap(&c, &snap(&a, n, at(2, 0))).await?;
        }
        let keep = snap(&b, "v1", at(2, 0));
        insert_snap(&c, &keep).await?;
        let j = journal("j1", Some(&a), at(3, 0));
        apply(
            &c,
            "InsertJournal",
            vec![CatalogOp::InsertJournal(j.clone())],
        )
        .await?;
        apply(
            &c,
            "RemoveBox",
            vec![CatalogOp::RemoveBox {
                box_id: a.id.clone(),
            }],
        )
        .await?;
        eq(
            "list_snapshots(removed box)",
            ok("list_snapshots", c.list_snapshots(&a.id).await)?,
            vec![],
        )?;
        for n in ["v1", "v2", "v3"] {
            eq(
                "get_snapshot(removed box)",
                ok("get_snapshot", c.get_snapshot(&a.id, n).await)?,
                None,
            )?;
        }
        eq(
            "list_all_snapshots",
            ok("list_all_snapshots", c.list_all_snapshots().await)?,
            vec![keep.clone()],
        )?;
        eq(
            "list_snapshots(other box)",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            vec![keep],
        )?;
        eq(
            "journal is not cascaded",
            ok("list_journal", c.list_journal().await)?,
            vec![j],
        )?;
        // A new box with the removed box's name starts with no snapshots.
        let a2 = new_box(Some("web"), at(4, 0));
        insert_box(&c, &a2).await?;
        eq(
            "list_snapshots(new box, old name)",
            ok("list_snapshots", c.list_snapshots(&a2.id).await)?,
            vec![],
        )
    }

    /// list_all_snapshots returns every snapshot of every box.
    pub async fn list_all_snapshots_covers_every_box(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut want = Vec::new();
        for i in 0..3 {
            let b = new_box(
                if i == 1 {
                    None
                } else {
                    Some(["a", "b", "c"][i])
                },
                at(i as i64, 0),
            );
            insert_box(&c, &b).await?;
            for j in 0..=i {
                let s = snap(&b, &format!("s{j}"), at(10 + j as i64, 0));
                insert_snap(&c, &s).await?;
                want.push(s);
            }
        }
        eq(
            "list_all_snapshots",
            sorted(ok("list_all_snapshots", c.list_all_snapshots().await)?),
            sorted(want),
        )
    }

    // -----------------------------------------------------------------------------------------
    // Transactions
    // -----------------------------------------------------------------------------------------

    /// A batch whose last op fails changes nothing in any table, whatever the failure
    /// (AlreadyExists, Busy, NotFound), and the catalog stays usable.
    pub async fn apply_batch_is_atomic(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let a = new_box(Some("web"), at(0, 0));
        let b = new_box(Some("db"), at(1, 0));
        insert_box(&c, &a).await?;
        insert_box(&c, &b).await?;
        insert_snap(&c, &snap(&a, "s1", at(2, 0))).await?;
        insert_snap(&c, &snap(&b, "s1", at(2, 0))).await?;
        apply(
            &c,
            "InsertJournal",
            vec![CatalogOp::InsertJournal(journal("j1", Some(&a), at(3, 0)))],
        )
        .await?;
        let before = dump(&c).await?;
        let body = || {
            vec![
                CatalogOp::InsertBox(new_box(Some("new"), at(5, 0))),
                CatalogOp::SetBoxStatus {
                    box_id: a.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Snapshotting,
                },
                CatalogOp::InsertSnapshot(snap(&a, "s2", at(5, 0))),
                CatalogOp::SetBoxDisks {
                    box_id: a.id.clone(),
                    disks: disks("changed"),
                },
                CatalogOp::RemoveSnapshot {
                    box_id: a.id.clone(),
                    name: "s1".into(),
                },
                CatalogOp::InsertJournal(journal("j2", None, at(5, 0))),
                CatalogOp::RemoveJournal { id: "j1".into() },
                CatalogOp::RemoveBox {
                    box_id: b.id.clone(),
                },
            ]
        };
        let failing_last: Vec<(&str, CatalogOp, ErrorCheck)> = vec![
            (
                "duplicate snapshot inserted earlier in the batch",
                CatalogOp::InsertSnapshot(snap(&a, "s2", at(6, 0))),
                |e| {
                    matches!(
                        e,
                        Error::AlreadyExists {
                            kind: ObjectKind::Snapshot,
                            ..
                        }
                    )
                },
            ),
            (
                "status compare-and-set against the status set earlier in the batch",
                CatalogOp::SetBoxStatus {
                    box_id: a.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Restoring,
                },
                |e| {
                    matches!(
                        e,
                        Error::Busy {
                            status: BoxStatus::Snapshotting,
                            ..
                        }
                    )
                },
            ),
            (
                "snapshot of the box removed earlier in the batch",
                CatalogOp::InsertSnapshot(snap(&b, "s9", at(6, 0))),
                |e| {
                    matches!(
                        e,
                        Error::NotFound {
                            kind: ObjectKind::Box,
                            ..
                        }
                    )
                },
            ),
            (
                "duplicate box name inserted earlier in the batch",
                CatalogOp::InsertBox(new_box(Some("new"), at(6, 0))),
                |e| {
                    matches!(
                        e,
                        Error::AlreadyExists {
                            kind: ObjectKind::Box,
                            ..
                        }
                    )
                },
            ),
        ];
        for (what, last, expected) in failing_last {
            let mut ops = body();
            ops.push(last);
            let e = err(what, c.apply(ops).await)?;
            ensure(expected(&e), || format!("{what}: unexpected error {e:?}"))?;
            eq(
                &format!("catalog after a failed batch ({what})"),
                dump(&c).await?,
                before.clone(),
            )?;
        }
        // Still usable, and the same batch without the failing op commits.
        apply(&c, "the batch without its failing op", body()).await?;
        let after = dump(&c).await?;
        ensure(after != before, || {
            "the good batch changed nothing".to_owned()
        })?;
        eq("boxes after the good batch", after.boxes.len(), 2)?;
        eq(
            "journal after the good batch",
            after
                .journal
                .iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>(),
            vec!["j2"],
        )
    }

    /// Ops within a batch run in order and see each other's effects: insert a box and its
    /// snapshot together, toggle a status twice, remove and re-insert a name.
    pub async fn apply_ops_run_in_order(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut x = new_box(Some("x"), at(0, 0));
        let s1 = snap(&x, "s1", at(1, 0));
        let j = journal("j1", Some(&x), at(1, 0));
        let new_disks = disks("x-after");
        apply(
            &c,
            "insert box + snapshot + journal in one batch",
            vec![
                CatalogOp::InsertJournal(j.clone()),
                CatalogOp::InsertBox(x.clone()),
                CatalogOp::InsertSnapshot(s1.clone()),
                CatalogOp::SetBoxStatus {
                    box_id: x.id.clone(),
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Snapshotting,
                },
                CatalogOp::SetBoxDisks {
                    box_id: x.id.clone(),
                    disks: new_disks.clone(),
                },
                CatalogOp::SetBoxStatus {
                    box_id: x.id.clone(),
                    expected: BoxStatus::Snapshotting,
                    new: BoxStatus::Stopped,
                },
                CatalogOp::RemoveJournal { id: "j1".into() },
            ],
        )
        .await?;
        x.disks = new_disks;
        eq(
            "box",
            ok("get_box", c.get_box(&x.id).await)?,
            Some(x.clone()),
        )?;
        eq(
            "snapshots",
            ok("list_snapshots", c.list_snapshots(&x.id).await)?,
            vec![s1.clone()],
        )?;
        eq(
            "journal",
            ok("list_journal", c.list_journal().await)?,
            vec![],
        )?;
        // Remove then re-insert the same snapshot name in one batch.
        let mut s1b = snap(&x, "s1", at(2, 0));
        s1b.disks = disks("s1-b");
        apply(
            &c,
            "remove + re-insert a snapshot name",
            vec![
                CatalogOp::RemoveSnapshot {
                    box_id: x.id.clone(),
                    name: "s1".into(),
                },
                CatalogOp::InsertSnapshot(s1b.clone()),
            ],
        )
        .await?;
        eq(
            "re-inserted snapshot",
            ok("list_snapshots", c.list_snapshots(&x.id).await)?,
            vec![s1b],
        )?;
        // Remove a box and insert another with its name in one batch.
        let y = new_box(Some("x"), at(3, 0));
        apply(
            &c,
            "remove a box + reuse its name",
            vec![
                CatalogOp::RemoveBox {
                    box_id: x.id.clone(),
                },
                CatalogOp::InsertBox(y.clone()),
            ],
        )
        .await?;
        eq("boxes", ok("list_boxes", c.list_boxes().await)?, vec![y])?;
        eq(
            "snapshots",
            ok("list_all_snapshots", c.list_all_snapshots().await)?,
            vec![],
        )
    }

    /// An empty batch is a no-op that succeeds.
    pub async fn apply_empty_batch_is_ok(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let before = dump(&c).await?;
        apply(&c, "empty batch", vec![]).await?;
        eq("catalog after an empty batch", dump(&c).await?, before)
    }

    // -----------------------------------------------------------------------------------------
    // Journal
    // -----------------------------------------------------------------------------------------

    /// Journal entries round-trip exactly, list oldest first (ties in insertion order), and
    /// RemoveJournal is idempotent.
    pub async fn journal_insert_list_remove(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let j1 = journal("01J00000000000000000000001", Some(&b), at(20, 0));
        let mut j2 = journal("01J00000000000000000000002", None, at(10, 0));
        j2.operation = "import".into();
        j2.staged = vec!["/h/staging/a".into(), "/h/staging/b/".into()];
        let mut j3 = journal("01J00000000000000000000000", Some(&b), at(10, 0));
        j3.prior_status = Some(BoxStatus::Running);
        for j in [&j1, &j2, &j3] {
            apply(
                &c,
                "InsertJournal",
                vec![CatalogOp::InsertJournal(j.clone())],
            )
            .await?;
        }
        eq(
            "list_journal (oldest first, ties in insertion order)",
            ok("list_journal", c.list_journal().await)?,
            vec![j2.clone(), j3.clone(), j1.clone()],
        )?;
        let rm = |id: &str| CatalogOp::RemoveJournal { id: id.to_owned() };
        apply(&c, "RemoveJournal", vec![rm(&j2.id)]).await?;
        eq(
            "list_journal after remove",
            ok("list_journal", c.list_journal().await)?,
            vec![j3.clone(), j1.clone()],
        )?;
        apply(&c, "RemoveJournal again (idempotent)", vec![rm(&j2.id)]).await?;
        apply(&c, "RemoveJournal of an unknown id", vec![rm("nope")]).await?;
        eq(
            "list_journal",
            ok("list_journal", c.list_journal().await)?,
            vec![j3, j1],
        )?;
        // A journal entry may outlive its box (recovery reads it after a crash).
        apply(
            &c,
            "RemoveBox",
            vec![CatalogOp::RemoveBox {
                box_id: b.id.clone(),
            }],
        )
        .await?;
        eq(
            "journal entries survive RemoveBox",
            ok("list_journal", c.list_journal().await)?.len(),
            2,
        )
    }

    /// A duplicate journal id is `AlreadyExists` naming the id, and keeps the first entry.
    pub async fn journal_duplicate_id_is_already_exists(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let j = journal("01J00000000000000000000001", None, at(0, 0));
        apply(
            &c,
            "InsertJournal",
            vec![CatalogOp::InsertJournal(j.clone())],
        )
        .await?;
        let mut dup = j.clone();
        dup.operation = "other".into();
        let e = err(
            "duplicate InsertJournal",
            c.apply(vec![CatalogOp::InsertJournal(dup)]).await,
        )?;
        ensure(
            matches!(&e, Error::AlreadyExists { name, .. } if name.contains(&j.id)),
            || format!("expected AlreadyExists naming {}, got {e:?}", j.id),
        )?;
        eq(
            "list_journal",
            ok("list_journal", c.list_journal().await)?,
            vec![j],
        )
    }

    // -----------------------------------------------------------------------------------------
    // Persistence
    // -----------------------------------------------------------------------------------------

    /// Everything written is there, unchanged and in the same order, after reopening the home.
    pub async fn reopen_persists_everything(h: CatalogHarness) -> CaseResult {
        let before = {
            let c = h.open()?;
            let a = new_box(Some("web"), at(0, 5));
            let mut b = new_box(None, at(0, 5));
            b.status = BoxStatus::Running;
            insert_box(&c, &a).await?;
            insert_box(&c, &b).await?;
            for (i, n) in ["z", "y", "x"].iter().enumerate() {
                insert_snap(&c, &snap(&a, n, at(1, i as u32 % 2))).await?;
            }
            insert_snap(&c, &snap(&b, "v1", at(1, 0))).await?;
            apply(
                &c,
                "status + disks + journal",
                vec![
                    CatalogOp::SetBoxStatus {
                        box_id: a.id.clone(),
                        expected: BoxStatus::Stopped,
                        new: BoxStatus::Snapshotting,
                    },
                    CatalogOp::SetBoxDisks {
                        box_id: a.id.clone(),
                        disks: disks("after"),
                    },
                    CatalogOp::InsertJournal(journal("j1", Some(&a), at(2, 0))),
                    CatalogOp::InsertJournal(journal("j0", None, at(2, 0))),
                ],
            )
            .await?;
            let d = dump(&c).await?;
            eq("boxes before reopen", d.boxes.len(), 2)?;
            d
        };
        let c = h.open()?;
        eq("catalog after reopen", dump(&c).await?, before)?;
        // And it is writable after reopening.
        let n = new_box(Some("after-reopen"), at(9, 0));
        insert_box(&c, &n).await?;
        eq(
            "find_box after reopen",
            ok("find_box", c.find_box("after-reopen").await)?,
            Some(n),
        )
    }

    /// schema_version is at least 1 and the same after reopening.
    pub async fn schema_version_is_stable(h: CatalogHarness) -> CaseResult {
        let v1 = {
            let c = h.open()?;
            ok("schema_version", c.schema_version().await)?
        };
        ensure(v1 >= 1, || format!("schema_version is {v1}, expected >= 1"))?;
        let c = h.open()?;
        eq(
            "schema_version after reopen",
            ok("schema_version", c.schema_version().await)?,
            v1,
        )?;
        ensure(!c.name().is_empty(), || "name() is empty".to_owned())
    }

    // -----------------------------------------------------------------------------------------
    // Concurrency
    // -----------------------------------------------------------------------------------------

    /// 32 tasks each apply 20 three-op batches (status CAS, snapshot insert, status CAS back)
    /// to their own box, concurrently: zero errors, every snapshot present in order.
    pub async fn concurrent_apply_many_tasks(h: CatalogHarness) -> CaseResult {
        const TASKS: usize = 32;
        const OPS: usize = 20;
        let c = h.open()?;
        let mut boxes = Vec::new();
        for i in 0..TASKS {
            let b = new_box(Some(&format!("box-{i}")), at(i as i64, 0));
            insert_box(&c, &b).await?;
            boxes.push(b);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for b in boxes.clone() {
            let c = Arc::clone(&c);
            tasks.spawn(async move {
                let mut errors = Vec::new();
                for k in 0..OPS {
                    let ops = vec![
                        CatalogOp::SetBoxStatus {
                            box_id: b.id.clone(),
                            expected: BoxStatus::Stopped,
                            new: BoxStatus::Snapshotting,
                        },
                        CatalogOp::InsertSnapshot(snap(
                            &b,
                            &format!("s{k:02}"),
                            at(100 + k as i64, 0),
                        )),
                        CatalogOp::SetBoxStatus {
                            box_id: b.id.clone(),
                            expected: BoxStatus::Snapshotting,
                            new: BoxStatus::Stopped,
                        },
                    ];
                    if let Err(e) = c.apply(ops).await {
                        errors.push(format!("{} s{k:02}: {e}", label(&b)));
                    }
                    // Interleave reads with the writes.
                    if let Err(e) = c.list_snapshots(&b.id).await {
                        errors.push(format!("{} list: {e}", label(&b)));
                    }
                }
                errors
            });
        }
        let mut errors = Vec::new();
        while let Some(r) = tasks.join_next().await {
            errors.extend(r.map_err(|e| format!("task panicked: {e}"))?);
        }
        ensure(errors.is_empty(), || {
            format!(
                "{} of {} batches failed, e.g. {:?}",
                errors.len(),
                TASKS * OPS,
                &errors[..errors.len().min(5)]
            )
        })?;
        for b in &boxes {
            let want: Vec<_> = (0..OPS)
                .map(|k| snap(b, &format!("s{k:02}"), at(100 + k as i64, 0)))
                .collect();
            eq(
                "snapshots of a box",
                ok("list_snapshots", c.list_snapshots(&b.id).await)?,
                want,
            )?;
            eq(
                "box at the end",
                ok("get_box", c.get_box(&b.id).await)?,
                Some(b.clone()),
            )?;
        }
        eq(
            "all snapshots",
            ok("list_all_snapshots", c.list_all_snapshots().await)?.len(),
            TASKS * OPS,
        )
    }

    /// 20 concurrent inserts of the same (box, name): exactly one succeeds, the others get
    /// `AlreadyExists`, and the stored row is the winner's.
    pub async fn concurrent_insert_same_snapshot_exactly_one(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u64 {
            let c = Arc::clone(&c);
            let mut s = snap(&b, "v1", at(1, i as u32));
            s.disks = disks(&format!("attempt-{i}"));
            s.guest_disk_bytes = i;
            tasks.spawn(async move {
                let r = c.apply(vec![CatalogOp::InsertSnapshot(s.clone())]).await;
                (s, r)
            });
        }
        let mut winners = Vec::new();
        let mut others = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (s, r) = r.map_err(|e| format!("task panicked: {e}"))?;
            match r {
                Ok(()) => winners.push(s),
                Err(Error::AlreadyExists {
                    kind: ObjectKind::Snapshot,
                    ..
                }) => {}
                Err(e) => others.push(format!("{e:?}")),
            }
        }
        ensure(others.is_empty(), || {
            format!("unexpected errors: {others:?}")
        })?;
        eq("number of successful inserts", winners.len(), 1)?;
        eq(
            "list_snapshots",
            ok("list_snapshots", c.list_snapshots(&b.id).await)?,
            winners,
        )
    }

    /// 20 concurrent compare-and-sets Stopped -> Snapshotting: exactly one succeeds, the others
    /// get `Busy { status: Snapshotting }`.
    pub async fn concurrent_status_cas_exactly_one(h: CatalogHarness) -> CaseResult {
        let c = h.open()?;
        let mut b = new_box(Some("web"), at(0, 0));
        insert_box(&c, &b).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let c = Arc::clone(&c);
            let id = b.id.clone();
            tasks.spawn(async move {
                c.apply(vec![CatalogOp::SetBoxStatus {
                    box_id: id,
                    expected: BoxStatus::Stopped,
                    new: BoxStatus::Snapshotting,
                }])
                .await
            });
        }
        let (mut won, mut busy, mut other) = (0, 0, Vec::new());
        while let Some(r) = tasks.join_next().await {
            match r.map_err(|e| format!("task panicked: {e}"))? {
                Ok(()) => won += 1,
                Err(Error::Busy {
                    status: BoxStatus::Snapshotting,
                    box_name,
                }) if box_name == "web" => busy += 1,
                Err(e) => other.push(format!("{e:?}")),
            }
        }
        ensure(other.is_empty(), || format!("unexpected errors: {other:?}"))?;
        eq("(succeeded, busy)", (won, busy), (1, 19))?;
        b.status = BoxStatus::Snapshotting;
        eq(
            "box at the end",
            ok("get_box", c.get_box(&b.id).await)?,
            Some(b),
        )
    }

    /// While one task commits batches "insert box + two snapshots", readers never see a box
    /// without both of its snapshots (batches are visible whole or not at all).
    pub async fn readers_see_whole_batches(h: CatalogHarness) -> CaseResult {
        const BATCHES: usize = 40;
        let c = h.open()?;
        let writer = {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                for i in 0..BATCHES {
                    let b = new_box(Some(&format!("b{i}")), at(i as i64, 0));
                    let ops = vec![
                        CatalogOp::InsertBox(b.clone()),
                        CatalogOp::InsertSnapshot(snap(&b, "s1", at(i as i64, 1))),
                        CatalogOp::InsertSnapshot(snap(&b, "s2", at(i as i64, 2))),
                    ];
                    c.apply(ops).await.map_err(|e| format!("batch {i}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        };
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let c = Arc::clone(&c);
            readers.spawn(async move {
                let mut rounds = 0usize;
                loop {
                    let boxes = c
                        .list_boxes()
                        .await
                        .map_err(|e| format!("list_boxes: {e}"))?;
                    for b in &boxes {
                        let snaps = c
                            .list_snapshots(&b.id)
                            .await
                            .map_err(|e| format!("list_snapshots: {e}"))?;
                        if snaps.len() != 2 {
                            return Err(format!(
                                "box {} is visible with {} snapshots (want 2)",
                                label(b),
                                snaps.len()
                            ));
                        }
                    }
                    rounds += 1;
                    if boxes.len() == BATCHES {
                        return Ok(rounds);
                    }
                    tokio::task::yield_now().await;
                }
            });
        }
        writer
            .await
            .map_err(|e| format!("writer panicked: {e}"))??;
        while let Some(r) = readers.join_next().await {
            r.map_err(|e| format!("reader panicked: {e}"))??;
        }
        eq(
            "boxes at the end",
            ok("list_boxes", c.list_boxes().await)?.len(),
            BATCHES,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_enough() {
        let names: Vec<_> = cases().iter().map(|c| c.name).collect();
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            names.len(),
            "duplicate case names in {names:?}"
        );
        assert!(names.len() >= 20, "{} cases", names.len());
    }
}
