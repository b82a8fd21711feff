//! Hostile and damaged archives (../shared/cases A01, A02-style refusals, A03, A13, limits):
//! each import fails with a typed error naming the entry where one is at fault, nothing is
//! created outside the staging directory, and the private staging subdirectory is removed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use boxlite_api::{ArchiveManifest, Error};
use boxlite_archive::{builtin_codecs, export_to_path, import_archive, inspect, ImportLimits};
use common::*;
use serde_json::{json, Value};

struct Env {
    fx: Fixture,
    root: tempfile::TempDir,
    staging: PathBuf,
    inputs: PathBuf,
    manifest: ArchiveManifest,
}

impl Env {
    fn new() -> Env {
        let fx = Fixture::new();
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        let inputs = root.path().join("inputs");
        std::fs::create_dir(&staging).unwrap();
        std::fs::create_dir(&inputs).unwrap();
        let c = codec("zstd");
        let good = export_to_path(
            &inputs,
            "good",
            c.as_ref(),
            3,
            &meta(),
            fx.disks(),
            &mut |_| {},
        )
        .unwrap();
        Env {
            fx,
            root,
            staging,
            inputs,
            manifest: good.manifest,
        }
    }

    fn good(&self) -> PathBuf {
        self.inputs.join("good.boxsnap")
    }

    /// A good archive written by our writer with `codec`.
    fn written_with(&self, codec_name: &str) -> PathBuf {
        let dir = self.inputs.join(codec_name);
        std::fs::create_dir_all(&dir).unwrap();
        let c = codec(codec_name);
        let p = dir.join("w.boxsnap");
        if !p.exists() {
            export_to_path(
                &dir,
                "w",
                c.as_ref(),
                c.default_level(),
                &meta(),
                self.fx.disks(),
                &mut |_| {},
            )
            .unwrap();
        }
        p
    }

    fn g(&self) -> Value {
        json!({"name": "guest-rootfs.qcow2", "src": self.fx.guest})
    }
    fn d(&self) -> Value {
        json!({"name": "disk.qcow2", "src": self.fx.container})
    }
    fn m_with(&self, f: impl FnOnce(&mut Value)) -> Value {
        let mut v = serde_json::to_value(&self.manifest).unwrap();
        f(&mut v);
        json!({"name": "manifest.json", "data": serde_json::to_string_pretty(&v).unwrap()})
    }
    fn m(&self) -> Value {
        self.m_with(|_| {})
    }

    /// Build a tar with Python's tarfile from `entries`, compress it with `codec_name`.
    fn hostile(&self, name: &str, entries: Value, codec_name: &str) -> PathBuf {
        let tar = self.inputs.join(format!("{name}.tar.tmp"));
        python_tar(&entries, &tar);
        let bytes = std::fs::read(&tar).unwrap();
        std::fs::remove_file(&tar).unwrap();
        self.raw(name, &bytes, codec_name)
    }

    fn raw(&self, name: &str, tar: &[u8], codec_name: &str) -> PathBuf {
        let out = self.inputs.join(format!("{name}.boxsnap"));
        compress(codec(codec_name).as_ref(), tar, &out);
        out
    }

    fn bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let out = self.inputs.join(format!("{name}.boxsnap"));
        std::fs::write(&out, bytes).unwrap();
        out
    }

    /// Import must fail; the tree under root (outside staging) must not change and staging
    /// must be empty afterwards. Returns the error.
    fn refused_with(&self, archive: &Path, limits: &ImportLimits) -> Error {
        let before = tree(self.root.path());
        let r = import_archive(
            archive,
            &builtin_codecs(),
            &self.staging,
            limits,
            test_validator,
        );
        let err = match r {
            Ok(ok) => panic!("{} was accepted: {ok:?}", archive.display()),
            Err(e) => e,
        };
        let after = tree(self.root.path());
        assert_eq!(before, after, "{}: files changed: {err}", archive.display());
        assert_eq!(
            std::fs::read_dir(&self.staging).unwrap().count(),
            0,
            "{}: staging not cleaned",
            archive.display()
        );
        // inspect refuses it too (except validator-only failures, checked by the caller).
        err
    }

    fn refused(&self, archive: &Path) -> Error {
        self.refused_with(archive, &ImportLimits::default())
    }
}

#[track_caller]
fn assert_archive(err: &Error, entry: Option<&str>, detail_has: &str) {
    match err {
        Error::Archive {
            entry: e, detail, ..
        } => {
            assert_eq!(e.as_deref(), entry, "wrong entry in: {err}");
            assert!(
                detail.to_lowercase().contains(&detail_has.to_lowercase()),
                "expected {detail_has:?} in: {err}"
            );
        }
        other => panic!("expected Error::Archive about {entry:?}, got {other:?}"),
    }
}

