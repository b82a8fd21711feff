//! Box and snapshot name validation (DESIGN.md section 6, "Names").
//!
//! A name is 1..=128 characters of `[A-Za-z0-9._-]` that does not start with `.` or `-`.
//! Names are labels only: paths on disk are always built from generated ids, never from names,
//! so the rule exists to keep names printable, unambiguous and safe in shells and URLs.

use crate::error::{Error, ObjectKind, Result};

/// Maximum name length in characters (equal to bytes: only ASCII is allowed).
pub const MAX_NAME_LEN: usize = 128;

/// Check `name` against the naming rule.
///
/// Errors: [`Error::InvalidName`] with the reason (empty, too long, bad first character, or
/// the first disallowed character). Performs no I/O.
pub fn validate_name(kind: ObjectKind, name: &str) -> Result<()> {
    let reason = name_problem(name);
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
    }
}

/// [`validate_name`] for a box name.
pub fn validate_box_name(name: &str) -> Result<()> {
    validate_name(ObjectKind::Box, name)
}

/// [`validate_name`] for a snapshot name.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    validate_name(ObjectKind::Snapshot, name)
}

fn name_problem(name: &str) -> Option<&'static str> {
    let Some(first) = name.bytes().next() else {
        return Some("it is empty");
    };
    if first == b'.' || first == b'-' {
        return Some("it starts with '.' or '-'");
    }
    if name.len() > MAX_NAME_LEN {
        return Some("it is longer than 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("it contains a character outside A-Z a-z 0-9 . _ -");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> &'static str {
        match validate_box_name(name) {
            Err(Error::InvalidName {
                reason, name: n, ..
            }) => {
                assert_eq!(n, name);
                reason
            }
            other => panic!("{name:?} gave {other:?}"),
        }
    }

    #[test]
    fn empty_name_is_refused() {
        assert!(reason("").contains("empty"));
    }

    /// The inputs of ../shared/cases A03.
    #[test]
    fn case_a03_names_used_as_paths() {
        let long = "a".repeat(300);
        for bad in [
            "../v1",
            "a/b",
            ".",
            "..",
            "-rf",
            long.as_str(),
            "a\0b",
            "ab\u{202e}cd",
            "../../../tmp/pwn",
        ] {
            assert!(
                validate_box_name(bad).is_err(),
                "{bad:?} must be refused as a box name"
            );
            assert!(
                validate_snapshot_name(bad).is_err(),
                "{bad:?} must be refused as a snapshot name"
            );
        }
        assert!(reason("-rf").contains("start"));
        assert!(reason(&long).contains("128"));
        assert!(reason("a\0b").contains("character"));
    }

    #[test]
    fn good_names_pass() {
        for good in [
            "v1",
            "a",
            "web-01",
            "my_box.2026",
            "A.b-c_d",
            &"x".repeat(128),
        ] {
            validate_box_name(good).unwrap();
        }
        assert!(validate_box_name(&"x".repeat(129)).is_err());
        assert!(validate_box_name("a b").is_err());
        assert!(validate_box_name("é").is_err());
    }
}
