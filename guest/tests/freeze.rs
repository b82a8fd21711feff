//! Real FIFREEZE/FITHAW on loop-mounted ext4 and xfs filesystems (needs root; skips loudly
//! otherwise, and fails under CI=true). Every test restricts the agent to its own loop mounts.
//!
//! Case A08 (filesystem left frozen): (a) host killed after the freeze -> thawed on connection
//! loss; (b) capture step fails -> the client's guard thaws; the watchdog thaws after
//! `timeout_secs` even if the host stays connected; SIGTERM to the agent thaws.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxlite_api::Error;
use boxlite_guest::{AgentClient, Config};
use common::{
    can_mount, connect, serial, writable_within, AgentProcess, InProcess, LoopFs, Writer,
};

const BLOCKED: Duration = Duration::from_millis(1000);
const THAWED: Duration = Duration::from_secs(10);

fn only(paths: &[&Path]) -> Config {
    Config {
        only: paths.iter().map(|p| p.to_path_buf()).collect(),
        default_timeout_secs: 30,
    }
}

fn freeze_cycle(fstype: &str) {
    if !can_mount(fstype) {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new(fstype, None);
    let agent = InProcess::start(only(&[&fs.mnt]));
    let mut c = connect(&agent.sock);
    c.ping().unwrap();
    assert!(c.status().unwrap().is_empty());

    let t = Instant::now();
    let frozen = c.freeze(30, std::slice::from_ref(&fs.mnt)).unwrap();
    let freeze_time = t.elapsed();
    assert_eq!(frozen, vec![fs.mnt.clone()]);
    assert_eq!(c.status().unwrap(), frozen);
    assert_eq!(agent.agent.frozen(), frozen);

    let mut w = Writer::start(&fs.mnt, "blocked");
    w.assert_blocked(BLOCKED);

    // A second freeze while frozen is refused and changes nothing.
    let err = c.freeze(30, &[]).unwrap_err();
    assert!(err.to_string().contains("already frozen"), "{err}");
    assert_eq!(c.status().unwrap(), frozen);
    w.assert_blocked(Duration::from_millis(100));

    let t = Instant::now();
    c.thaw().unwrap();
    let thaw_time = t.elapsed();
    let done = w
        .finished_within(THAWED)
        .expect("write completes after thaw");
    assert!(done >= BLOCKED, "write finished too early: {done:?}");
    assert_eq!(
        std::fs::metadata(fs.mnt.join("blocked")).unwrap().len(),
        4096
    );
    assert!(c.status().unwrap().is_empty());
    // Thaw when not frozen: ok, no-op.
    c.thaw().unwrap();
    assert!(!fs.thaw(), "nothing should still be frozen");

    // Without `mounts`, the agent freezes its --only set.
    let frozen = c.freeze(30, &[]).unwrap();
    assert_eq!(frozen, vec![fs.mnt.clone()]);
    c.thaw().unwrap();
    eprintln!("{fstype}: freeze (sync + FIFREEZE) {freeze_time:?}, thaw {thaw_time:?}");
}

#[test]
fn ext4_freeze_blocks_writes_until_thaw() {
    freeze_cycle("ext4");
}

#[test]
fn xfs_freeze_blocks_writes_until_thaw() {
    freeze_cycle("xfs");
}

#[test]
fn watchdog_thaws_after_timeout_while_client_stays_connected() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let agent = InProcess::start(only(&[&fs.mnt]));
    let mut c = connect(&agent.sock);
    let t = Instant::now();
    c.freeze(2, std::slice::from_ref(&fs.mnt)).unwrap();
    let mut w = Writer::start(&fs.mnt, "w");
    w.assert_blocked(BLOCKED);
    w.finished_within(THAWED).expect("watchdog thawed");
    let thawed_after = t.elapsed();
    assert!(
        thawed_after >= Duration::from_secs(2) && thawed_after < Duration::from_secs(5),
        "{thawed_after:?}"
    );
    // The client is still connected and sees the thaw.
    assert!(c.status().unwrap().is_empty());
    c.thaw().unwrap();
    eprintln!("watchdog (timeout_secs=2) thawed after {thawed_after:?}");
}

