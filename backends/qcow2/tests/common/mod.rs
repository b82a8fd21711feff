//! Shared helpers for the qcow2 integration tests: qemu-img / qemu-io as
//! oracles, byte-for-byte comparison of our reads with `qemu-img convert`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite_backend_qcow2::image::{Chain, FlattenPlan, OpenOptions};

/// True when qemu-img and qemu-io are usable. Without them the caller must
/// skip: loudly, or by panicking when CI=true.
pub fn qemu_available(test: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("qemu-io")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: qemu-img/qemu-io not installed but CI=true; install the qemu-utils package");
        }
        eprintln!("!!!!! SKIPPING {test}: qemu-img/qemu-io not installed (apt-get install qemu-utils) !!!!!");
    }
    ok
}

/// Run a command, panicking with its output on failure. Returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and return (exit code, stdout+stderr).
pub fn run_status(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

/// `qemu-img create -f qcow2 [opts] path size`.
pub fn create(path: &Path, size: &str, opts: &[&str]) {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    a.extend_from_slice(opts);
    a.push(p(path));
    a.push(size);
    run("qemu-img", &a);
}

/// `qemu-img create -f qcow2 -b backing -F fmt path size`.
pub fn create_overlay_qemu(path: &Path, backing: &str, fmt: &str, size: Option<&str>) {
    let mut a = vec![
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        fmt,
        p(path),
    ];
    if let Some(s) = size {
        a.push(s);
    }
    run("qemu-img", &a);
}

/// Run qemu-io commands on a qcow2 image.
pub fn qemu_io(path: &Path, cmds: &[String]) {
    let mut a: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(p(path));
    run("qemu-io", &a);
}

/// `qemu-img check`: panics unless it reports no errors and no leaks.
pub fn assert_qemu_check(path: &Path) {
    let (code, out) = run_status("qemu-img", &["check", p(path)]);
    assert_eq!(code, 0, "qemu-img check {} failed:\n{out}", path.display());
}

/// `qemu-img compare a b` (guest content equality).
pub fn assert_qemu_compare(a: &Path, b: &Path) {
    let (code, out) = run_status("qemu-img", &["compare", p(a), p(b)]);
    assert_eq!(
        code,
        0,
        "qemu-img compare {} {}:\n{out}",
        a.display(),
        b.display()
    );
}

/// Guest content of a chain as a raw file made by qemu-img.
pub fn to_raw(top: &Path, out: &Path) {
    run("qemu-img", &["convert", "-O", "raw", p(top), p(out)]);
}

/// Our read of every byte of `top`'s chain equals `qemu-img convert -O raw`.
pub fn assert_read_matches_qemu(top: &Path) {
    let dir = top.parent().unwrap();
    let raw = dir.join(format!(
        "{}.oracle.raw",
        top.file_name().unwrap().to_string_lossy()
    ));
    to_raw(top, &raw);
    let chain = Chain::open(top, &OpenOptions::default()).expect("open chain");
    assert_chain_equals_file(&chain, &raw);
    std::fs::remove_file(&raw).unwrap();
}

/// Compare the chain's content with a raw file, 4 MiB at a time.
pub fn assert_chain_equals_file(chain: &Chain, raw: &Path) {
    use std::io::Read;
    let size = chain.virtual_size();
    let mut f = std::fs::File::open(raw).unwrap();
    let flen = f.metadata().unwrap().len();
    assert_eq!(flen, size, "virtual size differs from qemu's raw output");
    let mut a = vec![0u8; 4 << 20];
    let mut b = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(a.len());
        chain.read_at(&mut a[..n], off).expect("our read");
        f.read_exact(&mut b[..n]).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n]
                .iter()
                .zip(&b[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "content differs at guest byte {} (ours {:#x}, qemu {:#x})",
                off + i as u64,
                a[i],
                b[i]
            );
        }
        off += n as u64;
    }
}

/// Flatten `top` with our code: size_bytes == bytes written, qemu-img
/// check clean, qemu-img compare equal, no backing file.
pub fn assert_flatten_ok(top: &Path) -> PathBuf {
    let chain = Chain::open(top, &OpenOptions::default()).expect("open chain");
    let plan = FlattenPlan::new(&chain).expect("plan");
    let out = top.with_extension("flat.qcow2");
    let mut f = std::fs::File::create(&out).unwrap();
    let n = plan.write_to(&mut f).expect("write_to");
    drop(f);
    assert_eq!(n, plan.size_bytes(), "bytes written != planned size");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), plan.size_bytes());
    assert_qemu_check(&out);
    assert_qemu_compare(top, &out);
    let info = run("qemu-img", &["info", "--output=json", p(&out)]);
    assert!(
        !info.contains("backing-filename"),
        "flattened image has a backing file: {info}"
    );
    out
}

/// qemu-io write command with a pattern.
pub fn w(pattern: u8, off: u64, len: u64) -> String {
    format!("write -q -P {pattern:#x} {off} {len}")
}
