//! The `boxlite-conformance` program: table, JSON, exit codes.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boxlite-conformance"))
}

#[test]
fn lists_at_least_forty_cases() {
    let out = bin().arg("--list").output().unwrap();
    assert!(out.status.success());
    let n = String::from_utf8(out.stdout).unwrap().lines().count();
    assert!(n >= 40, "{n} cases");
}

#[test]
fn passing_run_prints_table_and_exits_0() {
    let out = bin().args(["--filter", "get_unknown"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("get_unknown_box_is_none") && text.contains("pass"),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "2 passed, 0 failed"), "{text}");
}

#[test]
fn unknown_backend_fails_every_case_with_json() {
    let out = bin()
        .args([
            "--storage",
            "no-such-store",
            "--filter",
            "get_unknown",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 2, "{v}");
    let msg = v["results"][0]["failure"].as_str().unwrap();
    assert!(
        msg.contains("unknown storage backend 'no-such-store'"),
        "{msg}"
    );
}
