//! The hostile-input corpus (issue 6, "fail closed, change nothing"): inputs built at run
//! time in a temporary directory, each with the runtime operation it is fed to and the typed
//! error that operation must return. `tests/hostile_corpus.rs` runs every case against a real
//! home and checks that nothing changed.
//!
//! Coverage (see `../shared/cases/README.md` for the A-cases):
//! - A01: archive members that escape staging (symlinks, hard links, devices, FIFOs,
//!   directories, absolute and `..` paths, pax path overrides, duplicates, odd names);
//! - A02: disk entries that point at host files or that no safe qcow2 reader accepts
//!   (backing files, external data files, encryption, unknown features, corrupt bits,
//!   absurd table sizes, bad refcounts), packed with correct checksums;
//! - A03: box and snapshot names used as paths, NUL, RTL override, 300 characters, leading
//!   `.`/`-`, `/`, and a manifest `box_name` that is a path;
//! - A13: truncated and inconsistent archives (cut streams, flipped bytes, duplicate or
//!   missing entries, manifest version 99);
//! - the archive reader's other refusals (tar framing, pax, limits, manifest schema,
//!   checksums, codec magic, zstd/lz4 frame bombs);
//! - images given to `create` that the qcow2 safe open refuses (encryption, external data,
//!   unknown features, corrupt bit, huge tables, backing loops and depth, missing or exotic
//!   backing files, broken zlib/zstd clusters, files that are no disk at all).

#![allow(dead_code)]

pub mod images;
pub mod tar;

use std::io::Write;
use std::path::{Path, PathBuf};

use boxlite::api::{ArchiveCodec, Error, ObjectKind};
use boxlite::BoxOptions;
use serde_json::{json, Value};
use sha2::Digest;

use self::images::*;
use self::tar::{End, Entry};

/// What a case does with its input.
#[derive(Debug, Clone)]
pub enum Op {
    /// `runtime.import(archive, name)`.
    Import { archive: PathBuf, name: String },
    /// `runtime.create(BoxOptions { disk, guest_rootfs }, name)`.
    Create { opts: BoxOptions, name: String },
    /// `box.snapshot().create(snap)` on an existing box.
    SnapshotCreate { box_name: String, snap: String },
    /// `box.snapshot().restore(snap)`.
    SnapshotRestore { box_name: String, snap: String },
    /// `box.snapshot().remove(snap)`.
    SnapshotRemove { box_name: String, snap: String },
    /// `box.snapshot().get(snap)`.
    SnapshotGet { box_name: String, snap: String },
    /// `box.clone(name)` from the current state, or from snapshot `from`.
    Clone {
        box_name: String,
        name: String,
        from: Option<String>,
    },
    /// `runtime.remove(name)`.
    Remove { name: String },
    /// `runtime.get(name)`.
    Get { name: String },
}

impl Op {
    /// Short label for the report table.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Import { .. } => "import",
            Op::Create { .. } => "create",
            Op::SnapshotCreate { .. } => "snapshot create",
            Op::SnapshotRestore { .. } => "snapshot restore",
            Op::SnapshotRemove { .. } => "snapshot remove",
            Op::SnapshotGet { .. } => "snapshot get",
            Op::Clone { .. } => "clone",
            Op::Remove { .. } => "remove",
            Op::Get { .. } => "get",
        }
    }

    /// The name argument that the name rule applies to (for `InvalidName` expectations).
    fn hostile_name(&self) -> (ObjectKind, &str) {
        match self {
            Op::Import { name, .. }
            | Op::Create { name, .. }
            | Op::Remove { name }
            | Op::Get { name } => (ObjectKind::Box, name),
            Op::Clone {
                from: Some(snap), ..
            } => (ObjectKind::Snapshot, snap),
            Op::Clone { name, .. } => (ObjectKind::Box, name),
            Op::SnapshotCreate { snap, .. }
            | Op::SnapshotRestore { snap, .. }
            | Op::SnapshotRemove { snap, .. }
            | Op::SnapshotGet { snap, .. } => (ObjectKind::Snapshot, snap),
        }
    }
}

