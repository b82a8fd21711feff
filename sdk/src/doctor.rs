//! `boxlite doctor`: check a home's catalog against its files and repair what is safe to
//! repair (DESIGN.md section 9).
//!
//! Checks, in order:
//! 1. journal entries of processes that are gone (an operation that never committed);
//! 2. boxes stuck in a transient status (snapshotting, restoring, ...) that no live
//!    operation holds;
//! 3. every root (box live disks, snapshot disks): each file its chain needs exists, opens
//!    with the safe qcow2 open, stays inside the store, and passes the qcow2 consistency check
//!    (corruptions are problems; leaked clusters are reported as problems too, since a file
//!    BoxLite wrote should have none);
//! 4. files in the store that no root references, and leftovers in `staging/`.
//!
//! `--fix` repairs 1, 2 and 4 (roll back the dead operation, reset the status, delete the
//! unreferenced files). Damaged images (3) are reported, never touched.

use std::collections::HashSet;
use std::path::PathBuf;

use boxlite_api::catalog::CatalogOp;
use boxlite_api::{BoxStatus, DiskSet, Result};
use serde::Serialize;

use crate::runtime::{BoxliteRuntime, Inner};

/// The kinds of problem doctor finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A journal entry of a process that is gone: its operation never committed.
    StaleJournal,
    /// A box in a transient status that no live operation holds.
    StuckStatus,
    /// A root's chain cannot be resolved: a file is missing, unreadable or refused.
    BrokenChain,
    /// A referenced image fails the qcow2 consistency check.
    ImageCheck,
    /// A stored file no root references.
    Unreferenced,
    /// A file or directory left in `staging/`.
    StagingLeftover,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// What was found, naming the box / snapshot / file.
    pub detail: String,
    /// The file involved, if any.
    pub path: Option<PathBuf>,
    /// Whether `--fix` repaired it.
    pub repaired: bool,
}

/// What doctor found (and repaired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// Every finding.
    pub problems: Vec<Problem>,
    /// Files whose consistency was checked.
    pub files_checked: usize,
    /// Roots (box live disk sets and snapshot disk sets) checked.
    pub roots_checked: usize,
}

impl DoctorReport {
    /// True when nothing is left unrepaired: the home is consistent.
    pub fn is_consistent(&self) -> bool {
        self.problems.iter().all(|p| p.repaired)
    }
}

impl BoxliteRuntime {
    /// Check the home (and with `fix`, repair what is safe to repair).
    ///
    /// Errors: catalog and I/O errors that prevent checking at all; problems with individual
    /// objects are findings in the report, not errors.
    pub async fn doctor(&self, fix: bool) -> Result<DoctorReport> {
        self.inner.doctor(fix).await
    }
}

impl Inner {
    async fn doctor(&self, fix: bool) -> Result<DoctorReport> {
        let mut report = DoctorReport::default();
        let live_journal_boxes = self.doctor_journal(fix, &mut report).await?;
        self.doctor_statuses(fix, &live_journal_boxes, &mut report)
            .await?;
        let referenced = self.doctor_roots(&mut report).await?;
        self.doctor_garbage(fix, &referenced, &mut report).await?;
        Ok(report)
    }

    /// Dead processes' journal entries; returns the boxes held by live entries.
    async fn doctor_journal(
        &self,
        fix: bool,
        report: &mut DoctorReport,
    ) -> Result<HashSet<boxlite_api::BoxId>> {
        let mut held = HashSet::new();
        let mut dead = Vec::new();
        for entry in self.catalog.list_journal().await? {
            if self.home.process_alive(entry.owner_pid, entry.started_at) {
                if let Some(b) = &entry.box_id {
                    held.insert(b.clone());
                }
            } else {
                dead.push(entry);
            }
        }
        if dead.is_empty() {
            return Ok(held);
        }
        let repaired = if fix {
            // Recovery rolls back exactly these entries (idempotently).
            self.recover().await.is_ok()
        } else {
            false
        };
        for e in dead {
            report.problems.push(Problem {
                kind: ProblemKind::StaleJournal,
                detail: format!(
                    "operation {} (journal {}) of process {} started {} never committed",
                    e.operation, e.id, e.owner_pid, e.started_at
                ),
                path: None,
                repaired,
            });
        }
        Ok(held)
    }