#[test]
fn good_archive_is_accepted() {
    let env = Env::new();
    let ok = import_archive(
        &env.good(),
        &builtin_codecs(),
        &env.staging,
        &ImportLimits::default(),
        test_validator,
    )
    .unwrap();
    ok.discard().unwrap();
    // Python-built archive with the same parts is accepted too (pax format, other writer).
    let py = env.hostile("python-good", json!([env.g(), env.d(), env.m()]), "zstd");
    let ok = import_archive(
        &py,
        &builtin_codecs(),
        &env.staging,
        &ImportLimits::default(),
        test_validator,
    )
    .unwrap();
    ok.discard().unwrap();
}

/// A01 (a)-(g) plus directory, `./` and pax-path variants.
#[test]
fn case_a01_entries_that_escape_staging() {
    let env = Env::new();
    let outside = env.root.path().join("outside");
    let (g, d, m) = (env.g(), env.d(), env.m());

    let a = env.hostile(
        "a01a",
        json!([{"name": "disk.qcow2", "type": "symlink", "link": outside}, g, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&a), Some("disk.qcow2"), "symbolic link");

    let b = env.hostile(
        "a01b",
        json!([{"name": "s", "type": "symlink", "link": ".."}, {"name": "s/x", "data": "pwned"}, g, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&b), Some("s"), "symbolic link");

    let c = env.hostile(
        "a01c",
        json!([g, {"name": "h", "type": "hardlink", "link": "../../etc/hosts"}, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&c), Some("h"), "hard link");

    let abs = env.root.path().join("abs-x");
    let abs_s = abs.to_str().unwrap();
    let dd = env.hostile(
        "a01d",
        json!([g, {"name": abs_s, "data": "x"}, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&dd), Some(abs_s), "absolute");
    let tmp = env.hostile(
        "a01d-tmp",
        json!([{"name": "/tmp/x", "data": "x"}, g, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&tmp), Some("/tmp/x"), "absolute");

    let e = env.hostile(
        "a01e",
        json!([g, {"name": "../x", "data": "x"}, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&e), Some("../x"), "'..'");

    let f = env.hostile("a01f", json!([g, g, d, m]), "zstd");
    assert_archive(
        &env.refused(&f),
        Some("guest-rootfs.qcow2"),
        "more than once",
    );

    let fifo = env.hostile(
        "a01g-fifo",
        json!([g, {"name": "disk.qcow2", "type": "fifo"}, m]),
        "zstd",
    );
    assert_archive(&env.refused(&fifo), Some("disk.qcow2"), "FIFO");
    let dev = env.hostile(
        "a01g-dev",
        json!([{"name": "null", "type": "chr"}, g, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&dev), Some("null"), "character device");

    let dir = env.hostile(
        "dir",
        json!([{"name": "sub", "type": "dir"}, g, d, m]),
        "zstd",
    );
    assert_archive(&env.refused(&dir), Some("sub/"), "directory");

    let dot = env.hostile(
        "dot",
        json!([g, {"name": "./disk.qcow2", "src": env.fx.container}, m]),
        "zstd",
    );
    assert_archive(&env.refused(&dot), Some("./disk.qcow2"), "unexpected entry");

    let pax = env.hostile(
        "pax-path",
        json!([g, {"name": "disk.qcow2", "src": env.fx.container, "pax": {"path": "../evil"}}, m]),
        "zstd",
    );
    assert_archive(&env.refused(&pax), Some("../evil"), "'..'");

    assert!(!outside.exists() && !abs.exists());
    assert!(
        !env.root.path().join("x").exists()
            && !env.root.path().parent().unwrap().join("x").exists()
    );
}

/// A03: a manifest whose box_name is a path.
#[test]
fn case_a03_manifest_box_name_is_checked() {
    let env = Env::new();
    let (g, d) = (env.g(), env.d());
    let m = env.m_with(|v| v["box_name"] = json!("../../../tmp/pwn"));
    let p = env.hostile("a03", json!([g, d, m]), "zstd");
    match env.refused(&p) {
        Error::InvalidName { name, .. } => assert_eq!(name, "../../../tmp/pwn"),
        other => panic!("{other:?}"),
    }
}

/// A13: truncated or inconsistent archives, with every codec where it applies.
#[test]
fn case_a13_truncated_and_inconsistent() {
    let env = Env::new();
    let (g, d, m) = (env.g(), env.d(), env.m());

    // Last 100 KiB cut, every codec.
    for c in ["zstd", "lz4", "none"] {
        let bytes = std::fs::read(env.written_with(c)).unwrap();
        assert!(
            bytes.len() > 200 << 10,
            "{c} archive too small for the case"
        );
        let cut = env.bytes(&format!("cut-{c}"), &bytes[..bytes.len() - (100 << 10)]);
        // Where the damage is detected depends on the codec's block layout (lz4 loses the
        // whole last 4 MiB block), so only the kind of error is fixed.
        match env.refused(&cut) {
            Error::Archive { detail, .. } => assert!(detail.contains("truncated"), "{c}: {detail}"),
            other => panic!("{c}: {other:?}"),
        }
        // The last few bytes only (codec trailer / tar end marker).
        for n in [4usize, 512, 1024] {
            let cut = env.bytes(&format!("cut{n}-{c}"), &bytes[..bytes.len() - n]);
            let err = env.refused(&cut);
            assert!(matches!(err, Error::Archive { .. }), "{c} cut {n}: {err:?}");
        }
    }
    // The plain tar without its end-of-archive marker ends on a block boundary: still refused.
    let bytes = std::fs::read(env.written_with("none")).unwrap();
    let no_end = env.bytes("no-end", &bytes[..bytes.len() - 1024]);
    assert_archive(&env.refused(&no_end), None, "end-of-archive");

    // One byte flipped inside a disk entry (plain tar: the checksum catches it).
    let mut flipped = bytes.clone();
    flipped[512 + 300_000] ^= 0x01;
    let f = env.bytes("flip-none", &flipped);
    assert_archive(
        &env.refused(&f),
        Some("guest-rootfs.qcow2"),
        "checksum mismatch",
    );
    // ... and inside compressed data (the codec's own check or ours catches it).
    for c in ["zstd", "lz4"] {
        let mut b = std::fs::read(env.written_with(c)).unwrap();
        let mid = b.len() / 3;
        b[mid] ^= 0x01;
        let f = env.bytes(&format!("flip-{c}"), &b);
        assert!(matches!(env.refused(&f), Error::Archive { .. }));
    }

    // Manifest present twice with different content.
    let m2 = env.m_with(|v| v["image"] = json!("other"));
    let twice = env.hostile("manifest-twice", json!([g, d, m, m2]), "zstd");
    assert_archive(
        &env.refused(&twice),
        Some("manifest.json"),
        "more than once",
    );

    // A disk listed in the manifest but missing.
    let missing = env.hostile("missing-disk", json!([g, m]), "zstd");
    assert_archive(&env.refused(&missing), Some("disk.qcow2"), "missing");
    let no_manifest = env.hostile("no-manifest", json!([g, d]), "zstd");
    assert_archive(
        &env.refused(&no_manifest),
        Some("manifest.json"),
        "no manifest",
    );

    // An extra unlisted entry.
    let extra = env.hostile(
        "extra",
        json!([g, d, {"name": "extra.bin", "data": "x"}, m]),
        "zstd",
    );
    assert_archive(&env.refused(&extra), Some("extra.bin"), "unexpected entry");

    // Version 99 (with a field this build does not know, as a newer writer would add).
    let v99 = env.m_with(|v| {
        v["version"] = json!(99);
        v["future_field"] = json!(true);
    });
    let p = env.hostile("v99", json!([g, d, v99]), "zstd");
    let err = env.refused(&p);
    assert_archive(&err, Some("manifest.json"), "newer boxlite");
    assert!(err.to_string().contains("upgrade boxlite"), "{err}");
}

#[test]
fn manifest_inconsistencies() {
    let env = Env::new();
    let (g, d) = (env.g(), env.d());
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, Option<&str>, &str)> = vec![
        (
            "unknown-field",
            Box::new(|v| v["extra"] = json!(1)),
            Some("manifest.json"),
            "unknown field",
        ),
        (
            "missing-field",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("image");
            }),
            Some("manifest.json"),
            "missing field",
        ),
        (
            "version-0",
            Box::new(|v| v["version"] = json!(0)),
            Some("manifest.json"),
            "version 0",
        ),
        (
            "codec",
            Box::new(|v| v["codec"] = json!("lz4")),
            Some("manifest.json"),
            "codec",
        ),
        (
            "format",
            Box::new(|v| v["format"] = json!("raw")),
            Some("manifest.json"),
            "format",
        ),
        (
            "bad-sum",
            Box::new(|v| v["guest_disk_checksum"] = json!("md5:abc")),
            Some("manifest.json"),
            "sha256",
        ),
        (
            "wrong-sum",
            Box::new(|v| {
                v["container_disk_checksum"] = json!(format!("sha256:{}", "0".repeat(64)))
            }),
            Some("disk.qcow2"),
            "checksum mismatch",
        ),
        (
            "wrong-bytes",
            Box::new(|v| {
                v["guest_disk_bytes"] = json!(v["guest_disk_bytes"].as_u64().unwrap() + 1)
            }),
            Some("guest-rootfs.qcow2"),
            "manifest says",
        ),
        (
            "wrong-vsize",
            Box::new(|v| v["container_disk_virtual_size"] = json!(12345)),
            Some("disk.qcow2"),
            "virtual size",
        ),
    ];
    for (name, edit, entry, has) in cases {
        let m = env.m_with(|v| edit(v));
        let p = env.hostile(name, json!([g, d, m]), "zstd");
        assert_archive(&env.refused(&p), entry, has);
    }
    let not_json = env.hostile(
        "not-json",
        json!([g, d, {"name": "manifest.json", "data": "{"}]),
        "zstd",
    );
    assert_archive(
        &env.refused(&not_json),
        Some("manifest.json"),
        "not valid JSON",
    );
}

/// Disks the caller's qcow2 validator refuses (A02 style) never stay staged.
#[test]
fn validator_refusals_clean_up() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let evil = work.path().join("evil.qcow2");
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
        ])
        .arg(&evil)
        .arg("1M"));
    let junk = work.path().join("junk.qcow2");
    std::fs::write(&junk, random_bytes(70_000, 3)).unwrap();
    for (name, file) in [("backing", &evil), ("junk", &junk)] {
        let bytes = std::fs::read(file).unwrap();
        let sum = {
            use sha2::Digest;
            let d: [u8; 32] = sha2::Sha256::digest(&bytes).into();
            boxlite_api::types::format_sha256(&d)
        };
        let m = env.m_with(|v| {
            v["container_disk_checksum"] = json!(sum);
            v["container_disk_bytes"] = json!(bytes.len());
        });
        let p = env.hostile(
            name,
            json!([env.g(), {"name": "disk.qcow2", "src": file}, m]),
            "zstd",
        );
        assert_archive(&env.refused(&p), Some("disk.qcow2"), "refused");
    }
}