/// Which archive entry an `Error::Archive` must name.
#[derive(Debug, Clone, Copy)]
pub enum Ent {
    /// Exactly this entry.
    Is(&'static str),
    /// No entry (the whole archive is at fault).
    NoEntry,
    /// Not checked (names that are not valid UTF-8 or not printable).
    Any,
}

/// The typed error a case must produce. Substrings are matched case-insensitively against
/// the variant's detail (for `Archive`) or the whole message (others).
#[derive(Debug, Clone)]
pub enum Expect {
    /// `Error::Archive` naming the entry, detail containing the substring.
    Archive(Ent, &'static str),
    /// `Error::InvalidName` for exactly the name the operation was given (or, with
    /// `Some(name)`, for that name: a manifest's `box_name`).
    InvalidName(Option<&'static str>),
    /// `Error::Unsupported`, message containing the substring.
    Unsupported(&'static str),
    /// `Error::Corrupt`, message containing the substring.
    Corrupt(&'static str),
    /// `Error::Io`.
    Io,
}

impl Expect {
    /// Does `err` (returned by `op`) meet the expectation? `Err(why not)` otherwise.
    pub fn check(&self, op: &Op, err: &Error) -> Result<(), String> {
        let has = |text: &str, want: &str| text.to_lowercase().contains(&want.to_lowercase());
        let msg = err.to_string();
        match (self, err) {
            (Expect::Archive(want_entry, want), Error::Archive { entry, detail, .. }) => {
                match want_entry {
                    Ent::Is(e) if entry.as_deref() != Some(*e) => {
                        return Err(format!("entry {entry:?}, expected {e:?}"))
                    }
                    Ent::NoEntry if entry.is_some() => {
                        return Err(format!("entry {entry:?}, expected none"))
                    }
                    _ => {}
                }
                if has(detail, want) {
                    Ok(())
                } else {
                    Err(format!("detail lacks {want:?}"))
                }
            }
            (Expect::InvalidName(manifest_name), Error::InvalidName { kind, name, .. }) => {
                let (want_kind, want_name) = match manifest_name {
                    Some(n) => (ObjectKind::Box, *n),
                    None => op.hostile_name(),
                };
                if *kind == want_kind && name == want_name {
                    Ok(())
                } else {
                    Err(format!(
                        "InvalidName for {kind} {name:?}, expected {want_kind} {want_name:?}"
                    ))
                }
            }
            (Expect::Unsupported(want), Error::Unsupported { .. })
            | (Expect::Corrupt(want), Error::Corrupt { .. }) => {
                if has(&msg, want) {
                    Ok(())
                } else {
                    Err(format!("message lacks {want:?}"))
                }
            }
            (Expect::Io, Error::Io { .. }) => Ok(()),
            _ => Err(format!("wrong variant, expected {self:?}")),
        }
    }

    /// The variant name, for the report table.
    pub fn variant(&self) -> &'static str {
        match self {
            Expect::Archive(..) => "Archive",
            Expect::InvalidName(_) => "InvalidName",
            Expect::Unsupported(_) => "Unsupported",
            Expect::Corrupt(_) => "Corrupt",
            Expect::Io => "Io",
        }
    }
}

/// One corpus case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique name, e.g. `a01-symlink-then-file`.
    pub name: String,
    /// What it covers: `A01`, `A02`, `A03`, `A13`, `archive`, `qcow2`, `names`.
    pub covers: &'static str,
    /// The operation.
    pub op: Op,
    /// The error it must produce.
    pub expect: Expect,
}

impl Case {
    /// The input files of the case (archives and images it reads).
    pub fn inputs(&self) -> Vec<&Path> {
        match &self.op {
            Op::Import { archive, .. } => vec![archive],
            Op::Create { opts, .. } => vec![&opts.disk, &opts.guest_rootfs],
            _ => Vec::new(),
        }
    }
}

/// What the generator starts from.
pub struct Base {
    /// Directory the hostile inputs are written into.
    pub dir: PathBuf,
    /// A small standalone qcow2 for `guest-rootfs.qcow2` entries.
    pub guest: Vec<u8>,
    /// A small standalone qcow2 for `disk.qcow2` entries.
    pub container: Vec<u8>,
    /// Good exports (codec name, path), each over 200 KiB, for the truncation cases.
    pub exports: Vec<(String, PathBuf)>,
    /// Good images for `create`.
    pub images: BoxOptions,
    /// An existing box with snapshot [`Base::snapshot`].
    pub box_name: String,
    /// A snapshot of [`Base::box_name`].
    pub snapshot: String,
}

/// Name the corpus imports and creates under (free in the home).
pub const TARGET: &str = "hostile-target";

/// `sha256:<hex>` of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Virtual size from a qcow2 header (bytes 24..32, big-endian).
pub fn vsize(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[24..32].try_into().expect("qcow2 header"))
}

/// `tar` compressed with the archive crate's codec `codec` (`zstd`, `lz4`; `none` copies).
pub fn compress(codec: &str, tar: &[u8]) -> Vec<u8> {
    let c: Box<dyn ArchiveCodec> = match codec {
        "zstd" => Box::new(boxlite_archive::ZstdCodec),
        "lz4" => Box::new(boxlite_archive::Lz4Codec),
        "none" => return tar.to_vec(),
        other => panic!("unknown codec {other}"),
    };
    let mut out = Vec::new();
    let mut enc = c
        .encoder(Box::new(&mut out), c.default_level())
        .expect("encoder");
    enc.write_all(tar).expect("compress");
    enc.finish().expect("finish");
    out
}

impl Base {
    /// The manifest of an archive holding [`Base::guest`] and [`Base::container`].
    pub fn manifest(&self, codec: &str) -> Value {
        self.manifest_for(&self.guest, &self.container, codec)
    }

    /// The manifest of an archive holding `guest` and `container`, consistent with them.
    pub fn manifest_for(&self, guest: &[u8], container: &[u8], codec: &str) -> Value {
        json!({
            "version": 1,
            "box_name": "corpus-source",
            "image": "corpus",
            "guest_disk_checksum": sha(guest),
            "container_disk_checksum": sha(container),
            "exported_at": "2026-01-02T03:04:05Z",
            "codec": codec,
            "format": "qcow2",
            "guest_disk_virtual_size": vsize(guest),
            "container_disk_virtual_size": vsize(container),
            "guest_disk_bytes": guest.len(),
            "container_disk_bytes": container.len(),
        })
    }

    pub fn g(&self) -> Entry {
        Entry::file("guest-rootfs.qcow2", self.guest.clone())
    }
    pub fn d(&self) -> Entry {
        Entry::file("disk.qcow2", self.container.clone())
    }
    pub fn m(&self, v: &Value) -> Entry {
        let mut text = serde_json::to_vec_pretty(v).expect("json");
        text.push(b'\n');
        Entry::file("manifest.json", text)
    }
    /// The manifest with one edit applied.
    pub fn m_with(&self, codec: &str, edit: impl FnOnce(&mut Value)) -> Entry {
        let mut v = self.manifest(codec);
        edit(&mut v);
        self.m(&v)
    }

    /// Write `bytes` as `<dir>/<name>/<name>.boxsnap` (one directory per input, so that the
    /// runner can snapshot exactly the input's directory).
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("input directory");
        let p = dir.join(format!("{name}.boxsnap"));
        std::fs::write(&p, bytes).expect("write input");
        p
    }

    /// A tar of `entries` ending with `end`, compressed with `codec`, written to the inputs.
    pub fn pack(&self, name: &str, entries: &[Entry], end: End, codec: &str) -> PathBuf {
        self.write(name, &compress(codec, &tar::tar(entries, end)))
    }

    /// The good archive in `codec` (as a control, it must import).
    pub fn good(&self, codec: &str) -> Vec<u8> {
        compress(
            codec,
            &tar::tar(
                &[self.g(), self.d(), self.m(&self.manifest(codec))],
                End::Marker,
            ),
        )
    }

    fn import(&self, name: &str, covers: &'static str, archive: PathBuf, expect: Expect) -> Case {
        Case {
            name: name.to_owned(),
            covers,
            op: Op::Import {
                archive,
                name: TARGET.to_owned(),
            },
            expect,
        }
    }

    /// Import of a zstd archive `entries` + end marker.
    fn entries_case(
        &self,
        name: &str,
        covers: &'static str,
        entries: Vec<Entry>,
        expect: Expect,
    ) -> Case {
        let p = self.pack(name, &entries, End::Marker, "zstd");
        self.import(name, covers, p, expect)
    }

    /// Every case of the corpus.
    pub fn cases(&self) -> Vec<Case> {
        let mut v = self.name_cases();
        v.extend(self.a01_cases());
        v.extend(self.a13_cases());
        v.extend(self.tar_cases());
        v.extend(self.manifest_cases());
        v.extend(self.codec_cases());
        v.extend(self.disk_entry_cases());
        v.extend(self.create_cases());
        v.extend(self.file_type_cases());
        v
    }

