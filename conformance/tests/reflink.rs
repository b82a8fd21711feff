//! The runtime suite against the reflink backend on real btrfs and xfs filesystems (loop
//! devices made here; needs root). Each filesystem is mounted once and every case runs in a
//! fresh home on it; failures are reported by case name.
//!
//! Skips loudly without root, a loop device or the mkfs tools, and fails instead under CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite_conformance::runtime_suite::run_all;
use boxlite_conformance::Combo;

fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("reflink conformance cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED: reflink conformance: {reason}");
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A loop-mounted filesystem, unmounted and detached on drop (even on panic).
struct LoopMount {
    dir: tempfile::TempDir,
    device: String,
}

impl LoopMount {
    fn new(mkfs: &[&str], size_mib: u64) -> Result<LoopMount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(&img))?;
        let m = LoopMount { dir, device };
        sh(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&m.device))?;
        std::fs::create_dir(m.mnt()).map_err(|e| e.to_string())?;
        sh(Command::new("mount").arg(&m.device).arg(m.mnt()))?;
        Ok(m)
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn ready(tool: &str) -> bool {
    if !nix_is_root() {
        skip("not root");
        return false;
    }
    if Command::new(tool).arg("-V").output().is_err() {
        skip(&format!(
            "{tool} not installed (apt-get install btrfs-progs xfsprogs)"
        ));
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        skip("no loop device support (/dev/loop-control)");
        return false;
    }
    true
}

fn nix_is_root() -> bool {
    sh(Command::new("id").arg("-u"))
        .map(|u| u == "0")
        .unwrap_or(false)
}

fn run_on(mkfs: &[&str], size_mib: u64, catalog: &str, codec: &str) {
    let m = LoopMount::new(mkfs, size_mib).unwrap_or_else(|e| panic!("making {}: {e}", mkfs[0]));
    let combo = Combo::new("reflink", catalog, codec).in_dir(m.mnt());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcomes = rt.block_on(run_all(&combo, None));
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.name)))
        .collect();
    eprintln!(
        "reflink on {}: {} cases, {} failed",
        mkfs[0],
        outcomes.len(),
        failures.len()
    );
    assert!(outcomes.len() >= 40, "only {} cases ran", outcomes.len());
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn reflink_on_btrfs_with_sqlite_and_zstd() {
    if ready("mkfs.btrfs") {
        run_on(&["mkfs.btrfs", "-q", "-f"], 512, "sqlite", "zstd");
    }
}

#[test]
fn reflink_on_xfs_with_redb_and_lz4() {
    if ready("mkfs.xfs") {
        run_on(
            &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
            512,
            "redb",
            "lz4",
        );
    }
}
