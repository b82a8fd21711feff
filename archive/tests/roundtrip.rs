//! Round trips through our writer and reader, and through system `tar` + `sha256sum`.

mod common;

use std::path::Path;
use std::process::Command;

use boxlite_api::{DiskRole, Error, FlatDisk, ObjectKind, ARCHIVE_FORMAT_VERSION};
use boxlite_archive::{
    builtin_codecs, export_to_path, import_archive, inspect, ExportDisks, ImportLimits,
};
use common::*;

const CODECS: [&str; 3] = ["zstd", "lz4", "none"];

fn export(fx: &Fixture, dir: &Path, codec_name: &str) -> boxlite_archive::ExportedArchive {
    let c = codec(codec_name);
    let mut last = 0u64;
    let mut calls = 0u64;
    let mut progress = |n: u64| {
        assert!(n >= last, "progress went backwards");
        last = n;
        calls += 1;
    };
    let total = fx.disks().payload_bytes();
    let out = export_to_path(
        dir,
        "web-01",
        c.as_ref(),
        c.default_level(),
        &meta(),
        fx.disks(),
        &mut progress,
    )
    .unwrap();
    assert_eq!(last, total, "progress ends at the payload size");
    assert!(calls > 0);
    out
}

#[test]
fn registry_lists_the_three_codecs() {
    let names: Vec<_> = boxlite_api::registry::registered(boxlite_api::PluginKind::Codec)
        .iter()
        .map(|r| r.name)
        .collect();
    for n in CODECS {
        assert!(names.contains(&n), "{n} not registered: {names:?}");
    }
    assert_eq!(codec("zstd").levels(), 1..=22);
    assert_eq!(codec("zstd").default_level(), 3);
    let mut sink = Vec::new();
    assert!(matches!(
        codec("zstd").encoder(Box::new(&mut sink), 23),
        Err(Error::Config { .. })
    ));
}

#[test]
fn round_trip_every_codec() {
    let fx = Fixture::new();
    for name in CODECS {
        let work = tempfile::tempdir().unwrap();
        let exported = export(&fx, work.path(), name);
        assert_eq!(exported.path, work.path().join("web-01.boxsnap"));
        let m = &exported.manifest;
        assert_eq!(m.version, ARCHIVE_FORMAT_VERSION);
        assert_eq!(m.codec, name);
        assert_eq!(m.format, "qcow2");
        assert_eq!(m.box_name.as_deref(), Some("web-01"));
        assert_eq!(m.guest_disk_virtual_size, 8 << 20);
        assert_eq!(m.container_disk_virtual_size, 16 << 20);
        assert_eq!(
            m.guest_disk_bytes,
            std::fs::metadata(&fx.guest).unwrap().len()
        );

        let staging = work.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let imported = import_archive(
            &exported.path,
            &builtin_codecs(),
            &staging,
            &ImportLimits::default(),
            test_validator,
        )
        .unwrap();
        assert_eq!(&imported.manifest, m);
        assert_eq!(imported.codec, name);
        assert!(imported.staging.starts_with(&staging));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&imported.staging)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "private staging directory");
        let file_mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // 0600 comes from the mode given to open(2), not from the umask (usually 022).
        assert_eq!(file_mode(&exported.path), 0o600, "{name}: exported archive");
        for role in DiskRole::ALL {
            assert_eq!(
                file_mode(imported.disks.get(role)),
                0o600,
                "{name}: staged {role} disk"
            );
            assert_eq!(
                std::fs::read(imported.disks.get(role)).unwrap(),
                std::fs::read(fx.source(role)).unwrap(),
                "{name}: {role} differs after the round trip"
            );
        }
        let info = inspect(&exported.path, &builtin_codecs(), &ImportLimits::default()).unwrap();
        let names: Vec<_> = info.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["guest-rootfs.qcow2", "disk.qcow2", "manifest.json"]);
        assert_eq!(info.entries[0].checksum, m.guest_disk_checksum);
        assert_eq!(info.entries[1].checksum, m.container_disk_checksum);
        assert_eq!(info.codec, name);
        imported.discard().unwrap();
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }
}