    /// Inputs that are not regular files: a FIFO (opening it for reading would wait for a
    /// writer forever), a directory, a character device, a missing path.
    fn file_type_cases(&self) -> Vec<Case> {
        let dir = self.dir.join("file-types");
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let subdir = dir.join("a-directory.boxsnap");
        std::fs::create_dir_all(&subdir).unwrap();
        let dev = PathBuf::from("/dev/zero");
        let missing = dir.join("missing.boxsnap");
        let mut out = Vec::new();
        for (label, p) in [("fifo", &fifo), ("directory", &subdir), ("dev-zero", &dev)] {
            out.push(self.import(
                &format!("file-import-archive-is-{label}"),
                "archive",
                p.clone(),
                Expect::Archive(Ent::NoEntry, "not a regular file"),
            ));
            out.push(Case {
                name: format!("file-create-image-is-{label}"),
                covers: "qcow2",
                op: Op::Create {
                    opts: BoxOptions {
                        disk: p.clone(),
                        guest_rootfs: self.images.guest_rootfs.clone(),
                    },
                    name: TARGET.to_owned(),
                },
                expect: Expect::Unsupported("not a regular file"),
            });
        }
        out.push(self.import(
            "file-import-archive-missing",
            "archive",
            missing,
            Expect::Io,
        ));
        out
    }

    /// A03: names used as paths, everywhere a name is taken.
    fn name_cases(&self) -> Vec<Case> {
        let long = "a".repeat(300);
        let just_over = "b".repeat(129);
        let good_archive = self.write("names-good", &self.good("zstd"));
        let mut out = Vec::new();
        let import_names: Vec<(&str, String)> = vec![
            ("dotdot-slash-v1", "../v1".into()),
            ("slash", "a/b".into()),
            ("dot", ".".into()),
            ("dotdot", "..".into()),
            ("dash-rf", "-rf".into()),
            ("empty", String::new()),
            ("300-chars", long.clone()),
            ("nul", "a\0b".into()),
            ("rtl-override", "invoice\u{202E}fdp.exe".into()),
            ("absolute", "/etc/passwd".into()),
        ];
        for (label, name) in import_names {
            out.push(Case {
                name: format!("a03-import-{label}"),
                covers: "A03",
                op: Op::Import {
                    archive: good_archive.clone(),
                    name,
                },
                expect: Expect::InvalidName(None),
            });
        }
        for (label, name) in [
            ("leading-dot", ".hidden".to_owned()),
            ("129-chars", just_over),
            ("path", "../../tmp/pwn".to_owned()),
            ("newline", "x\ny".to_owned()),
            ("non-ascii", "naïve".to_owned()),
        ] {
            out.push(Case {
                name: format!("a03-create-{label}"),
                covers: "A03",
                op: Op::Create {
                    opts: self.images.clone(),
                    name,
                },
                expect: Expect::InvalidName(None),
            });
        }
        let b = self.box_name.clone();
        let snap_ops = vec![
            (
                "snapshot-create-dotdot",
                Op::SnapshotCreate {
                    box_name: b.clone(),
                    snap: "../s1".into(),
                },
            ),
            (
                "snapshot-create-nul",
                Op::SnapshotCreate {
                    box_name: b.clone(),
                    snap: "s\0".into(),
                },
            ),
            (
                "snapshot-restore-dotdot",
                Op::SnapshotRestore {
                    box_name: b.clone(),
                    snap: "..".into(),
                },
            ),
            (
                "snapshot-remove-absolute",
                Op::SnapshotRemove {
                    box_name: b.clone(),
                    snap: format!("/{}", self.snapshot),
                },
            ),
            (
                "snapshot-get-rtl",
                Op::SnapshotGet {
                    box_name: b.clone(),
                    snap: "\u{202E}1s".into(),
                },
            ),
            (
                "clone-dash",
                Op::Clone {
                    box_name: b.clone(),
                    name: "-rf".into(),
                    from: None,
                },
            ),
            (
                "clone-from-snapshot-path",
                Op::Clone {
                    box_name: b.clone(),
                    name: "fine-name".into(),
                    from: Some(format!("../{}", self.snapshot)),
                },
            ),
            (
                "remove-path",
                Op::Remove {
                    name: format!("../{b}"),
                },
            ),
            ("get-300-chars", Op::Get { name: long }),
        ];
        for (label, op) in snap_ops {
            out.push(Case {
                name: format!("a03-{label}"),
                covers: "A03",
                op,
                expect: Expect::InvalidName(None),
            });
        }
        // The manifest's box_name is checked too (it is never used as a path).
        for (label, bad) in [
            ("path", "../../../tmp/pwn"),
            ("rtl", "x\u{202E}y"),
            ("nul", "a\u{0}b"),
        ] {
            let m = self.m_with("zstd", |v| v["box_name"] = json!(bad));
            out.push(self.entries_case(
                &format!("a03-manifest-box-name-{label}"),
                "A03",
                vec![self.g(), self.d(), m],
                Expect::InvalidName(Some(bad)),
            ));
        }
        out
    }