/// Role played by a child copy of this test binary: freeze, say so, then wait to be killed.
#[test]
fn role_freezing_client() {
    let Ok(spec) = std::env::var("BOXLITE_GUEST_ROLE_FREEZE") else {
        return;
    };
    let (sock, mnt) = spec.split_once('|').expect("sock|mnt");
    let mut c = AgentClient::connect(sock).unwrap();
    c.freeze(60, &[PathBuf::from(mnt)]).unwrap();
    println!("FROZEN");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn client_killed_while_frozen_is_thawed_by_connection_loss() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let agent = InProcess::start(only(&[&fs.mnt]));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "role_freezing_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "BOXLITE_GUEST_ROLE_FREEZE",
            format!("{}|{}", agent.sock.display(), fs.mnt.display()),
        )
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut saw = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("FROZEN") {
            saw = true;
            break;
        }
    }
    if !saw {
        let _ = child.kill();
        let _ = child.wait();
        panic!("client child did not freeze");
    }
    assert_eq!(agent.agent.frozen(), vec![fs.mnt.clone()]);
    let mut w = Writer::start(&fs.mnt, "w");
    w.assert_blocked(BLOCKED);
    let t = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let done = w
        .finished_within(THAWED)
        .expect("thawed after the client died");
    let _ = done;
    let thawed_after = t.elapsed();
    assert!(thawed_after < Duration::from_secs(5), "{thawed_after:?}");
    assert!(agent.agent.frozen().is_empty());
    eprintln!("client SIGKILL -> thawed after {thawed_after:?} (watchdog was 60 s)");
}

#[test]
fn agent_binary_sigterm_while_frozen_thaws() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let mut agent = AgentProcess::start(&[&fs.mnt], 60);
    let mut c = connect(&agent.sock);
    assert_eq!(c.freeze(60, &[]).unwrap(), vec![fs.mnt.clone()]);
    let mut w = Writer::start(&fs.mnt, "w");
    w.assert_blocked(BLOCKED);
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    w.finished_within(THAWED).expect("SIGTERM thawed");
    let status = agent.wait(THAWED).expect("agent exited");
    assert!(status.success(), "{status}");
    assert!(!agent.sock.exists(), "socket file removed on exit");
    eprintln!("agent SIGTERM -> thawed and exited in {:?}", t.elapsed());
}

#[test]
fn agent_restart_thaws_what_a_killed_agent_left_frozen() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let mut agent = AgentProcess::start(&[&fs.mnt], 60);
    let mut c = connect(&agent.sock);
    c.freeze(60, &[]).unwrap();
    agent.signal(libc::SIGKILL);
    agent.wait(THAWED).expect("killed");
    drop(c);
    let mut w = Writer::start(&fs.mnt, "w");
    w.assert_blocked(BLOCKED);
    // A new agent for the same mounts thaws the leftover freeze at start.
    let _agent2 = AgentProcess::start(&[&fs.mnt], 60);
    w.finished_within(THAWED).expect("restarted agent thawed");
}

#[test]
fn mount_outside_only_is_refused_and_nothing_is_frozen() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let allowed = LoopFs::new("ext4", None);
    let other = LoopFs::new("ext4", None);
    let agent = InProcess::start(only(&[&allowed.mnt]));
    let mut c = connect(&agent.sock);
    let err = c
        .freeze(5, &[allowed.mnt.clone(), other.mnt.clone()])
        .unwrap_err();
    assert!(matches!(err, Error::QuiesceFailed { .. }), "{err}");
    assert!(err.to_string().contains("--only"), "{err}");
    assert!(c.status().unwrap().is_empty());
    assert!(writable_within(&allowed.mnt, THAWED));
    assert!(writable_within(&other.mnt, THAWED));
    assert!(!allowed.thaw() && !other.thaw(), "nothing was frozen");
}

