//! Box statuses and the rule table of which operation may start from which status
//! (DESIGN.md section 6, "The eight operations").

use serde::{Deserialize, Serialize};

/// The lifecycle status of a box as recorded in the catalog.
///
/// `Stopped` and `Running` are resting states set by the host (`start`/`stop`); the others are
/// held only while an exclusive operation runs and are set/cleared with a compare-and-set in the
/// catalog, so a status stuck in one of them after a crash is repaired by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxStatus {
    /// The VM is not running; its disks are not open by a VMM.
    Stopped,
    /// The VM is running; its disks are open read-write by the VMM.
    Running,
    /// A snapshot is being captured.
    Snapshotting,
    /// A snapshot is being restored onto the box's disks.
    Restoring,
    /// The box is being exported to a `.boxsnap` archive.
    Exporting,
    /// The box's current state is being captured for a clone.
    Cloning,
    /// The box and its snapshots are being removed.
    Removing,
}

impl BoxStatus {
    /// Every status, in declaration order.
    pub const ALL: [BoxStatus; 7] = [
        BoxStatus::Stopped,
        BoxStatus::Running,
        BoxStatus::Snapshotting,
        BoxStatus::Restoring,
        BoxStatus::Exporting,
        BoxStatus::Cloning,
        BoxStatus::Removing,
    ];

    /// The stable lower-case name used in the catalog, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BoxStatus::Stopped => "stopped",
            BoxStatus::Running => "running",
            BoxStatus::Snapshotting => "snapshotting",
            BoxStatus::Restoring => "restoring",
            BoxStatus::Exporting => "exporting",
            BoxStatus::Cloning => "cloning",
            BoxStatus::Removing => "removing",
        }
    }

    /// Parse [`BoxStatus::as_str`] output; `None` for anything else.
    pub fn parse(s: &str) -> Option<BoxStatus> {
        BoxStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for the transient statuses held while an exclusive operation runs.
    pub fn is_busy(self) -> bool {
        !matches!(self, BoxStatus::Stopped | BoxStatus::Running)
    }
}

impl std::fmt::Display for BoxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations whose start is governed by the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `box.snapshot().create(name, opts)`.
    SnapshotCreate,
    /// `box.snapshot().list()`.
    SnapshotList,
    /// `box.snapshot().get(name)`.
    SnapshotGet,
    /// `box.snapshot().restore(name)`.
    SnapshotRestore,
    /// `box.snapshot().remove(name)`.
    SnapshotRemove,
    /// `box.export(dest, opts)`.
    Export,
    /// `box.clone(name, opts)` from the box's current state.
    CloneCurrent,
    /// `box.clone(name, opts)` with `from_snapshot` set.
    CloneFromSnapshot,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 8] = [
        Operation::SnapshotCreate,
        Operation::SnapshotList,
        Operation::SnapshotGet,
        Operation::SnapshotRestore,
        Operation::SnapshotRemove,
        Operation::Export,
        Operation::CloneCurrent,
        Operation::CloneFromSnapshot,
    ];

    /// The rule for this operation: where it may start, whether it is exclusive, and the status
    /// the box holds while it runs.
    pub fn rule(self) -> &'static OperationRule {
        // RULES is indexed in the same order as Operation::ALL; the test below checks it.
        &RULES[self as usize]
    }

    /// A verb phrase for messages, e.g. "restore a snapshot of".
    pub fn verb(self) -> &'static str {
        match self {
            Operation::SnapshotCreate => "snapshot",
            Operation::SnapshotList => "list snapshots of",
            Operation::SnapshotGet => "read a snapshot of",
            Operation::SnapshotRestore => "restore a snapshot onto",
            Operation::SnapshotRemove => "remove a snapshot of",
            Operation::Export => "export",
            Operation::CloneCurrent => "clone",
            Operation::CloneFromSnapshot => "clone from a snapshot of",
        }
    }
}

/// One row of the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationRule {
    /// The operation.
    pub operation: Operation,
    /// Statuses the operation may start from. An empty-looking "any" is spelled out in full.
    pub allowed_from: &'static [BoxStatus],
    /// Whether the operation holds the box exclusively (a concurrent exclusive operation gets
    /// [`crate::Error::Busy`]).
    pub exclusive: bool,
    /// The status the box shows while the operation runs (None: unchanged).
    pub holds: Option<BoxStatus>,
    /// What to tell a user whose box is in a resting status that is not allowed.
    pub hint: &'static str,
}

const RESTING: &[BoxStatus] = &[BoxStatus::Stopped, BoxStatus::Running];
const STOPPED: &[BoxStatus] = &[BoxStatus::Stopped];