    /// A01: members that escape the staging directory.
    fn a01_cases(&self) -> Vec<Case> {
        // Where a followed symlink would write: next to the archive.
        let outside = self
            .dir
            .join("a01a-symlink-then-file")
            .join("outside-target");
        let m = self.m(&self.manifest("zstd"));
        let (g, d) = (self.g(), self.d());
        let sym = |name: &str, target: &[u8]| Entry::special(name, b'2', target);
        let list: Vec<(&str, Vec<Entry>, Expect)> = vec![
            (
                "a01a-symlink-then-file",
                vec![
                    sym("disk.qcow2", outside.to_str().unwrap().as_bytes()),
                    g.clone(),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "symbolic link"),
            ),
            (
                "a01b-symlink-dir-then-file",
                vec![
                    sym("s", b".."),
                    Entry::file("s/x", "x"),
                    g.clone(),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("s"), "symbolic link"),
            ),
            (
                "a01c-hardlink-host-file",
                vec![
                    g.clone(),
                    Entry::special("disk.qcow2", b'1', b"../../etc/hosts"),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "hard link"),
            ),
            (
                "a01d-absolute-path",
                vec![Entry::file("/tmp/x", "x"), g.clone(), d.clone(), m.clone()],
                Expect::Archive(Ent::Is("/tmp/x"), "absolute"),
            ),
            (
                "a01e-dotdot-path",
                vec![g.clone(), Entry::file("../x", "x"), d.clone(), m.clone()],
                Expect::Archive(Ent::Is("../x"), "'..'"),
            ),
            (
                "a01f-duplicate-entry",
                vec![g.clone(), g.clone(), d.clone(), m.clone()],
                Expect::Archive(Ent::Is("guest-rootfs.qcow2"), "more than once"),
            ),
            (
                "a01g-fifo",
                vec![
                    g.clone(),
                    Entry::special("disk.qcow2", b'6', b""),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "FIFO"),
            ),
            (
                "a01g-char-device",
                vec![
                    Entry::special("null", b'3', b""),
                    g.clone(),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("null"), "character device"),
            ),
            (
                "a01g-block-device",
                vec![
                    g.clone(),
                    Entry::special("disk.qcow2", b'4', b""),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "block device"),
            ),
            (
                "a01-directory",
                vec![
                    Entry::special("staging/", b'5', b""),
                    g.clone(),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("staging/"), "directory"),
            ),
            (
                "a01-dot-slash-prefix",
                vec![
                    g.clone(),
                    Entry::file("./disk.qcow2", self.container.clone()),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("./disk.qcow2"), "unexpected entry"),
            ),
            (
                "a01-pax-path-escape",
                vec![g.clone(), d.clone().with_pax("path", "../evil"), m.clone()],
                Expect::Archive(Ent::Is("../evil"), "'..'"),
            ),
            (
                "a01-pax-path-absolute",
                vec![
                    g.clone().with_pax("path", outside.to_str().unwrap()),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Any, "absolute"),
            ),
            (
                "a01-pax-path-nul",
                vec![
                    g.clone(),
                    d.clone().with_pax("path", b"disk.qcow2\0x"),
                    m.clone(),
                ],
                Expect::Archive(Ent::Any, "NUL"),
            ),
            (
                "a01-rtl-override-name",
                vec![
                    g.clone(),
                    Entry::file("disk\u{202E}2woc.qcow2", self.container.clone()),
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk\u{202E}2woc.qcow2"), "unexpected entry"),
            ),
            (
                "a01-gnu-long-name",
                vec![
                    Entry::special("././@LongLink", b'L', b"").declaring(0),
                    g.clone(),
                    d.clone(),
                    m.clone(),
                ],
                Expect::Archive(Ent::Any, "GNU long-name"),
            ),
            (
                "a01-contiguous-file",
                vec![
                    g.clone(),
                    Entry {
                        typeflag: b'7',
                        ..d.clone()
                    },
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "contiguous"),
            ),
            (
                "a01-unknown-typeflag",
                vec![
                    g.clone(),
                    Entry {
                        typeflag: b'Z',
                        ..d.clone()
                    },
                    m.clone(),
                ],
                Expect::Archive(Ent::Is("disk.qcow2"), "unknown tar entry type"),
            ),
        ];
        list.into_iter()
            .map(|(name, entries, expect)| self.entries_case(name, "A01", entries, expect))
            .collect()
    }

    /// A13: truncated or inconsistent archives.
    fn a13_cases(&self) -> Vec<Case> {
        let mut out = Vec::new();
        for (codec, path) in &self.exports {
            let bytes = std::fs::read(path).expect("export");
            assert!(bytes.len() > 200 << 10, "{codec} export too small");
            let cut = self.write(
                &format!("a13-cut-100k-{codec}"),
                &bytes[..bytes.len() - (100 << 10)],
            );
            out.push(self.import(
                &format!("a13-cut-100k-{codec}"),
                "A13",
                cut,
                Expect::Archive(Ent::Any, "truncated"),
            ));
        }
        // One byte flipped inside a disk entry of a plain tar: the checksum catches it.
        let mut flipped = tar::tar(
            &[self.g(), self.d(), self.m(&self.manifest("none"))],
            End::Marker,
        );
        flipped[512 + 1000] ^= 0x01;
        out.push(self.import(
            "a13-flipped-disk-byte",
            "A13",
            self.write("a13-flipped-disk-byte", &flipped),
            Expect::Archive(Ent::Is("guest-rootfs.qcow2"), "checksum mismatch"),
        ));
        // ... and inside the zstd stream (zstd's content checksum or ours).
        let mut z = self.good("zstd");
        let mid = z.len() / 2;
        z[mid] ^= 0x10;
        out.push(self.import(
            "a13-flipped-zstd-byte",
            "A13",
            self.write("a13-flipped-zstd-byte", &z),
            Expect::Archive(Ent::Any, ""),
        ));
        let m = self.m(&self.manifest("zstd"));
        let m2 = self.m_with("zstd", |v| v["image"] = json!("other"));
        out.push(self.entries_case(
            "a13-manifest-twice",
            "A13",
            vec![self.g(), self.d(), m.clone(), m2],
            Expect::Archive(Ent::Is("manifest.json"), "more than once"),
        ));
        out.push(self.entries_case(
            "a13-listed-disk-missing",
            "A13",
            vec![self.g(), m.clone()],
            Expect::Archive(Ent::Is("disk.qcow2"), "missing"),
        ));
        out.push(self.entries_case(
            "a13-no-manifest",
            "A13",
            vec![self.g(), self.d()],
            Expect::Archive(Ent::Is("manifest.json"), "no manifest"),
        ));
        out.push(self.entries_case(
            "a13-extra-unlisted-entry",
            "A13",
            vec![self.g(), self.d(), Entry::file("extra.bin", "x"), m.clone()],
            Expect::Archive(Ent::Is("extra.bin"), "unexpected entry"),
        ));
        let v99 = self.m_with("zstd", |v| {
            v["version"] = json!(99);
            v["future_field"] = json!({"new": true});
        });
        out.push(self.entries_case(
            "a13-manifest-version-99",
            "A13",
            vec![self.g(), self.d(), v99],
            Expect::Archive(Ent::Is("manifest.json"), "upgrade boxlite"),
        ));
        out
    }

    /// Tar framing, pax headers and size limits.
    fn tar_cases(&self) -> Vec<Case> {
        let m = self.m(&self.manifest("zstd"));
        let (g, d) = (self.g(), self.d());
        let mut out = Vec::new();
        let mut add = |name: &str, entries: Vec<Entry>, end: End, expect: Expect| {
            let p = self.pack(name, &entries, end, "zstd");
            out.push(self.import(name, "archive", p, expect));
        };
        let three = vec![g.clone(), d.clone(), m.clone()];
        add(
            "tar-no-end-marker",
            three.clone(),
            End::None,
            Expect::Archive(Ent::NoEntry, "end-of-archive"),
        );
        add(
            "tar-lone-zero-block-then-data",
            three.clone(),
            End::LoneZeroThen(b"more data after a single zero block"),
            Expect::Archive(Ent::NoEntry, "lone zero block"),
        );
        add(
            "tar-data-after-end-marker",
            three.clone(),
            End::MarkerThen(b"trailing garbage"),
            Expect::Archive(Ent::NoEntry, "data follows"),
        );
        let mut bad = d.clone();
        bad.bad_checksum = true;
        add(
            "tar-bad-header-checksum",
            vec![g.clone(), bad, m.clone()],
            End::Marker,
            Expect::Archive(Ent::NoEntry, "checksum"),
        );
        let mut v7 = g.clone();
        v7.v7 = true;
        add(
            "tar-v7-header",
            vec![v7, d.clone(), m.clone()],
            End::Marker,
            Expect::Archive(Ent::NoEntry, "corrupt tar header"),
        );
        add(
            "tar-disk-declares-more-than-present",
            vec![
                g.clone(),
                d.clone().declaring(self.container.len() as u64 + (1 << 20)),
                m.clone(),
            ],
            End::Marker,
            Expect::Archive(Ent::Is("disk.qcow2"), "truncated"),
        );
        add(
            "tar-disk-declares-300-gib-pax",
            vec![
                g.clone(),
                d.clone().with_pax("size", (300u64 << 30).to_string()),
                m.clone(),
            ],
            End::Marker,
            Expect::Archive(Ent::Is("disk.qcow2"), "over the limit"),
        );
        add(
            "tar-disk-declares-2e60-base256",
            vec![g.clone(), d.clone().declaring(1 << 60), m.clone()],
            End::Marker,
            Expect::Archive(Ent::Is("disk.qcow2"), "over the limit"),
        );
        add(
            "tar-manifest-declares-2-mib",
            vec![g.clone(), d.clone(), m.clone().declaring(2 << 20)],
            End::Marker,
            Expect::Archive(Ent::Is("manifest.json"), "over the limit"),
        );
        add(
            "tar-manifest-over-1-mib",
            vec![
                g.clone(),
                d.clone(),
                Entry::file("manifest.json", vec![b' '; (1 << 20) + 1]),
            ],
            End::Marker,
            Expect::Archive(Ent::Is("manifest.json"), "over the limit"),
        );
        add(
            "tar-pax-size-not-decimal",
            vec![g.clone(), d.clone().with_pax("size", "0x1000"), m.clone()],
            End::Marker,
            Expect::Archive(Ent::Any, "not a decimal number"),
        );
        add(
            "tar-pax-gnu-sparse",
            vec![
                g.clone(),
                d.clone().with_pax("GNU.sparse.major", "1"),
                m.clone(),
            ],
            End::Marker,
            Expect::Archive(Ent::Any, "sparse"),
        );
        let global = Entry {
            typeflag: b'g',
            ..Entry::file("global", tar::pax_record("path", b"disk.qcow2"))
        };
        add(
            "tar-pax-global-path",
            vec![global, g.clone(), d.clone(), m.clone()],
            End::Marker,
            Expect::Archive(Ent::Any, "global header must not set 'path'"),
        );
        let pax_alone = Entry {
            typeflag: b'x',
            ..Entry::file("pax1", tar::pax_record("mtime", b"1"))
        };
        add(
            "tar-two-pax-headers-in-a-row",
            vec![
                g.clone(),
                pax_alone,
                d.clone().with_pax("mtime", "2"),
                m.clone(),
            ],
            End::Marker,
            Expect::Archive(Ent::Any, "two pax extended headers"),
        );
        let huge_pax = Entry {
            typeflag: b'x',
            ..Entry::file("pax", tar::pax_record("comment", &vec![b'a'; 70_000]))
        };
        add(
            "tar-pax-header-over-64k",
            vec![huge_pax, g.clone(), d.clone(), m.clone()],
            End::Marker,
            Expect::Archive(Ent::Any, "exceeds"),
        );
        let long_name = "x".repeat(300);
        add(
            "tar-300-char-entry-name",
            vec![
                g.clone(),
                d.clone(),
                Entry::file("n", "x").with_pax("path", &long_name),
                m.clone(),
            ],
            End::Marker,
            Expect::Archive(Ent::Any, "unexpected entry"),
        );
        // Truncated inside a header block (plain tar, cut 100 bytes into the second header).
        let t = tar::tar(&three, End::Marker);
        let cut = 512 + self.guest.len().div_ceil(512) * 512 + 100;
        out.push(self.import(
            "tar-cut-inside-header",
            "archive",
            self.write("tar-cut-inside-header", &t[..cut]),
            Expect::Archive(Ent::NoEntry, "truncated"),
        ));
        out
    }

    /// The manifest schema and its consistency with the disks.
    fn manifest_cases(&self) -> Vec<Case> {
        type Edit = Box<dyn Fn(&mut Value)>;
        let g_bytes = self.guest.len() as u64;
        let list: Vec<(&str, Edit, Ent, &'static str)> = vec![
            (
                "version-2",
                Box::new(|v| v["version"] = json!(2)),
                Ent::Is("manifest.json"),
                "upgrade boxlite",
            ),
            (
                "unknown-field",
                Box::new(|v| v["x_extra"] = json!(1)),
                Ent::Is("manifest.json"),
                "unknown field",
            ),
            (
                "missing-field",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("container_disk_checksum");
                }),
                Ent::Is("manifest.json"),
                "missing field",
            ),
            (
                "version-0",
                Box::new(|v| v["version"] = json!(0)),
                Ent::Is("manifest.json"),
                "version 0",
            ),
            (
                "version-string",
                Box::new(|v| v["version"] = json!("1")),
                Ent::Is("manifest.json"),
                "non-negative integer",
            ),
            (
                "version-negative",
                Box::new(|v| v["version"] = json!(-1)),
                Ent::Is("manifest.json"),
                "non-negative integer",
            ),
            (
                "codec-mismatch",
                Box::new(|v| v["codec"] = json!("lz4")),
                Ent::Is("manifest.json"),
                "codec",
            ),
            (
                "format-raw",
                Box::new(|v| v["format"] = json!("raw")),
                Ent::Is("manifest.json"),
                "not supported",
            ),
            (
                "checksum-wrong-value",
                Box::new(|v| {
                    v["container_disk_checksum"] = json!(format!("sha256:{}", "0".repeat(64)))
                }),
                Ent::Is("disk.qcow2"),
                "checksum mismatch",
            ),
            (
                "checksum-wrong-length",
                Box::new(|v| {
                    let s = v["guest_disk_checksum"].as_str().unwrap().to_owned();
                    v["guest_disk_checksum"] = json!(s[..s.len() - 1]);
                }),
                Ent::Is("manifest.json"),
                "64 lower-case hex",
            ),
            (
                "checksum-upper-case",
                Box::new(|v| {
                    let s = v["guest_disk_checksum"].as_str().unwrap();
                    let up = format!("sha256:{}", s[7..].to_uppercase());
                    v["guest_disk_checksum"] = json!(up);
                }),
                Ent::Is("manifest.json"),
                "64 lower-case hex",
            ),
            (
                "checksum-md5",
                Box::new(|v| v["guest_disk_checksum"] = json!("md5:0123456789abcdef")),
                Ent::Is("manifest.json"),
                "sha256",
            ),
            (
                "bytes-mismatch",
                Box::new(move |v| v["guest_disk_bytes"] = json!(g_bytes + 512)),
                Ent::Is("guest-rootfs.qcow2"),
                "manifest says",
            ),
            (
                "virtual-size-mismatch",
                Box::new(|v| v["container_disk_virtual_size"] = json!(4096)),
                Ent::Is("disk.qcow2"),
                "virtual size",
            ),
            (
                "exported-at-not-a-date",
                Box::new(|v| v["exported_at"] = json!("yesterday")),
                Ent::Is("manifest.json"),
                "manifest does not match",
            ),
        ];
        let mut out = Vec::new();
        for (label, edit, entry, has) in list {
            let m = self.m_with("zstd", |v| edit(v));
            out.push(self.entries_case(
                &format!("manifest-{label}"),
                "archive",
                vec![self.g(), self.d(), m],
                Expect::Archive(entry, has),
            ));
        }
        let raw: Vec<(&str, Vec<u8>, &'static str)> = vec![
            ("not-json", b"{\"version\": 1,".to_vec(), "not valid JSON"),
            ("json-array", b"[1, 2, 3]".to_vec(), "not a JSON object"),
            ("empty", Vec::new(), "not valid JSON"),
            (
                "duplicate-key",
                {
                    let text = serde_json::to_string(&self.manifest("zstd")).unwrap();
                    format!("{{\"version\": 1, {}", &text[1..]).into_bytes()
                },
                "duplicate field",
            ),
        ];
        for (label, bytes, has) in raw {
            out.push(self.entries_case(
                &format!("manifest-{label}"),
                "archive",
                vec![self.g(), self.d(), Entry::file("manifest.json", bytes)],
                Expect::Archive(Ent::Is("manifest.json"), has),
            ));
        }
        out
    }