    async fn doctor_statuses(
        &self,
        fix: bool,
        held: &HashSet<boxlite_api::BoxId>,
        report: &mut DoctorReport,
    ) -> Result<()> {
        for rec in self.catalog.list_boxes().await? {
            if !rec.status.is_busy() || held.contains(&rec.id) {
                continue;
            }
            let repaired = fix
                && self
                    .catalog
                    .apply(vec![CatalogOp::SetBoxStatus {
                        box_id: rec.id.clone(),
                        expected: rec.status,
                        new: BoxStatus::Stopped,
                    }])
                    .await
                    .is_ok();
            report.problems.push(Problem {
                kind: ProblemKind::StuckStatus,
                detail: format!(
                    "box '{}' is {} but no operation holds it{}",
                    self.label(&rec),
                    rec.status,
                    if repaired { "; reset to stopped" } else { "" }
                ),
                path: None,
                repaired,
            });
        }
        Ok(())
    }

    /// Resolve and check every root; returns the referenced files.
    async fn doctor_roots(&self, report: &mut DoctorReport) -> Result<HashSet<PathBuf>> {
        let mut labelled: Vec<(String, DiskSet)> = Vec::new();
        for rec in self.catalog.list_boxes().await? {
            let name = self.label(&rec);
            for s in self.catalog.list_snapshots(&rec.id).await? {
                labelled.push((format!("snapshot '{name}@{}'", s.name), s.disks));
            }
            labelled.push((format!("box '{name}'"), rec.disks));
        }
        let mut referenced = HashSet::new();
        for (label, disks) in &labelled {
            report.roots_checked += 1;
            match self.storage.references(&self.ctx, disks).await {
                Ok(files) => referenced.extend(files),
                Err(e) => report.problems.push(Problem {
                    kind: ProblemKind::BrokenChain,
                    detail: format!("{label}: {e}"),
                    path: None,
                    repaired: false,
                }),
            }
        }
        let mut files: Vec<PathBuf> = referenced.iter().cloned().collect();
        files.sort();
        let checked = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|f| {
                    let r = boxlite_backend_qcow2::image::check(&f);
                    (f, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| boxlite_api::Error::config(format!("internal error: check task: {e}")))?;
        for (file, result) in checked {
            report.files_checked += 1;
            let detail = match result {
                Ok(r) if r.is_clean() => continue,
                Ok(r) => format!(
                    "{} corruption(s), {} leaked cluster(s), {} unchecked structure(s): {}",
                    r.corruptions,
                    r.leaks,
                    r.check_errors,
                    r.messages.first().map(String::as_str).unwrap_or("")
                ),
                Err(e) => e.to_string(),
            };
            report.problems.push(Problem {
                kind: ProblemKind::ImageCheck,
                detail,
                path: Some(file),
                repaired: false,
            });
        }
        Ok(referenced)
    }

    async fn doctor_garbage(
        &self,
        fix: bool,
        referenced: &HashSet<PathBuf>,
        report: &mut DoctorReport,
    ) -> Result<()> {
        let broken = report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::BrokenChain);
        let mut found = Vec::new();
        for f in self.storage.stored_files(&self.ctx).await? {
            if !referenced.contains(&f) {
                found.push((ProblemKind::Unreferenced, f));
            }
        }
        let staging = &self.ctx.staging;
        if let Ok(rd) = std::fs::read_dir(staging) {
            for e in rd.flatten() {
                found.push((ProblemKind::StagingLeftover, e.path()));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        // Never delete while a chain is broken: what looks unreferenced may be what it needs.
        let deleted: HashSet<PathBuf> = if fix && !broken {
            self.gc().await?.into_iter().collect()
        } else {
            HashSet::new()
        };
        for (kind, path) in found {
            let repaired = deleted.contains(&path);
            report.problems.push(Problem {
                kind,
                detail: format!(
                    "{} is not referenced by any box or snapshot{}",
                    path.display(),
                    if repaired { "; deleted" } else { "" }
                ),
                path: Some(path),
                repaired,
            });
        }
        Ok(())
    }
}
