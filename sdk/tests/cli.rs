//! End-to-end tests of the `boxlite` binary: the full walk through every command, JSON
//! output shapes, and exit codes (0 ok, 1 error with one `error:` line, 2 usage).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("qemu-img is required under CI=true (apt-get install qemu-utils)");
        }
        eprintln!("SKIPPED: qemu-img not found (apt-get install qemu-utils)");
    }
    ok
}

/// A `boxlite` command with a hermetic environment and `--home home`.
fn boxlite(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_boxlite"));
    for k in [
        "BOXLITE_HOME",
        "BOXLITE_STORAGE",
        "BOXLITE_CATALOG",
        "BOXLITE_CODEC",
        "RUST_LOG",
    ] {
        c.env_remove(k);
    }
    c.arg("--home").arg(home);
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    boxlite(home).args(args).output().expect("spawn boxlite")
}

/// Run, require success, return stdout.
fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "boxlite {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run with `--json`, require success, parse stdout as one JSON document.
fn ok_json(home: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let s = ok(home, &a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("boxlite {args:?}: bad JSON ({e}): {s}"))
}

/// Run, require exit code `code` and exactly one `error:` line on stderr.
fn fails(home: &Path, args: &[&str], code: i32) -> String {
    let out = run(home, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "boxlite {args:?}: stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    if code == 1 {
        let lines: Vec<_> = err.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {err}");
        assert!(lines[0].starts_with("error: "), "got: {err}");
    }
    err
}

fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let q = dir.join("a.qcow2");
    let r = dir.join("b.raw");
    for (fmt, p) in [("qcow2", &q), ("raw", &r)] {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(p)
            .arg("8M")
            .status()
            .unwrap();
        assert!(st.success());
    }
    (q, r)
}

fn qemu_opens(p: &str) {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", p])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img info {p}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_box(home: &Path, name: &str) -> Value {
    let info = ok_json(home, &["info", name]);
    assert_eq!(info["name"], name);
    assert_eq!(info["status"], "stopped");
    for k in ["id", "created_at", "image", "storage", "snapshot_count"] {
        assert!(!info[k].is_null(), "{k} missing in {info}");
    }
    let disks = info["disks"].as_object().expect("disks map");
    assert_eq!(disks.len(), 2, "{info}");
    for role in ["guest-rootfs", "container"] {
        let p = disks[role].as_str().expect("path");
        assert!(Path::new(p).is_absolute(), "{p}");
        assert!(Path::new(p).exists(), "{p}");
        qemu_opens(p);
    }
    info
}

#[test]
fn cli_full_walk() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let home = home.as_path();
    let (q, r) = images(tmp.path());

    ok(
        home,
        &[
            "create",
            "web",
            "--disk",
            q.to_str().unwrap(),
            "--guest-rootfs",
            r.to_str().unwrap(),
        ],
    );
    let ls = ok_json(home, &["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert!(ok(home, &["ls"]).contains("web"));

    ok(home, &["snapshot", "create", "web", "s1"]);
    let snaps = ok_json(home, &["snapshot", "ls", "web"]);
    let names: Vec<_> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["s1"]);
    let si = ok_json(home, &["snapshot", "info", "web", "s1"]);
    assert_eq!(si["name"], "s1");
    assert!(si["size_bytes"].is_u64());

    // Two names in one call (one clone_many), and one from the snapshot.
    let clones = ok_json(home, &["clone", "web", "c1", "c2"]);
    assert_eq!(clones.as_array().unwrap().len(), 2);
    ok(
        home,
        &["clone", "web", "c3", "--from-snapshot", "s1", "--no-cow"],
    );

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let printed = ok(home, &["export", "web", out.to_str().unwrap()]);
    let archive = printed.trim().to_owned();
    assert!(Path::new(&archive).is_file(), "{printed}");
    let raw = ok(
        home,
        &[
            "export",
            "c1",
            tmp.path().join("c1.boxsnap").to_str().unwrap(),
            "--codec",
            "none",
        ],
    );
    assert!(Path::new(raw.trim()).is_file());
    ok(
        home,
        &[
            "export",
            "c2",
            tmp.path().join("c2.boxsnap").to_str().unwrap(),
            "--codec",
            "zstd",
            "--level",
            "9",
        ],
    );

    ok(home, &["import", &archive, "imported"]);
    for name in ["web", "c1", "c2", "c3", "imported"] {
        check_box(home, name);
    }
    assert_eq!(check_box(home, "web")["snapshot_count"], 1);

    // archive inspect needs no home: point --home at a directory that must not be created.
    let nohome = tmp.path().join("never-created");
    let ai = ok_json(&nohome, &["archive", "inspect", &archive]);
    assert!(!nohome.exists(), "archive inspect created a home");
    assert_eq!(ai["manifest"]["box_name"], "web");
    assert_eq!(ai["codec"], "zstd");
    assert_eq!(ai["entries"].as_array().unwrap().len(), 3);
    let ai_raw = ok_json(&nohome, &["archive", "inspect", raw.trim()]);
    assert_eq!(ai_raw["codec"], "none");
    assert!(ok(&nohome, &["archive", "inspect", &archive]).contains("manifest.json"));

    ok(home, &["snapshot", "restore", "web", "s1"]);
    check_box(home, "web");
    ok(home, &["snapshot", "rm", "web", "s1"]);
    assert_eq!(
        ok_json(home, &["snapshot", "ls", "web"]),
        Value::Array(vec![])
    );
    fails(home, &["snapshot", "info", "web", "s1"], 1);

    ok(home, &["start", "c1"]);
    assert_eq!(ok_json(home, &["info", "c1"])["status"], "running");
    fails(home, &["rm", "c1"], 1);
    ok(home, &["rm", "c1", "--force"]);
    ok(home, &["rm", "web"]);
    // Clones of a removed box keep working.
    check_box(home, "c2");
    check_box(home, "c3");
    let left: Vec<_> = ok_json(home, &["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["c2", "c3", "imported"]);
}

#[test]
fn cli_usage_error_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(tmp.path(), &["clone", "only-source"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cli_errors_exit_1_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let err = fails(&home, &["info", "missing"], 1);
    assert!(err.contains("missing"), "{err}");
    let err = fails(
        &home,
        &["create", "../x", "--disk", "a", "--guest-rootfs", "b"],
        1,
    );
    assert!(err.contains("invalid box name"), "{err}");
    // With -v the chain of causes may follow, but the first line is still the error.
    let out = run(&home, &["-v", "info", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
}

#[test]
fn cli_ls_json_on_empty_home() {
    let tmp = tempfile::tempdir().unwrap();
    let v = ok_json(tmp.path(), &["ls"]);
    assert_eq!(v, Value::Array(vec![]));
    let p = ok_json(tmp.path(), &["plugins"]);
    assert!(p.as_array().unwrap().iter().any(|r| r["name"] == "zstd"));
    let c = ok_json(tmp.path(), &["config"]);
    assert_eq!(c["codec"], "zstd");
}