#[test]
fn nested_mounts_freeze_deepest_first_and_thaw_parents_first() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let parent = LoopFs::new("ext4", None);
    let child_mnt = parent.mnt.join("child");
    let child = LoopFs::new("ext4", Some(&child_mnt));
    let agent = InProcess::start(only(&[&parent.mnt, &child.mnt]));
    let mut c = connect(&agent.sock);
    let frozen = c.freeze(30, &[]).unwrap();
    assert_eq!(frozen, vec![child.mnt.clone(), parent.mnt.clone()]);
    let mut wp = Writer::start(&parent.mnt, "p");
    let mut wc = Writer::start(&child.mnt, "c");
    wp.assert_blocked(BLOCKED);
    wc.assert_blocked(Duration::from_millis(10));
    c.thaw().unwrap();
    wp.finished_within(THAWED).unwrap();
    wc.finished_within(THAWED).unwrap();
    // Request order does not matter: still deepest first.
    let frozen = c
        .freeze(30, &[parent.mnt.clone(), child.mnt.clone()])
        .unwrap();
    assert_eq!(frozen, vec![child.mnt.clone(), parent.mnt.clone()]);
    c.thaw().unwrap();
    drop(c);
    drop(agent);
    drop(child); // unmount the child before the parent
}

#[test]
fn capture_failure_after_freeze_thaws_through_the_guard() {
    // A08(b): the host froze, then its capture step failed.
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let agent = InProcess::start(only(&[&fs.mnt]));
    let mut c = connect(&agent.sock);
    let mut w = None;
    let capture = |c: &mut AgentClient, w: &mut Option<Writer>| -> boxlite_api::Result<()> {
        let q = c.quiesce(30, std::slice::from_ref(&fs.mnt))?;
        assert_eq!(q.frozen(), std::slice::from_ref(&fs.mnt));
        let mut writer = Writer::start(&fs.mnt, "w");
        writer.assert_blocked(BLOCKED);
        *w = Some(writer);
        Err(Error::config("simulated capture failure"))
    };
    let err = capture(&mut c, &mut w).unwrap_err();
    assert!(err.to_string().contains("simulated"));
    w.unwrap().finished_within(THAWED).expect("guard thawed");
    assert!(c.status().unwrap().is_empty());
    // The explicit path thaws too.
    let q = c.quiesce(30, std::slice::from_ref(&fs.mnt)).unwrap();
    q.thaw().unwrap();
    assert!(writable_within(&fs.mnt, THAWED));
}

#[test]
fn already_frozen_by_someone_else_is_ebusy_and_nothing_stays_frozen() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let a = LoopFs::new("ext4", None);
    let b = LoopFs::new("ext4", None);
    // Freeze b behind the agent's back. Both are depth-equal; whichever order, the agent must
    // fail on b and leave a thawed.
    let fb = boxlite_guest::mounts::open_mount(&b.mnt).unwrap();
    boxlite_guest::mounts::fifreeze(&fb).unwrap();
    let agent = InProcess::start(only(&[&a.mnt, &b.mnt]));
    let mut c = connect(&agent.sock);
    let err = c.freeze(10, &[]).unwrap_err();
    assert!(err.to_string().contains("EBUSY"), "{err}");
    assert!(c.status().unwrap().is_empty());
    assert!(writable_within(&a.mnt, THAWED), "a was thawed again");
    assert!(b.thaw(), "b is still frozen by its owner");
}

#[test]
fn the_filesystem_holding_the_socket_is_never_frozen() {
    if !can_mount("ext4") {
        return;
    }
    let _serial = serial();
    let fs = LoopFs::new("ext4", None);
    let sock = fs.mnt.join("agent.sock");
    let agent = InProcess::start_at(Config::default(), sock, tempfile::tempdir().unwrap());
    let mut c = connect(&agent.sock);
    let err = c.freeze(5, std::slice::from_ref(&fs.mnt)).unwrap_err();
    assert!(err.to_string().contains("agent's own socket"), "{err}");
    assert!(c.status().unwrap().is_empty());
    drop(c);
    drop(agent);
    let _ = std::fs::remove_file(fs.mnt.join("agent.sock"));
}
