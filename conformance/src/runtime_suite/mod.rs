//! The runtime contract suite: the eight operations of DESIGN.md section 6, run through
//! [`boxlite::BoxliteRuntime`] built from any (storage, catalog, codec) combination.
//!
//! Modelled on containerd's snapshotter suite: every case gets a **fresh home** and checks
//! **guest-visible disk content** against a flat in-memory reference (a [`Model`] of each
//! disk, updated with every write the case makes), not just that calls returned `Ok`.
//!
//! Third parties stamp the cases into their own test crate with
//! [`runtime_suite_tests!`](crate::runtime_suite_tests):
//!
//! ```ignore
//! // tests/conformance.rs of a storage backend crate that registers "my-store"
//! boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new("my-store", "sqlite", "zstd"));
//! ```
//!
//! or run them all with [`run_all`] (the `boxlite conformance` command does).
//!
//! Disks are read and written through the qcow2 image layer, because every backend hands
//! the VMM qcow2 files (DESIGN.md section 2). Input images are raw files and qcow2 files made
//! in-process, so the suite needs no external tools.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources};

mod cases;
mod model;

pub use model::{Model, DISK_SIZE};

#[doc(hidden)]
pub use cases::cases_impl;

/// What a case returns: `Err` holds a description of the first violated expectation.
pub type CaseResult = Result<(), String>;

/// The future a case runs as.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send + 'static>>;

/// Time limit for one case (a deadlock or a hang fails the case instead of the run).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// The plugin combination under test, and where to put the homes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combo {
    /// Storage backend name (e.g. "qcow2").
    pub storage: String,
    /// Catalog name (e.g. "sqlite").
    pub catalog: String,
    /// Codec name for exports (e.g. "zstd").
    pub codec: String,
    /// Directory in which each case's temporary home is made (None: the system temp dir).
    /// A reflink backend needs this on a btrfs or xfs mount.
    pub base_dir: Option<PathBuf>,
}

impl Combo {
    /// A combination with homes in the system temporary directory.
    pub fn new(storage: &str, catalog: &str, codec: &str) -> Combo {
        Combo {
            storage: storage.into(),
            catalog: catalog.into(),
            codec: codec.into(),
            base_dir: None,
        }
    }

    /// Put the homes under `dir`.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Combo {
        self.base_dir = Some(dir.into());
        self
    }
}

/// What a case gets: a fresh temporary directory, the combination, and helpers to open the
/// runtime (again) and make input images.
pub struct Harness {
    combo: Combo,
    dir: tempfile::TempDir,
}

impl Harness {
    /// Make a harness with a fresh directory.
    ///
    /// Errors: the temporary directory cannot be created.
    pub fn new(combo: Combo) -> Result<Harness, String> {
        let mut b = tempfile::Builder::new();
        b.prefix("boxlite-conformance-");
        let dir = match &combo.base_dir {
            Some(d) => b.tempdir_in(d),
            None => b.tempdir(),
        }
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
        Ok(Harness { combo, dir })
    }

    /// The home of this case.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A scratch directory for inputs and outputs (outside the home).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The combination under test.
    pub fn combo(&self) -> &Combo {
        &self.combo
    }

    /// Open (or reopen) the runtime on this case's home with the combination's plugins.
    pub async fn open(&self) -> Result<BoxliteRuntime, String> {
        self.open_with(None).await
    }

    /// [`Harness::open`] with a host VMM controller for running boxes (no quiescer: the
    /// running-box cases capture crash-consistently under pause).
    pub async fn open_with(
        &self,
        controller: Option<std::sync::Arc<dyn boxlite::api::BoxController>>,
    ) -> Result<BoxliteRuntime, String> {
        let sources = ConfigSources {
            home: Some(self.home()),
            storage: Some(self.combo.storage.clone()),
            catalog: Some(self.combo.catalog.clone()),
            codec: Some(self.combo.codec.clone()),
            ..Default::default()
        };
        let config = Config::load(&sources).map_err(|e| format!("config: {e}"))?;
        let mut builder = BoxliteRuntime::builder().config(config);
        if let Some(c) = controller {
            builder = builder.controller(c);
        }
        builder
            .open()
            .await
            .map_err(|e| format!("opening the runtime: {e}"))
    }

    /// Write a pair of raw input images (distinct patterns, [`DISK_SIZE`] bytes each) named
    /// after `tag`, and return them with the model of their content.
    pub fn images(&self, tag: &str) -> Result<(BoxOptions, Model), String> {
        model::make_images(&self.scratch(), tag)
    }
}

/// One named case.
#[derive(Clone, Copy)]
pub struct RuntimeCase {
    /// The case's name (the `#[test]` name stamped by the macro).
    pub name: &'static str,
    /// Runs the case.
    pub run: fn(Harness) -> CaseFuture,
}

impl std::fmt::Debug for RuntimeCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The outcome of one case in [`run_all`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: &'static str,
    /// `None` when it passed, else the failure description.
    pub failure: Option<String>,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<RuntimeCase> {
    cases::all()
}

/// Run one case in a fresh harness, with [`CASE_TIMEOUT`].
pub async fn run_case(case: &RuntimeCase, combo: &Combo) -> CaseResult {
    let harness = Harness::new(combo.clone())?;
    match tokio::time::timeout(CASE_TIMEOUT, (case.run)(harness)).await {
        Ok(r) => r,
        Err(_) => Err(format!("did not finish within {CASE_TIMEOUT:?}")),
    }
}

/// Run every case (or those whose name contains `filter`) one after another.
/// Must be called inside a multi-threaded tokio runtime.
pub async fn run_all(combo: &Combo, filter: Option<&str>) -> Vec<CaseOutcome> {
    let mut out = Vec::new();
    for case in cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let start = std::time::Instant::now();
        let failure = run_case(&case, combo).await.err();
        out.push(CaseOutcome {
            name: case.name,
            failure,
            elapsed_ms: start.elapsed().as_millis() as u64,
        });
    }
    out
}

/// Run the case called `name` on a new multi-threaded tokio runtime; panic with its failure.
/// This is what the tests stamped by [`runtime_suite_tests!`](crate::runtime_suite_tests) call.
///
/// Panics: when the case fails or no case has that name.
pub fn run_named_blocking(name: &str, combo: Combo) {
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no runtime case named {name}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a tokio runtime: {e}"));
    if let Err(msg) = rt.block_on(run_case(&case, &combo)) {
        panic!(
            "conformance case {name} failed for storage={} catalog={} codec={}: {msg}",
            combo.storage, combo.catalog, combo.codec
        );
    }
}