    /// Codec detection, frame bombs and damaged compressed streams.
    fn codec_cases(&self) -> Vec<Case> {
        let mut out = Vec::new();
        let mut add = |name: &str, bytes: Vec<u8>, expect: Expect| {
            let p = self.write(name, &bytes);
            out.push(self.import(name, "archive", p, expect));
        };
        add(
            "codec-empty-file",
            Vec::new(),
            Expect::Archive(Ent::NoEntry, "unknown archive format"),
        );
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        add(
            "codec-random-bytes",
            noise.clone(),
            Expect::Archive(Ent::NoEntry, "unknown archive format"),
        );
        let mut legacy_lz4 = vec![0x02, 0x21, 0x4C, 0x18];
        legacy_lz4.extend_from_slice(&noise[..512]);
        add(
            "codec-lz4-legacy-magic",
            legacy_lz4,
            Expect::Archive(Ent::NoEntry, "unknown archive format"),
        );
        let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend_from_slice(&self.good("zstd"));
        add(
            "codec-leading-skippable-frame",
            skippable,
            Expect::Archive(Ent::NoEntry, "unknown archive format"),
        );
        let mut ustar_at_0 = b"ustar\0".to_vec();
        ustar_at_0.extend_from_slice(&[0u8; 1024]);
        add(
            "codec-ustar-magic-misplaced",
            ustar_at_0,
            Expect::Archive(Ent::NoEntry, "unknown archive format"),
        );
        let mut zstd_junk = vec![0x28, 0xB5, 0x2F, 0xFD];
        zstd_junk.extend_from_slice(&noise[..2048]);
        add(
            "codec-zstd-magic-then-junk",
            zstd_junk,
            Expect::Archive(Ent::NoEntry, "corrupt or truncated"),
        );
        let mut lz4_junk = vec![0x04, 0x22, 0x4D, 0x18];
        lz4_junk.extend_from_slice(&noise[..2048]);
        add(
            "codec-lz4-magic-then-junk",
            lz4_junk,
            Expect::Archive(Ent::NoEntry, "corrupt or truncated"),
        );
        // zstd frame header declaring a 2^31-byte window (Window_Descriptor exponent 21).
        let mut window = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3, 0x01, 0x10, 0x00];
        window.extend_from_slice(&[0u8; 512]);
        add(
            "codec-zstd-2gib-window",
            window,
            Expect::Archive(Ent::NoEntry, "memory"),
        );
        // Single-segment zstd frame declaring 2^40 bytes of content (window = content size).
        let mut fcs = vec![0x28, 0xB5, 0x2F, 0xFD, 0b1110_0000];
        fcs.extend_from_slice(&(1u64 << 40).to_le_bytes());
        fcs.extend_from_slice(&[0x01, 0x10, 0x00]);
        fcs.extend_from_slice(&[0u8; 512]);
        add(
            "codec-zstd-content-size-2-40",
            fcs,
            Expect::Archive(Ent::NoEntry, "memory"),
        );
        // lz4 frame whose first block header claims 2 GiB (over the 4 MiB block maximum).
        add(
            "codec-lz4-2gib-block",
            lz4_frame(true, None, &[(0x7FFF_FFFF, vec![0u8; 64])], false),
            Expect::Archive(Ent::NoEntry, "corrupt or truncated"),
        );
        // lz4 frame declaring 2^50 bytes of content around a complete, valid tar: the reader
        // gets the whole archive and must still fail on the frame's end.
        let good_tar = tar::tar(
            &[self.g(), self.d(), self.m(&self.manifest("lz4"))],
            End::Marker,
        );
        let blocks: Vec<(u32, Vec<u8>)> = good_tar
            .chunks(64 << 10)
            .map(|c| (0x8000_0000 | c.len() as u32, c.to_vec()))
            .collect();
        add(
            "codec-lz4-content-size-lie",
            lz4_frame(true, Some(1 << 50), &blocks, true),
            Expect::Archive(Ent::NoEntry, "corrupt or truncated"),
        );
        add(
            "codec-lz4-missing-endmark",
            lz4_frame(true, None, &blocks, false),
            Expect::Archive(Ent::NoEntry, "truncated"),
        );
        let mut lz4_bad_sum = self.good("lz4");
        let n = lz4_bad_sum.len();
        lz4_bad_sum[n - 1] ^= 0xff;
        add(
            "codec-lz4-bad-content-checksum",
            lz4_bad_sum,
            Expect::Archive(Ent::NoEntry, "corrupt or truncated"),
        );
        let mut zstd_trailing = self.good("zstd");
        zstd_trailing.extend_from_slice(b"junk after the frame");
        add(
            "codec-zstd-trailing-junk",
            zstd_trailing,
            Expect::Archive(Ent::NoEntry, ""),
        );
        let z = self.good("zstd");
        add(
            "codec-zstd-cut-last-byte",
            z[..z.len() - 1].to_vec(),
            Expect::Archive(Ent::Any, ""),
        );
        // A real bomb: 48 MiB of zeros as the disk entry, a few KiB compressed; the
        // manifest (for the small disk) does not match, so it is refused after streaming.
        let zeros = Entry::file("disk.qcow2", vec![0u8; 48 << 20]);
        let bomb = compress(
            "zstd",
            &tar::tar(
                &[self.g(), zeros, self.m(&self.manifest("zstd"))],
                End::Marker,
            ),
        );
        assert!(bomb.len() < 64 << 10, "bomb is {} bytes", bomb.len());
        add(
            "codec-zstd-bomb-48mib-zeros",
            bomb,
            Expect::Archive(Ent::Is("disk.qcow2"), "manifest says"),
        );
        out
    }

    /// A02 and the rest of the qcow2 rejection list, as `disk.qcow2` entries of otherwise
    /// valid archives (checksums and sizes consistent).
    fn disk_entry_cases(&self) -> Vec<Case> {
        let work = self.dir.join("a02-work");
        std::fs::create_dir_all(&work).unwrap();
        let w = work.as_path();
        let list: Vec<(&str, PathBuf, &'static str)> = vec![
            (
                "a02-backing-etc-passwd",
                overlay(w, "passwd.qcow2", "/etc/passwd", "raw"),
                "outside",
            ),
            (
                "a02-backing-relative-escape",
                overlay(w, "rel.qcow2", "../../../../../../etc/passwd", "raw"),
                "outside",
            ),
            (
                "a02-backing-sibling-entry",
                overlay(w, "sibling.qcow2", "guest-rootfs.qcow2", "qcow2"),
                "backing file",
            ),
            (
                "a02-backing-self-loop",
                overlay(w, "self.qcow2", "disk.qcow2", "qcow2"),
                "loop",
            ),
            (
                "a02-backing-json-protocol",
                overlay(
                    w,
                    "json.qcow2",
                    "json:{\"file.filename\":\"/etc/passwd\"}",
                    "raw",
                ),
                "backing",
            ),
            (
                "a02-external-data-file-host-path",
                data_file_to_host(w, "datafile.qcow2"),
                "external data file",
            ),
            (
                "a02-not-qcow2",
                {
                    let p = w.join("junk.qcow2");
                    std::fs::write(&p, b"this is not a disk image, just text").unwrap();
                    p
                },
                "refused",
            ),
            (
                "a02-unknown-incompatible-bit",
                poked(w, "unk.qcow2", &[(INCOMPAT, be64(1 << 5))]),
                "incompatible feature",
            ),
            (
                "a02-corrupt-bit",
                poked(w, "corrupt.qcow2", &[(INCOMPAT, be64(1 << 1))]),
                "marked corrupt",
            ),
            ("qcow2-luks-encrypted", luks(w, "luks.qcow2"), "encrypted"),
            (
                "qcow2-aes-crypt-method",
                poked(w, "aes.qcow2", &[(CRYPT_METHOD, be32(1))]),
                "encrypted",
            ),
            (
                "qcow2-extended-l2",
                {
                    let p = w.join("extl2.qcow2");
                    create(&p, "1M", &["-o", "extended_l2=on"]);
                    p
                },
                "extended L2",
            ),
            (
                "qcow2-compression-type-2",
                poked(
                    w,
                    "ctype.qcow2",
                    &[(INCOMPAT, be64(1 << 3)), (COMPRESSION_TYPE, vec![2])],
                ),
                "compression type",
            ),
            (
                "qcow2-huge-l1-size",
                poked(w, "l1.qcow2", &[(L1_SIZE, be32(0xffff_ffff))]),
                "L1 table",
            ),
            (
                "qcow2-huge-refcount-table",
                poked(w, "rt.qcow2", &[(RT_CLUSTERS, be32(0xffff_ffff))]),
                "refcount table",
            ),
            (
                "qcow2-version-4",
                poked(w, "v4.qcow2", &[(4, be32(4))]),
                "version",
            ),
            (
                "qcow2-truncated-to-header",
                {
                    let p = tiny(w, "trunc.qcow2", 0x11);
                    let b = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &b[..512]).unwrap();
                    p
                },
                "refused",
            ),
            (
                "qcow2-refcount-corruption",
                bad_refcount(w, "refcount.qcow2"),
                "consistency check",
            ),
        ];
        let mut out = Vec::new();
        for (name, file, has) in list {
            let bytes = std::fs::read(&file).unwrap();
            let m = self.m(&self.manifest_for(&self.guest, &bytes, "zstd"));
            let covers = if name.starts_with("a02") {
                "A02"
            } else {
                "qcow2"
            };
            out.push(self.entries_case(
                name,
                covers,
                vec![self.g(), Entry::file("disk.qcow2", bytes), m],
                Expect::Archive(Ent::Is("disk.qcow2"), has),
            ));
        }
        std::fs::remove_dir_all(&work).unwrap();
        out
    }

    /// Images given to `create` that the safe open refuses (the container disk is hostile,
    /// the guest rootfs is the good one).
    fn create_cases(&self) -> Vec<Case> {
        let w = self.dir.join("create");
        std::fs::create_dir_all(&w).unwrap();
        let w = w.as_path();
        let loop_a = w.join("loop-a.qcow2");
        create(&loop_a, "1M", &[]);
        let loop_b = overlay(w, "loop-b.qcow2", "loop-a.qcow2", "qcow2");
        rebase_unsafe(w, &loop_a, "loop-b.qcow2");
        let self_loop = w.join("self.qcow2");
        create(&self_loop, "1M", &[]);
        rebase_unsafe(w, &self_loop, "self.qcow2");
        let list: Vec<(&str, PathBuf, Expect)> = vec![
            (
                "create-luks-encrypted",
                luks(w, "luks.qcow2"),
                Expect::Unsupported("encrypted"),
            ),
            (
                "create-aes-crypt-method",
                poked(w, "aes.qcow2", &[(CRYPT_METHOD, be32(1))]),
                Expect::Unsupported("encrypted"),
            ),
            (
                "create-external-data-file",
                data_file_to_host(w, "datafile.qcow2"),
                Expect::Unsupported("external data file"),
            ),
            (
                "create-unknown-incompatible-bit",
                poked(w, "unk.qcow2", &[(INCOMPAT, be64(1 << 40))]),
                Expect::Unsupported("incompatible feature"),
            ),
            (
                "create-compression-type-2",
                poked(
                    w,
                    "ctype.qcow2",
                    &[(INCOMPAT, be64(1 << 3)), (COMPRESSION_TYPE, vec![2])],
                ),
                Expect::Unsupported("compression type"),
            ),
            (
                "create-version-1",
                poked(w, "v1.qcow2", &[(4, be32(1))]),
                Expect::Unsupported("version"),
            ),
            (
                "create-corrupt-bit",
                poked(w, "corrupt.qcow2", &[(INCOMPAT, be64(1 << 1))]),
                Expect::Corrupt("marked corrupt"),
            ),
            (
                "create-huge-l1-size",
                poked(w, "l1.qcow2", &[(L1_SIZE, be32(0x0400_0000))]),
                Expect::Corrupt("L1 table"),
            ),
            (
                "create-l1-beyond-eof",
                poked(w, "l1far.qcow2", &[(L1_OFFSET, be64(1 << 40))]),
                Expect::Corrupt("L1 table"),
            ),
            (
                "create-huge-refcount-table",
                poked(w, "rt.qcow2", &[(RT_CLUSTERS, be32(0x0100_0000))]),
                Expect::Corrupt("refcount table"),
            ),
            (
                "create-cluster-bits-22",
                poked(w, "cb.qcow2", &[(CLUSTER_BITS, be32(22))]),
                Expect::Corrupt("cluster_bits"),
            ),
            ("create-backing-loop", loop_b, Expect::Corrupt("loop")),
            (
                "create-backing-self-loop",
                self_loop,
                Expect::Corrupt("loop"),
            ),
            (
                "create-chain-too-deep",
                deep_chain(w, "deep", 12),
                Expect::Corrupt("deeper"),
            ),
            (
                "create-backing-missing",
                overlay(w, "missing.qcow2", "nope.qcow2", "qcow2"),
                Expect::Io,
            ),
            (
                "create-backing-json-protocol",
                overlay(
                    w,
                    "json.qcow2",
                    "json:{\"file.filename\":\"/etc/passwd\"}",
                    "raw",
                ),
                Expect::Unsupported("backing"),
            ),
            (
                "create-backing-nbd-protocol",
                overlay(w, "nbd.qcow2", "nbd://127.0.0.1:10809/x", "raw"),
                Expect::Unsupported("backing"),
            ),
            (
                "create-backing-format-vmdk",
                overlay(w, "vmdk.qcow2", "loop-a.qcow2", "vmdk"),
                Expect::Unsupported("backing"),
            ),
            (
                "create-zlib-cluster-garbage",
                broken_compressed(w, "zlib.qcow2", "zlib"),
                Expect::Corrupt("deflate"),
            ),
            (
                "create-zstd-cluster-garbage",
                broken_compressed(w, "zstd.qcow2", "zstd"),
                Expect::Corrupt("zstd"),
            ),
            (
                "create-empty-file",
                {
                    let p = w.join("empty.img");
                    std::fs::write(&p, b"").unwrap();
                    p
                },
                Expect::Unsupported("neither a qcow2 image nor a raw disk"),
            ),
            (
                "create-odd-sized-file",
                {
                    let p = w.join("odd.img");
                    std::fs::write(&p, vec![7u8; 1000]).unwrap();
                    p
                },
                Expect::Unsupported("neither a qcow2 image nor a raw disk"),
            ),
            (
                "create-qcow2-magic-only",
                {
                    let p = w.join("magic.img");
                    std::fs::write(&p, b"QFI\xfb").unwrap();
                    p
                },
                Expect::Corrupt(""),
            ),
            (
                "create-missing-file",
                w.join("does-not-exist.qcow2"),
                Expect::Io,
            ),
        ];
        list.into_iter()
            .map(|(name, disk, expect)| Case {
                name: name.to_owned(),
                covers: "qcow2",
                op: Op::Create {
                    opts: BoxOptions {
                        disk,
                        guest_rootfs: self.images.guest_rootfs.clone(),
                    },
                    name: TARGET.to_owned(),
                },
                expect,
            })
            .collect()
    }
}