#[test]
fn limits_and_bombs() {
    let env = Env::new();
    let (g, d, m) = (env.g(), env.d(), env.m());

    // A disk entry declaring more than max_disk_bytes fails on the header, before any data.
    let small = ImportLimits {
        max_disk_bytes: 1 << 20,
        ..ImportLimits::default()
    };
    assert_archive(
        &env.refused_with(&env.good(), &small),
        Some("guest-rootfs.qcow2"),
        "over the limit",
    );

    // Decompression bomb: 64 MiB of zeros in a few KiB of zstd.
    let zeros = env.inputs.join("zeros.tmp");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let bomb = env.hostile(
        "bomb",
        json!([g, {"name": "disk.qcow2", "src": zeros}, m]),
        "zstd",
    );
    std::fs::remove_file(&zeros).unwrap();
    // 2 MiB of random guest data + a few KiB for the 64 MiB of zeros.
    assert!(std::fs::metadata(&bomb).unwrap().len() < 3 << 20);
    let lim = ImportLimits {
        max_disk_bytes: 8 << 20,
        ..ImportLimits::default()
    };
    assert_archive(
        &env.refused_with(&bomb, &lim),
        Some("disk.qcow2"),
        "over the limit",
    );
    // The total budget catches it as well.
    let lim = ImportLimits {
        max_total_bytes: 16 << 20,
        ..ImportLimits::default()
    };
    assert_archive(
        &env.refused_with(&bomb, &lim),
        Some("disk.qcow2"),
        "exceeds the import limit",
    );

    // A manifest over 1 MiB.
    let big = json!({"name": "manifest.json", "data": " ".repeat((1 << 20) + 1)});
    let p = env.hostile("big-manifest", json!([g, d, big]), "zstd");
    assert_archive(&env.refused(&p), Some("manifest.json"), "over the limit");

    // A zstd frame declaring a 2^31-byte window: refused instead of allocated.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3];
    frame.extend_from_slice(&[0x01, 0x10, 0x00]); // last raw block of 512 bytes
    frame.extend_from_slice(&[0u8; 512]);
    let w = env.bytes("window", &frame);
    let err = env.refused(&w);
    assert_archive(&err, None, "memory");
    // zstd's window limit comes from DecodeLimits.
    let strict = ImportLimits {
        decode: boxlite_api::DecodeLimits { max_window_log: 10 },
        ..ImportLimits::default()
    };
    assert_archive(&env.refused_with(&env.good(), &strict), None, "memory");
}

