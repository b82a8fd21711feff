//! libFuzzer-free stress test of the archive reader: small real archives (every codec, qcow2
//! disks made by qemu-img) truncated, with bytes flipped, overwritten or inserted
//! (deterministic xorshift), fed to the same harness as the cargo-fuzz target
//! `import_archive` (`boxlite_archive::fuzzing::import_bytes`). A panic, or a refused import
//! that leaves files in staging, fails the test. Runs in the normal test suite, no nightly.

mod common;

use std::process::Command;

use boxlite_archive::fuzzing::{header_only_validator, import_bytes};
use boxlite_archive::{export_to_path, ExportDisks};
use common::*;

/// 1 MiB qcow2 with 512-byte clusters and 4 KiB of data: a few KiB on disk.
fn tiny(dir: &std::path::Path, name: &str, pattern: u8) -> std::path::PathBuf {
    let p = dir.join(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"])
        .arg(&p)
        .arg("1M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -q -P {pattern} 0 4k")])
        .arg(&p));
    p
}

#[test]
fn mutated_archives_never_panic_nor_leave_files() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = tiny(dir.path(), "guest.qcow2", 0x47);
    let container = tiny(dir.path(), "container.qcow2", 0x44);
    let mut seeds = Vec::new();
    for name in ["zstd", "lz4", "none"] {
        let c = codec(name);
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let a = export_to_path(
            &out,
            "seed",
            c.as_ref(),
            c.default_level(),
            &meta(),
            ExportDisks {
                guest_rootfs: Box::new(FileFlatDisk::open(&guest)),
                container: Box::new(FileFlatDisk::open(&container)),
            },
            &mut |_| {},
        )
        .unwrap();
        let bytes = std::fs::read(&a.path).unwrap();
        // Control: the unmutated archive imports through the harness.
        assert!(
            import_bytes(&bytes, header_only_validator),
            "{name} seed refused"
        );
        seeds.push(bytes);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0;
    let rounds = 300;
    for i in 0..rounds {
        let seed = &seeds[i % seeds.len()];
        let mut m = seed.clone();
        match next() % 4 {
            0 => m.truncate((next() as usize) % m.len()),
            1 => {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % m.len();
                    m[at] ^= 1 << (next() % 8);
                }
            }
            2 => {
                let at = (next() as usize) % m.len();
                let len = ((next() % 64) as usize).min(m.len() - at);
                let b = next() as u8;
                m[at..at + len].fill(b);
            }
            _ => {
                let at = (next() as usize) % m.len();
                let junk: Vec<u8> = (0..1 + next() % 600).map(|_| next() as u8).collect();
                m.splice(at..at, junk);
            }
        }
        if import_bytes(&m, header_only_validator) {
            accepted += 1;
        }
    }
    // Almost every mutation must be refused (SHA-256 over the disks, strict tar and manifest);
    // the few accepted ones changed only bytes that carry no meaning (tar padding, mtime).
    assert!(
        accepted < rounds / 4,
        "{accepted} of {rounds} mutants accepted"
    );
}
