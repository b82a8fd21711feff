//! Named failpoints for crash-consistency tests (DESIGN.md section 9).
//!
//! Operations call [`failpoint!`](crate::failpoint!) at every step (`"<operation>.<step>"`,
//! e.g. `"snapshot_create.before_commit"`; see `docs/crash-safety.md` for the list).
//!
//! * **Without** the crate feature `failpoints` (every normal build, including the `boxlite`
//!   library and CLI shipped to users) [`hit`] is an `#[inline(always)]` function that returns
//!   `Ok(())`: the macro compiles to nothing.
//! * **With** the feature, [`hit`] reads the environment variable `BOXLITE_FAILPOINT`:
//!   - `name` or `name=abort`: the process calls [`std::process::abort`] at that point (a
//!     real crash: no destructor runs, no lock is released by code, nothing is flushed);
//!   - `name=error`: the point returns an injected [`Error::Io`] naming the failpoint, and the
//!     operation goes down its ordinary error path.
//!
//! The feature is enabled only for tests: the `boxlite` (sdk) crate lists
//! `boxlite-api = { features = ["failpoints"] }` under `[dev-dependencies]`, and cargo's
//! feature resolver 2 unifies dev-dependency features only into builds that need the
//! dev-dependencies (tests, examples, benches of that package). `cargo build -p boxlite` and
//! `cargo install` therefore build without it; `cargo tree -p boxlite -e features` shows no
//! `failpoints` feature, and [`ENABLED`] says which build a binary is.

use crate::{Error, Result};

/// Whether this build has failpoints compiled in (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// The environment variable that arms one failpoint: `name`, `name=abort` or `name=error`.
pub const ENV: &str = "BOXLITE_FAILPOINT";

/// `failpoint!("name")` or `failpoint!(prefix, suffix)` (for `"<prefix>.<suffix>"`): return
/// the injected error from the enclosing function (`?`), or abort, when armed; nothing in
/// normal builds.
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        $crate::failpoint::hit($name)?
    };
    ($prefix:expr, $suffix:expr) => {
        $crate::failpoint::hit_at($prefix, $suffix)?
    };
}

/// The failpoint `name` (see the module docs). Always `Ok(())` without the feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> Result<()> {
    Ok(())
}

/// The failpoint `"<prefix>.<suffix>"`. Always `Ok(())` without the feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit_at(_prefix: &str, _suffix: &str) -> Result<()> {
    Ok(())
}

/// The failpoint `name` (see the module docs).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Result<()> {
    check(name, |armed| armed == name)
}

/// The failpoint `"<prefix>.<suffix>"`.
#[cfg(feature = "failpoints")]
pub fn hit_at(prefix: &str, suffix: &str) -> Result<()> {
    let matches = |armed: &str| {
        armed.len() == prefix.len() + 1 + suffix.len()
            && armed.starts_with(prefix)
            && armed[prefix.len()..].starts_with('.')
            && armed.ends_with(suffix)
    };
    check(&format!("{prefix}.{suffix}"), matches)
}

#[cfg(feature = "failpoints")]
fn check(name: &str, matches: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(());
    };
    let (armed, action) = spec.split_once('=').unwrap_or((spec.as_str(), "abort"));
    if !matches(armed) {
        return Ok(());
    }
    match action {
        "error" => Err(injected(name)),
        _ => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort()
        }
    }
}

/// The error an armed `name=error` failpoint returns.
pub fn injected(name: &str) -> Error {
    Error::Io {
        path: std::path::PathBuf::from(format!("failpoint:{name}")),
        source: std::io::Error::other(format!("injected failure at failpoint {name}")),
    }
}

/// True when `e` is the error an armed failpoint injected.
pub fn is_injected(e: &Error) -> bool {
    matches!(e, Error::Io { path, .. } if path.to_string_lossy().starts_with("failpoint:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Result<u32> {
        crate::failpoint!(name);
        crate::failpoint!("unit", "two");
        Ok(1)
    }

    #[test]
    fn unarmed_points_pass() {
        // The unit tests of this crate build without the feature unless asked for.
        if std::env::var(ENV).is_err() {
            assert_eq!(f("unit.one").unwrap(), 1);
        }
        assert!(is_injected(&injected("x.y")));
    }
}