#[test]
fn malformed_streams() {
    let env = Env::new();
    let (g, d, m) = (env.g(), env.d(), env.m());
    assert_archive(
        &env.refused(&env.bytes("empty", b"")),
        None,
        "unknown archive format",
    );
    assert_archive(
        &env.refused(&env.bytes("noise", &random_bytes(4096, 9))),
        None,
        "unknown archive format",
    );

    // Trailing data after the end-of-archive marker.
    let mut tar = Vec::new();
    let plain = env.inputs.join("plain.tar.tmp");
    python_tar(&json!([g, d, m]), &plain);
    tar.extend_from_slice(&std::fs::read(&plain).unwrap());
    std::fs::remove_file(&plain).unwrap();
    let mut trailing = tar.clone();
    trailing.extend_from_slice(b"garbage");
    assert_archive(
        &env.refused(&env.raw("trailing", &trailing, "zstd")),
        None,
        "data follows",
    );
    // Trailing zero padding (tar record blocking) is fine.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0u8; 10240]);
    let ok = import_archive(
        &env.raw("padded", &padded, "zstd"),
        &builtin_codecs(),
        &env.staging,
        &ImportLimits::default(),
        test_validator,
    )
    .unwrap();
    ok.discard().unwrap();
    // Garbage after the compressed stream.
    let mut after = std::fs::read(env.good()).unwrap();
    after.extend_from_slice(b"junk after the zstd frame");
    assert!(matches!(
        env.refused(&env.bytes("after", &after)),
        Error::Archive { entry: None, .. }
    ));
    // A corrupt header checksum.
    let mut bad = tar.clone();
    bad[10] ^= 0x20;
    assert_archive(
        &env.refused(&env.raw("bad-header", &bad, "none")),
        None,
        "checksum",
    );
}