#[test]
fn system_tar_extracts_what_we_write() {
    if !(have("tar") && have("zstd") && have("lz4") && have("sha256sum")) {
        return;
    }
    let fx = Fixture::new();
    for (name, flags) in [
        ("zstd", vec!["--zstd", "-xf"]),
        ("lz4", vec!["-I", "lz4", "-xf"]),
        ("none", vec!["-xf"]),
    ] {
        let work = tempfile::tempdir().unwrap();
        let exported = export(&fx, work.path(), name);
        let out = work.path().join("x");
        std::fs::create_dir(&out).unwrap();
        run(Command::new("tar")
            .args(&flags)
            .arg(&exported.path)
            .arg("-C")
            .arg(&out));
        for role in DiskRole::ALL {
            run(Command::new("cmp")
                .arg(out.join(role.file_name()))
                .arg(fx.source(role)));
        }
        let listing = run(Command::new("tar")
            .args(&flags[..flags.len() - 1])
            .arg("-tvf")
            .arg(&exported.path));
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        for (line, entry) in lines
            .iter()
            .zip(["guest-rootfs.qcow2", "disk.qcow2", "manifest.json"])
        {
            assert!(line.starts_with("-rw-r--r-- root/root"), "{line}");
            assert!(line.ends_with(entry), "{line}");
            assert!(
                line.contains("2026-01-02"),
                "mtime is the export time: {line}"
            );
        }
        let sums = run(Command::new("sha256sum")
            .arg("guest-rootfs.qcow2")
            .arg("disk.qcow2")
            .current_dir(&out));
        let sums = String::from_utf8_lossy(&sums.stdout).into_owned();
        let m: boxlite_api::ArchiveManifest =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m, exported.manifest);
        assert!(
            sums.contains(&format!(
                "{}  guest-rootfs.qcow2",
                &m.guest_disk_checksum[7..]
            )),
            "{sums}"
        );
        assert!(
            sums.contains(&format!("{}  disk.qcow2", &m.container_disk_checksum[7..])),
            "{sums}"
        );
        let json = std::fs::read_to_string(out.join("manifest.json")).unwrap();
        for field in [
            "version",
            "box_name",
            "image",
            "guest_disk_checksum",
            "container_disk_checksum",
            "exported_at",
            "codec",
            "format",
            "guest_disk_virtual_size",
            "container_disk_virtual_size",
            "guest_disk_bytes",
            "container_disk_bytes",
        ] {
            assert!(
                json.contains(&format!("\"{field}\"")),
                "{field} missing from {json}"
            );
        }
    }
}

#[test]
fn codec_is_detected_by_magic_not_by_name() {
    let fx = Fixture::new();
    for name in CODECS {
        let work = tempfile::tempdir().unwrap();
        let exported = export(&fx, work.path(), name);
        // Misleading names: a .tar that is zstd, a .zst that is lz4, ...
        let renamed = work.path().join(format!(
            "misleading.{}",
            if name == "zstd" { "tar" } else { "zst" }
        ));
        std::fs::rename(&exported.path, &renamed).unwrap();
        let info = inspect(&renamed, &builtin_codecs(), &ImportLimits::default()).unwrap();
        assert_eq!(info.codec, name);
    }
}

