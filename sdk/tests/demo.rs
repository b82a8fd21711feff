//! `boxlite demo` (the README's run command) end to end: it must exit 0 and its table must
//! name all eight operations, each verified.

use std::process::Command;

/// True when the e2fsprogs tools are usable; otherwise a loud skip (a failure under CI=true).
fn have_e2fsprogs() -> bool {
    let ok = ["mkfs.ext4", "debugfs", "e2fsck"].iter().all(|t| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(t).is_file())
            || Command::new(t).arg("-V").output().is_ok()
    });
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("e2fsprogs is required under CI=true (apt-get install e2fsprogs)");
        }
        eprintln!("SKIPPED: mkfs.ext4/debugfs/e2fsck not found (apt-get install e2fsprogs)");
    }
    ok
}

#[test]
fn demo_walks_all_eight_operations_and_verifies_them() {
    if !have_e2fsprogs() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_boxlite"))
        .arg("demo")
        .env_remove("BOXLITE_HOME")
        .env_remove("BOXLITE_STORAGE")
        .env_remove("BOXLITE_CATALOG")
        .env_remove("BOXLITE_CODEC")
        .output()
        .expect("spawn boxlite demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boxlite demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for op in [
        "snapshot create",
        "snapshot list",
        "snapshot get",
        "snapshot restore",
        "snapshot remove",
        "clone",
        "export",
        "import",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("the table does not mention '{op}':\n{stdout}"));
        assert!(line.contains("ok: "), "step '{op}' not ok: {line}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(!stdout.contains("kept:"), "without --keep nothing is kept");
}

#[test]
fn demo_keep_prints_and_keeps_its_directory() {
    if !have_e2fsprogs() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_boxlite"))
        .args(["demo", "--keep"])
        .output()
        .expect("spawn boxlite demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept: "))
        .unwrap_or_else(|| panic!("no 'kept:' line:\n{stdout}"));
    let dir = std::path::PathBuf::from(kept);
    assert!(dir.join("home").is_dir(), "{} has no home", dir.display());
    assert!(dir.join("demo.boxsnap").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