/// An LZ4 frame (lz4 `doc/lz4_Frame_format.md`): independent blocks, 4 MiB maximum block size,
/// optional content size; `blocks` are (block header word, data) as written; the EndMark is
/// written when `end` is set. No checksums.
pub fn lz4_frame(
    independent: bool,
    content_size: Option<u64>,
    blocks: &[(u32, Vec<u8>)],
    end: bool,
) -> Vec<u8> {
    let mut flg = 0b0100_0000u8;
    if independent {
        flg |= 0b0010_0000;
    }
    if content_size.is_some() {
        flg |= 0b0000_1000;
    }
    let bd = 7u8 << 4;
    let mut desc = vec![flg, bd];
    if let Some(n) = content_size {
        desc.extend_from_slice(&n.to_le_bytes());
    }
    let hc = (xxh32(&desc, 0) >> 8) as u8;
    let mut out = vec![0x04, 0x22, 0x4D, 0x18];
    out.extend_from_slice(&desc);
    out.push(hc);
    for (word, data) in blocks {
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(data);
    }
    if end {
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}

/// xxHash32 of `data` (reference algorithm, xxHash specification by Yann Collet), for the
/// lz4 frame descriptor checksum, so the test needs no extra crate.
fn xxh32(data: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    let rd = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut i = 0;
    let mut h: u32;
    if data.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while i + 16 <= data.len() {
            for (k, lane) in v.iter_mut().enumerate() {
                *lane = lane
                    .wrapping_add(rd(&data[i + 4 * k..]).wrapping_mul(P2))
                    .rotate_left(13)
                    .wrapping_mul(P1);
            }
            i += 16;
        }
        h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
    } else {
        h = seed.wrapping_add(P5);
    }
    h = h.wrapping_add(data.len() as u32);
    while i + 4 <= data.len() {
        h = h
            .wrapping_add(rd(&data[i..]).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        i += 4;
    }
    while i < data.len() {
        h = h
            .wrapping_add(u32::from(data[i]).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
        i += 1;
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}