/// GNU sparse entries (old GNU 'S' type and pax GNU.sparse.*) are refused with a clear error.
#[test]
fn gnu_sparse_is_refused() {
    if !have("tar") {
        return;
    }
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("disk.qcow2");
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(8 << 20).unwrap();
    std::fs::write(work.path().join("manifest.json"), "{}").unwrap();
    for format in ["gnu", "posix"] {
        let tar = work.path().join(format!("{format}.tar"));
        run(Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(work.path())
            .arg("disk.qcow2"));
        let p = env.raw(
            &format!("sparse-{format}"),
            &std::fs::read(&tar).unwrap(),
            "zstd",
        );
        let err = env.refused(&p);
        assert!(err.to_string().contains("sparse"), "{format}: {err}");
    }
}

#[test]
fn inspect_refuses_what_import_refuses() {
    let env = Env::new();
    let (g, d) = (env.g(), env.d());
    let m = env.m_with(|v| v["version"] = json!(99));
    let p = env.hostile("inspect-v99", json!([g, d, m]), "zstd");
    let err = inspect(&p, &builtin_codecs(), &ImportLimits::default()).unwrap_err();
    assert_archive(&err, Some("manifest.json"), "newer boxlite");
}

/// An archive path that is a FIFO, a directory or a device is refused at once. A FIFO used to
/// block the import forever in open(2), waiting for a writer (found by the runtime-level
/// hostile corpus, sdk/tests/hostile_corpus.rs).
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let env = Env::new();
    let fifo = env.inputs.join("fifo.boxsnap");
    run(Command::new("mkfifo").arg(&fifo));
    let dir = env.inputs.join("dir.boxsnap");
    std::fs::create_dir(&dir).unwrap();
    for p in [fifo.clone(), dir, PathBuf::from("/dev/zero")] {
        let (tx, rx) = std::sync::mpsc::channel();
        let staging = env.staging.clone();
        let path = p.clone();
        std::thread::spawn(move || {
            let r = import_archive(
                &path,
                &builtin_codecs(),
                &staging,
                &ImportLimits::default(),
                test_validator,
            );
            let _ = tx.send(r.map(|_| ()));
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(10));
        if r.is_err() {
            // Release the blocked reader before failing.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let err = r
            .unwrap_or_else(|_| panic!("{}: import blocked", p.display()))
            .expect_err("accepted");
        assert_archive(&err, None, "not a regular file");
        assert_eq!(std::fs::read_dir(&env.staging).unwrap().count(), 0);
    }
}