#[test]
fn export_destinations() {
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let c = codec("zstd");
    // An explicit file name is used as is.
    let file = work.path().join("custom-name.bin");
    let out = export_to_path(
        &file,
        "ignored",
        c.as_ref(),
        3,
        &meta(),
        fx.disks(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.path, file);
    // An existing destination is never replaced.
    let again = export_to_path(&file, "x", c.as_ref(), 3, &meta(), fx.disks(), &mut |_| {});
    assert!(
        matches!(
            again,
            Err(Error::AlreadyExists {
                kind: ObjectKind::Archive,
                ..
            })
        ),
        "{again:?}"
    );
    // A directory gets <stem>.boxsnap; the stem must be a valid name.
    let bad = export_to_path(
        work.path(),
        "../evil",
        c.as_ref(),
        3,
        &meta(),
        fx.disks(),
        &mut |_| {},
    );
    assert!(matches!(bad, Err(Error::InvalidName { .. })), "{bad:?}");
    // A level the codec refuses fails before anything is written.
    let lvl = export_to_path(
        work.path(),
        "lvl",
        c.as_ref(),
        99,
        &meta(),
        fx.disks(),
        &mut |_| {},
    );
    assert!(matches!(lvl, Err(Error::Config { .. })), "{lvl:?}");
    // Metadata-free export.
    let mut m = meta();
    m.box_name = None;
    m.image = String::new();
    let anon = export_to_path(
        work.path(),
        "01J0000000000000000000000A",
        c.as_ref(),
        3,
        &m,
        fx.disks(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(anon.manifest.box_name, None);
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the two archives, no partial files: {names:?}"
    );
}

/// A FlatDisk whose stream length disagrees with its declared size.
struct LyingDisk {
    inner: FileFlatDisk,
    declared: u64,
}

impl FlatDisk for LyingDisk {
    fn size_bytes(&self) -> u64 {
        self.declared
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size
    }
    fn write_to(&mut self, out: &mut dyn std::io::Write) -> boxlite_api::Result<u64> {
        self.inner.write_to(out)
    }
}

#[test]
fn disk_streaming_a_different_length_fails_and_leaves_nothing() {
    let fx = Fixture::new();
    let c = codec("zstd");
    for delta in [-1i64, 1] {
        let work = tempfile::tempdir().unwrap();
        let inner = FileFlatDisk::open(&fx.container);
        let declared = (inner.size as i64 + delta) as u64;
        let disks = ExportDisks {
            guest_rootfs: Box::new(FileFlatDisk::open(&fx.guest)),
            container: Box::new(LyingDisk { inner, declared }),
        };
        let r = export_to_path(
            work.path(),
            "web-01",
            c.as_ref(),
            3,
            &meta(),
            disks,
            &mut |_| {},
        );
        match r {
            Err(Error::Archive { entry: Some(e), .. }) => assert_eq!(e, "disk.qcow2"),
            other => panic!("delta {delta}: {other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            0,
            "partial file left"
        );
    }
}

/// Archives written by other tools (GNU tar's own format, the lz4 CLI with linked blocks and
/// block checksums, the zstd CLI) are read as long as they follow the format's rules.
#[test]
fn archives_written_by_system_tools_are_accepted() {
    if !(have("tar") && have("zstd") && have("lz4")) {
        return;
    }
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let exported = export(&fx, work.path(), "zstd");
    let x = work.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&exported.path)
        .arg("-C")
        .arg(&x));
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    for (name, compressor, codec_name) in [
        ("gnu-zstd.tar.zst", "zstd", "zstd"),
        ("gnu-lz4-linked.tar.lz4", "lz4 -B4 -BD -BX", "lz4"),
    ] {
        let p = work.path().join(name);
        run(Command::new("tar")
            .args(["--format=gnu", "-I", compressor, "-cf"])
            .arg(&p)
            .arg("-C")
            .arg(&x)
            .args(["guest-rootfs.qcow2", "disk.qcow2", "manifest.json"]));
        if codec_name == "lz4" {
            // The manifest names the codec of the file; rewrite it for this variant.
            let mut m = exported.manifest.clone();
            m.codec = "lz4".into();
            std::fs::write(x.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
            std::fs::remove_file(&p).unwrap();
            run(Command::new("tar")
                .args(["--format=gnu", "-I", compressor, "-cf"])
                .arg(&p)
                .arg("-C")
                .arg(&x)
                .args(["manifest.json", "disk.qcow2", "guest-rootfs.qcow2"]));
        }
        let imported = import_archive(
            &p,
            &builtin_codecs(),
            &staging,
            &ImportLimits::default(),
            test_validator,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(imported.codec, codec_name);
        for role in DiskRole::ALL {
            assert_eq!(
                std::fs::read(imported.disks.get(role)).unwrap(),
                std::fs::read(fx.source(role)).unwrap()
            );
        }
        imported.discard().unwrap();
    }
}
