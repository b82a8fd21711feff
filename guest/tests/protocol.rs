//! The agent's protocol over a real unix socket, without freezing anything: the agent is
//! restricted (`--only`) to a directory that is not a mount point, so no request can freeze
//! a host filesystem. Runs as any user.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use boxlite_api::Error;
use boxlite_guest::{AgentClient, Config};
use common::{connect, raw, InProcess};

fn harmless_agent() -> (InProcess, tempfile::TempDir) {
    let not_a_mount = tempfile::tempdir().expect("tempdir");
    let agent = InProcess::start(Config {
        only: vec![not_a_mount.path().to_path_buf()],
        default_timeout_secs: 30,
    });
    (agent, not_a_mount)
}

#[test]
fn ping_status_and_thaw_when_not_frozen() {
    let (agent, _d) = harmless_agent();
    let mut c = connect(&agent.sock);
    c.ping().unwrap();
    assert!(c.status().unwrap().is_empty());
    c.thaw().unwrap();
    c.thaw().unwrap();
    assert!(c.status().unwrap().is_empty());
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let (agent, _d) = harmless_agent();
    let mut s = UnixStream::connect(&agent.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (req, needle) in [
        (&b"{\"op\":\"explode\"}\n"[..], "unknown op"),
        (b"this is not json\n", "bad JSON"),
        (b"\n", "bad JSON"),
        (b"{\"op\":\"freeze\",\"timeout_secs\":0}\n", "out of range"),
        (
            b"{\"op\":\"freeze\",\"timeout_secs\":601}\n",
            "out of range",
        ),
        (b"{\"op\":\"freeze\",\"mounts\":[]}\n", "mounts is empty"),
        (b"{\"op\":\"freeze\",\"mounts\":\"/\"}\n", "array"),
        (b"{\"op\":\"freeze\",\"mounts\":[\"/\"]}\n", "--only"),
        (
            b"{\"op\":\"freeze\",\"mounts\":[\"/no/such/dir\"]}\n",
            "No such file",
        ),
    ] {
        let answer = raw(&mut s, req);
        assert_eq!(answer["ok"], false, "{req:?}: {answer}");
        assert_eq!(answer["frozen"], serde_json::json!([]), "{answer}");
        let err = answer["error"].as_str().unwrap();
        assert!(err.contains(needle), "{req:?}: {err}");
    }
    // A line over 64 KiB, sent in pieces.
    let long = vec![b'x'; 70 * 1024];
    s.write_all(&long).unwrap();
    let answer = raw(&mut s, b"\n");
    assert_eq!(answer["ok"], false);
    assert!(answer["error"].as_str().unwrap().contains("longer than"));
    // Still usable; CRLF works too.
    let answer = raw(&mut s, b"{\"op\":\"ping\"}\r\n");
    assert_eq!(answer, serde_json::json!({"ok": true, "frozen": []}));
    let answer = raw(&mut s, b"{\"op\":\"status\"}\n");
    assert_eq!(answer["ok"], true);
}

#[test]
fn freeze_of_an_unmounted_only_dir_is_refused() {
    let (agent, dir) = harmless_agent();
    let mut c = connect(&agent.sock);
    let err = c.freeze(5, &[]).unwrap_err();
    assert!(matches!(err, Error::QuiesceFailed { .. }), "{err}");
    assert!(err.to_string().contains("none of the --only"), "{err}");
    let err = c.freeze(5, &[dir.path().to_path_buf()]).unwrap_err();
    assert!(err.to_string().contains("not a mount point"), "{err}");
    assert!(c.status().unwrap().is_empty());
}

#[test]
fn a_second_client_gets_an_error_not_a_hang() {
    let (agent, _d) = harmless_agent();
    let mut first = connect(&agent.sock);
    let start = Instant::now();
    let mut second = AgentClient::connect(&agent.sock).unwrap();
    let err = second.ping().unwrap_err();
    assert!(err.to_string().contains("another client"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    first.ping().unwrap();
    drop(first);
    // Once the first client is gone, a new one is served.
    let mut third = connect(&agent.sock);
    third.ping().unwrap();
}

#[test]
fn client_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let err = AgentClient::connect(dir.path().join("nobody.sock")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    // A peer that never answers: the request times out, the client closes and stays closed.
    let sock = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c = AgentClient::connect_with_timeout(&sock, Duration::from_millis(200)).unwrap();
    let (_peer, _) = listener.accept().unwrap();
    let err = c.ping().unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err}");
    let err = c.ping().unwrap_err();
    assert!(err.to_string().contains("reconnect"), "{err}");
}

#[test]
fn binary_rejects_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_boxlite-guest-agent");
    let out = std::process::Command::new(bin)
        .args(["--listen", "tcp:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix:PATH or vsock:PORT"));
    let out = std::process::Command::new(bin)
        .args(["--listen", "unix:/tmp/x.sock", "--default-timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}