/// The status table of DESIGN.md section 6, as data. Indexed like [`Operation::ALL`].
pub static RULES: [OperationRule; 8] = [
    OperationRule {
        operation: Operation::SnapshotCreate,
        allowed_from: RESTING,
        exclusive: true,
        holds: Some(BoxStatus::Snapshotting),
        hint: "wait for the running operation to finish",
    },
    OperationRule {
        operation: Operation::SnapshotList,
        allowed_from: &BoxStatus::ALL,
        exclusive: false,
        holds: None,
        hint: "",
    },
    OperationRule {
        operation: Operation::SnapshotGet,
        allowed_from: &BoxStatus::ALL,
        exclusive: false,
        holds: None,
        hint: "",
    },
    OperationRule {
        operation: Operation::SnapshotRestore,
        allowed_from: STOPPED,
        exclusive: true,
        holds: Some(BoxStatus::Restoring),
        hint: "stop the box first (`boxlite stop NAME`)",
    },
    OperationRule {
        operation: Operation::SnapshotRemove,
        allowed_from: STOPPED,
        exclusive: true,
        holds: Some(BoxStatus::Snapshotting),
        hint: "stop the box first (`boxlite stop NAME`)",
    },
    OperationRule {
        operation: Operation::Export,
        allowed_from: RESTING,
        exclusive: true,
        holds: Some(BoxStatus::Exporting),
        hint: "wait for the running operation to finish",
    },
    OperationRule {
        operation: Operation::CloneCurrent,
        allowed_from: RESTING,
        exclusive: true,
        holds: Some(BoxStatus::Cloning),
        hint: "wait for the running operation to finish",
    },
    OperationRule {
        operation: Operation::CloneFromSnapshot,
        allowed_from: &BoxStatus::ALL,
        exclusive: false,
        holds: None,
        hint: "",
    },
];

/// Whether `op` may start on a box whose status is `status`.
pub fn allowed(op: Operation, status: BoxStatus) -> bool {
    op.rule().allowed_from.contains(&status)
}

/// Check the table for `op` on box `box_name` in `status`.
///
/// Errors: [`crate::Error::Busy`] when the box is held by another exclusive operation (a
/// transient status), [`crate::Error::InvalidState`] when the box rests in a status the
/// operation does not accept (e.g. restore while Running).
pub fn check(op: Operation, box_name: &str, status: BoxStatus) -> crate::Result<()> {
    if allowed(op, status) {
        return Ok(());
    }
    if status.is_busy() {
        return Err(crate::Error::Busy {
            box_name: box_name.to_owned(),
            status,
        });
    }
    Err(crate::Error::InvalidState {
        box_name: box_name.to_owned(),
        operation: op.verb().to_owned(),
        status,
        hint: op.rule().hint.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use BoxStatus::*;

    #[test]
    fn rules_are_indexed_like_operations() {
        for op in Operation::ALL {
            assert_eq!(op.rule().operation, op);
        }
    }

    /// The table of DESIGN.md section 6, written out independently of RULES.
    #[test]
    fn table_matches_design_section_6() {
        let expect: &[(Operation, &[BoxStatus], bool)] = &[
            (Operation::SnapshotCreate, &[Stopped, Running], true),
            (Operation::SnapshotList, &BoxStatus::ALL, false),
            (Operation::SnapshotGet, &BoxStatus::ALL, false),
            (Operation::SnapshotRestore, &[Stopped], true),
            (Operation::SnapshotRemove, &[Stopped], true),
            (Operation::Export, &[Stopped, Running], true),
            (Operation::CloneCurrent, &[Stopped, Running], true),
            (Operation::CloneFromSnapshot, &BoxStatus::ALL, false),
        ];
        for (op, from, exclusive) in expect {
            for st in BoxStatus::ALL {
                assert_eq!(allowed(*op, st), from.contains(&st), "{op:?} from {st:?}");
            }
            assert_eq!(op.rule().exclusive, *exclusive, "{op:?}");
            assert_eq!(op.rule().holds.is_some(), *exclusive, "{op:?}");
        }
    }

    #[test]
    fn check_gives_busy_for_transient_and_invalid_state_for_resting() {
        match check(Operation::SnapshotRestore, "b", Exporting) {
            Err(crate::Error::Busy { status, .. }) => assert_eq!(status, Exporting),
            other => panic!("{other:?}"),
        }
        match check(Operation::SnapshotRestore, "b", Running) {
            Err(crate::Error::InvalidState { status, hint, .. }) => {
                assert_eq!(status, Running);
                assert!(hint.contains("stop"));
            }
            other => panic!("{other:?}"),
        }
        assert!(check(Operation::Export, "b", Running).is_ok());
    }

    #[test]
    fn status_names_round_trip() {
        for st in BoxStatus::ALL {
            assert_eq!(BoxStatus::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert_eq!(BoxStatus::parse("frozen"), None);
    }
}
