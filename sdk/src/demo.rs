//! `boxlite demo`: the eight operations end to end on real ext4 filesystems, in a temporary
//! home, with every result verified.
//!
//! The demo builds two real ext4 images with `mkfs.ext4 -d` (a 64 MiB container filesystem
//! and a 32 MiB guest rootfs, each from a directory of generated files whose SHA-256 it
//! records), creates a box from the raw images (the runtime converts them to qcow2
//! in-process), and walks `snapshot create`, a guest write, `snapshot list/get/restore`,
//! `clone` (copy-on-write and full copy), `export`, `import` and `snapshot remove`, then
//! removes every box. A guest write is simulated the way a VMM would see it: the
//! filesystem is read out of the box through the qcow2 layer, changed with
//! `debugfs -w` on a scratch copy, and only the 4 KiB blocks that differ are written back
//! into the box's live disk with [`Chain::write_at`].
//!
//! Verification reads the box's disks through the qcow2 layer and checks them with
//! `e2fsck -fn` and `debugfs -R "cat PATH"` against the recorded checksums. The e2fsprogs
//! tools (Debian package `e2fsprogs`) are the only external programs used; no qemu tool is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boxlite_api::{BoxStatus, CloneOptions, ExportOptions, SnapshotOptions};
use boxlite_backend_qcow2::image::{Chain, OpenOptions};
use sha2::{Digest, Sha256};

use crate::{BoxOptions, BoxliteRuntime, Config, ConfigSources, LiteBox};

/// Size of the container filesystem image.
pub const CONTAINER_FS_BYTES: u64 = 64 << 20;
/// Size of the guest rootfs image.
pub const ROOTFS_BYTES: u64 = 32 << 20;
/// Block size of the demo's ext4 filesystems and of the simulated guest write-back.
pub const BLOCK: usize = 4096;

/// The e2fsprogs tools the demo runs.
pub const TOOLS: [&str; 3] = ["mkfs.ext4", "debugfs", "e2fsck"];

/// How to run the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Keep the temporary directory (home, images, archive) instead of deleting it.
    pub keep: bool,
}

/// One row of the demo's table.
#[derive(Debug, Clone)]
pub struct Step {
    /// What was done (operations are named as in the API, e.g. `snapshot create v1`).
    pub name: String,
    /// True when the step and its verification succeeded.
    pub ok: bool,
    /// What was verified, or why it failed.
    pub result: String,
    /// Time of the step itself (verification excluded).
    pub duration: Duration,
}

/// What the demo did.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Every step run, in order; the walk stops at the first failure.
    pub steps: Vec<Step>,
    /// The temporary directory, when it was kept (`--keep`).
    pub kept: Option<PathBuf>,
}

impl DemoReport {
    /// True when every step succeeded.
    pub fn succeeded(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    /// The first failed step, if any.
    pub fn failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.ok)
    }

    /// The table printed by `boxlite demo`: step, result, duration in ms.
    pub fn table(&self) -> String {
        let headers = ["STEP", "RESULT", "MS"];
        let rows: Vec<[String; 3]> = self
            .steps
            .iter()
            .map(|s| {
                let result = if s.ok {
                    format!("ok: {}", s.result)
                } else {
                    format!("FAILED: {}", s.result)
                };
                [
                    s.name.clone(),
                    result,
                    format!("{:.1}", s.duration.as_secs_f64() * 1e3),
                ]
            })
            .collect();
        let w0 = rows
            .iter()
            .map(|r| r[0].len())
            .chain([headers[0].len()])
            .max()
            .unwrap_or(0);
        let w2 = rows
            .iter()
            .map(|r| r[2].len())
            .chain([headers[2].len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w2$}  {}",
            headers[0], headers[2], headers[1]
        );
        for r in &rows {
            let _ = writeln!(out, "{:<w0$}  {:>w2$}  {}", r[0], r[2], r[1]);
        }
        out
    }
}

type DemoResult<T> = std::result::Result<T, String>;

/// Run the demo. Never panics on a failed check: the failing step is the last row of the
/// report (see [`DemoReport::succeeded`]). With `opts.keep` the temporary directory is kept
/// and its path is in [`DemoReport::kept`].
pub async fn run(opts: &DemoOptions) -> DemoReport {
    let mut report = DemoReport::default();
    let dir = match tempfile::Builder::new().prefix("boxlite-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.steps.push(Step {
                name: "prepare".into(),
                ok: false,
                result: format!("cannot create a temporary directory: {e}"),
                duration: Duration::ZERO,
            });
            return report;
        }
    };
    {
        let mut walk = Walk {
            dir: dir.path().to_path_buf(),
            report: &mut report,
            tools: BTreeMap::new(),
        };
        let _ = walk.all().await;
    }
    if opts.keep {
        report.kept = Some(dir.keep());
    }
    report
}

/// Generated files of one filesystem: path inside the filesystem -> content.
type Files = BTreeMap<String, Vec<u8>>;

struct Walk<'a> {
    dir: PathBuf,
    report: &'a mut DemoReport,
    tools: BTreeMap<&'static str, PathBuf>,
}

/// The state the steps share.
struct Demo {
    rt: BoxliteRuntime,
    home: PathBuf,
    container_files: Files,
    rootfs_files: Files,
    container_img: PathBuf,
    rootfs_img: PathBuf,
    /// The container filesystem after the guest write (raw), i.e. snapshot v2's content.
    v2_img: PathBuf,
    added: (String, Vec<u8>),
    changed: (String, Vec<u8>),
}

impl Walk<'_> {
    /// Record a step: `f` returns (result text, duration of the operation).
    fn record(&mut self, name: &str, r: DemoResult<(String, Duration)>) -> DemoResult<()> {
        let (ok, result, duration) = match r {
            Ok((text, d)) => (true, text, d),
            Err(e) => (false, e, Duration::ZERO),
        };
        self.report.steps.push(Step {
            name: name.to_owned(),
            ok,
            result: result.clone(),
            duration,
        });
        if ok {
            Ok(())
        } else {
            Err(result)
        }
    }

    async fn all(&mut self) -> DemoResult<()> {
        let t = Instant::now();
        let r = self.find_tools().map(|found| (found, t.elapsed()));
        self.record("check tools", r)?;

        let t = Instant::now();
        let r = self.prepare().await;
        let mut d = match r {
            Ok(d) => {
                let text = format!(
                    "ext4 images: container {} MiB ({} files), rootfs {} MiB ({} files)",
                    CONTAINER_FS_BYTES >> 20,
                    d.container_files.len(),
                    ROOTFS_BYTES >> 20,
                    d.rootfs_files.len()
                );
                self.record("prepare (mkfs.ext4 -d)", Ok((text, t.elapsed())))?;
                d
            }
            Err(e) => return self.record("prepare (mkfs.ext4 -d)", Err(e)),
        };

        // create
        let t = Instant::now();
        let r =
            d.rt.create(
                BoxOptions {
                    disk: d.container_img.clone(),
                    guest_rootfs: d.rootfs_img.clone(),
                },
                "demo",
            )
            .await;
        let dt = t.elapsed();
        let r = match r {
            Ok(b) => self.verify_equal_images(&d, &b).await.map(|()| {
                (
                    "box 'demo' from the raw images; both disks read back byte-equal, all files match their SHA-256".to_owned(),
                    dt,
                )
            }),
            Err(e) => Err(format!("create failed: {e}")),
        };
        self.record("create box", r)?;
        let b = get(&d.rt, "demo").await?;

        // snapshot create v1
        let t = Instant::now();
        let r = b.snapshot().create("v1", &SnapshotOptions::default()).await;
        let r = r
            .map(|i| {
                (
                    format!(
                        "v1 ({} stored bytes)",
                        i.guest_disk_bytes + i.container_disk_bytes
                    ),
                    t.elapsed(),
                )
            })
            .map_err(|e| format!("snapshot create v1 failed: {e}"));
        self.record("snapshot create v1", r)?;

        // guest write
        let r = self.guest_write(&mut d, &b).await;
        self.record("guest write (debugfs -w)", r)?;

        // snapshot create v2
        let t = Instant::now();
        let r = b
            .snapshot()
            .create("v2", &SnapshotOptions::default())
            .await
            .map(|i| {
                (
                    format!(
                        "v2 ({} stored bytes)",
                        i.guest_disk_bytes + i.container_disk_bytes
                    ),
                    t.elapsed(),
                )
            })
            .map_err(|e| format!("snapshot create v2 failed: {e}"));
        self.record("snapshot create v2", r)?;

        // snapshot list
        let t = Instant::now();
        let r = b.snapshot().list().await;
        let dt = t.elapsed();
        let r = match r {
            Ok(list) => {
                let names: Vec<String> = list.into_iter().map(|s| s.name).collect();
                if names == ["v1", "v2"] {
                    Ok((format!("[{}] in creation order", names.join(", ")), dt))
                } else {
                    Err(format!("expected [v1, v2], got {names:?}"))
                }
            }
            Err(e) => Err(format!("snapshot list failed: {e}")),
        };
        self.record("snapshot list", r)?;

        // snapshot get
        let t = Instant::now();
        let got = b.snapshot().get("v2").await;
        let dt = t.elapsed();
        let missing = b.snapshot().get("no-such-snapshot").await;
        let r = match (got, missing) {
            (Ok(Some(i)), Ok(None)) if i.name == "v2" => Ok((
                format!(
                    "v2 created {}; unknown name -> None",
                    i.created_at.format("%H:%M:%S%.3f")
                ),
                dt,
            )),
            (g, m) => Err(format!(
                "get v2 -> {:?}, get unknown -> {:?}",
                g.map(|o| o.map(|i| i.name)),
                m.map(|o| o.map(|i| i.name))
            )),
        };
        self.record("snapshot get", r)?;

        // snapshot restore v1
        let t = Instant::now();
        let r = b.snapshot().restore("v1").await;
        let dt = t.elapsed();
        let r = match r {
            Ok(()) => self.verify_restored(&d, &b).await.map(|text| (text, dt)),
            Err(e) => Err(format!("restore failed: {e}")),
        };
        self.record("snapshot restore v1", r)?;

        // clone x2 from v2
        let r = self.clones(&d, &b).await;
        self.record("clone from v2 (cow + full copy)", r)?;

        // export + import
        let archive = self.dir.join("demo.boxsnap");
        let t = Instant::now();
        let r = b.export(&archive, &ExportOptions::default()).await;
        let dt = t.elapsed();
        let r = match r {
            Ok(p) => {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                Ok((
                    format!(
                        "{} ({:.1} MiB, zstd)",
                        p.file_name().unwrap_or_default().to_string_lossy(),
                        size as f64 / (1 << 20) as f64
                    ),
                    dt,
                ))
            }
            Err(e) => Err(format!("export failed: {e}")),
        };
        self.record("export", r)?;

        let t = Instant::now();
        let r = d.rt.import(&archive, "demo-imported").await;
        let dt = t.elapsed();
        let r = match r {
            Ok(imp) => self.verify_same_content(&b, &imp).await.map(|()| {
                (
                    "'demo-imported': both disks byte-equal to 'demo'; e2fsck clean".to_owned(),
                    dt,
                )
            }),
            Err(e) => Err(format!("import failed: {e}")),
        };
        self.record("import", r)?;

        // snapshot remove v1
        let t = Instant::now();
        let r = b.snapshot().remove("v1").await;
        let dt = t.elapsed();
        let r = match r {
            Ok(()) => self.verify_after_remove(&d, &b).await.map(|t| (t, dt)),
            Err(e) => Err(format!("snapshot remove failed: {e}")),
        };
        self.record("snapshot remove v1", r)?;

        // remove boxes
        let t = Instant::now();
        let mut r = Ok(());
        for name in ["demo", "demo-clone", "demo-copy", "demo-imported"] {
            if let Err(e) = d.rt.remove(name, false).await {
                r = Err(format!("remove {name} failed: {e}"));
                break;
            }
        }
        let dt = t.elapsed();
        let r = match r {
            Ok(()) => self.verify_empty(&d).await.map(|t| (t, dt)),
            Err(e) => Err(e),
        };
        self.record("remove boxes", r)
    }

    /// Locate the e2fsprogs tools (also in /sbin and /usr/sbin, which a user's PATH may lack).
    fn find_tools(&mut self) -> DemoResult<String> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
        let mut missing = Vec::new();
        for tool in TOOLS {
            match dirs.iter().map(|d| d.join(tool)).find(|p| p.is_file()) {
                Some(p) => {
                    self.tools.insert(tool, p);
                }
                None => missing.push(tool),
            }
        }
        if missing.is_empty() {
            Ok(TOOLS.join(", ") + " found")
        } else {
            Err(format!(
                "{} not found: the demo needs the e2fsprogs tools; install the Debian package \
                 e2fsprogs (apt-get install e2fsprogs)",
                missing.join(", ")
            ))
        }
    }

    fn tool(&self, name: &str) -> Command {
        Command::new(
            self.tools
                .get(name)
                .map(PathBuf::as_path)
                .unwrap_or(Path::new(name)),
        )
    }

    async fn prepare(&mut self) -> DemoResult<Demo> {
        let container_files = generated_files("container", 3 << 20);
        let rootfs_files = generated_files("rootfs", 1 << 20);
        let container_img = self.dir.join("container.ext4");
        let rootfs_img = self.dir.join("rootfs.ext4");
        self.mkfs(
            &container_files,
            &self.dir.join("container-src"),
            &container_img,
            CONTAINER_FS_BYTES,
            "demo-disk",
        )?;
        self.mkfs(
            &rootfs_files,
            &self.dir.join("rootfs-src"),
            &rootfs_img,
            ROOTFS_BYTES,
            "demo-rootfs",
        )?;
        self.fsck(&container_img)?;
        self.fsck(&rootfs_img)?;
        let home = self.dir.join("home");
        let sources = ConfigSources {
            home: Some(home.clone()),
            ..Default::default()
        };
        let config = Config::load(&sources).map_err(|e| format!("configuration: {e}"))?;
        let rt = BoxliteRuntime::open(config)
            .await
            .map_err(|e| format!("cannot open the demo home: {e}"))?;
        Ok(Demo {
            rt,
            home,
            container_files,
            rootfs_files,
            container_img,
            rootfs_img,
            v2_img: self.dir.join("container-v2.raw"),
            added: (
                "/added-by-guest.txt".into(),
                text_lines("added by the guest", 300),
            ),
            changed: (
                "/app/config.toml".into(),
                b"# rewritten by the guest\nworkers = 8\nmode = \"production\"\n".to_vec(),
            ),
        })
    }

    /// Write `files` under `src` and build an ext4 image of `size` bytes from them.
    fn mkfs(
        &self,
        files: &Files,
        src: &Path,
        img: &Path,
        size: u64,
        label: &str,
    ) -> DemoResult<()> {
        for (name, data) in files {
            let p = src.join(name.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
            }
            std::fs::write(&p, data).map_err(|e| format!("write {}: {e}", p.display()))?;
        }
        let f = File::create(img).map_err(|e| format!("create {}: {e}", img.display()))?;
        f.set_len(size)
            .map_err(|e| format!("size {}: {e}", img.display()))?;
        drop(f);
        let mut cmd = self.tool("mkfs.ext4");
        cmd.args(["-q", "-F", "-b", &BLOCK.to_string(), "-L", label, "-d"])
            .arg(src)
            .arg(img);
        run_tool(&mut cmd).map(drop)
    }

    /// `e2fsck -fn` must find the filesystem clean.
    fn fsck(&self, img: &Path) -> DemoResult<()> {
        let mut cmd = self.tool("e2fsck");
        cmd.arg("-fn").arg(img);
        run_tool(&mut cmd)
            .map(drop)
            .map_err(|e| format!("filesystem check failed: {e}"))
    }

    /// `debugfs -R "cat PATH"` of a raw filesystem image.
    fn cat(&self, img: &Path, path: &str) -> DemoResult<Vec<u8>> {
        let mut cmd = self.tool("debugfs");
        cmd.arg("-R").arg(format!("cat {path}")).arg(img);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run debugfs: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "debugfs cat {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out.stdout)
    }

    /// The names in the root directory of a raw filesystem image (`debugfs -R "ls -p /"`).
    fn root_entries(&self, img: &Path) -> DemoResult<Vec<String>> {
        let mut cmd = self.tool("debugfs");
        cmd.args(["-R", "ls -p /"]).arg(img);
        let out = run_tool(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    /// Every file's content inside `img` must equal `files` (SHA-256 and bytes).
    fn check_files(&self, img: &Path, files: &Files) -> DemoResult<()> {
        for (name, want) in files {
            let got = self.cat(img, name)?;
            if sha256(&got) != sha256(want) || got != *want {
                return Err(format!(
                    "{name}: sha256 {} differs from the recorded {}",
                    sha256(&got),
                    sha256(want)
                ));
            }
        }
        Ok(())
    }

    async fn verify_equal_images(&self, d: &Demo, b: &LiteBox) -> DemoResult<()> {
        let info = b.info().await.map_err(|e| e.to_string())?;
        compare_chain_to_file(&info.disks.container, &d.container_img)?;
        compare_chain_to_file(&info.disks.guest_rootfs, &d.rootfs_img)?;
        for (disk, files, tmp) in [
            (&info.disks.container, &d.container_files, "created.raw"),
            (
                &info.disks.guest_rootfs,
                &d.rootfs_files,
                "created-rootfs.raw",
            ),
        ] {
            let dump = self.dir.join(tmp);
            dump_chain(disk, &dump)?;
            self.check_files(&dump, files)?;
            let _ = std::fs::remove_file(&dump);
        }
        Ok(())
    }

    /// Simulate a guest write: dump the container filesystem, change it with debugfs, write
    /// the differing blocks back through the qcow2 layer.
    async fn guest_write(&self, d: &mut Demo, b: &LiteBox) -> DemoResult<(String, Duration)> {
        let live = b.info().await.map_err(|e| e.to_string())?.disks.container;
        let t = Instant::now();
        let before = self.dir.join("container-before.raw");
        dump_chain(&live, &before)?;
        std::fs::copy(&before, &d.v2_img).map_err(|e| format!("copy dump: {e}"))?;
        let added_src = self.dir.join("added.txt");
        let changed_src = self.dir.join("config.toml");
        std::fs::write(&added_src, &d.added.1).map_err(|e| e.to_string())?;
        std::fs::write(&changed_src, &d.changed.1).map_err(|e| e.to_string())?;
        let script = self.dir.join("debugfs.cmds");
        std::fs::write(
            &script,
            format!(
                "write {} {}\ncd /app\nrm config.toml\nwrite {} config.toml\n",
                added_src.display(),
                d.added.0.trim_start_matches('/'),
                changed_src.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut cmd = self.tool("debugfs");
        cmd.arg("-w").arg("-f").arg(&script).arg(&d.v2_img);
        run_tool(&mut cmd)?;
        let (blocks, bytes) = write_back_changes(&before, &d.v2_img, &live)?;
        let dt = t.elapsed();
        let _ = std::fs::remove_file(&before);

        // Verify: the box now reads the modified filesystem.
        let check = self.dir.join("check.raw");
        dump_chain(&live, &check)?;
        compare_files(&check, &d.v2_img)?;
        self.fsck(&check)?;
        if self.cat(&check, &d.added.0)? != d.added.1 {
            return Err(format!("{} does not read back as written", d.added.0));
        }
        if self.cat(&check, &d.changed.0)? != d.changed.1 {
            return Err(format!("{} does not read back as written", d.changed.0));
        }
        let _ = std::fs::remove_file(&check);
        Ok((
            format!(
                "added {}, rewrote {}: {blocks} changed 4 KiB blocks ({} KiB) written via qcow2",
                d.added.0,
                d.changed.0,
                bytes >> 10
            ),
            dt,
        ))
    }

    async fn verify_restored(&self, d: &Demo, b: &LiteBox) -> DemoResult<String> {
        let info = b.info().await.map_err(|e| e.to_string())?;
        if info.status != BoxStatus::Stopped {
            return Err(format!("box is {} after restore", info.status));
        }
        let dump = self.dir.join("restored.raw");
        dump_chain(&info.disks.container, &dump)?;
        self.fsck(&dump)?;
        let added = d.added.0.trim_start_matches('/');
        if self.root_entries(&dump)?.iter().any(|n| n == added) {
            return Err(format!("{} still exists after restoring v1", d.added.0));
        }
        self.check_files(&dump, &d.container_files)?;
        compare_files(&dump, &d.container_img)?;
        let _ = std::fs::remove_file(&dump);
        let snaps = b.snapshot().list().await.map_err(|e| e.to_string())?;
        if snaps.len() != 2 {
            return Err(format!(
                "{} snapshots after restore, expected 2",
                snaps.len()
            ));
        }
        Ok(format!(
            "{} gone, {} original files match their SHA-256, e2fsck -fn clean",
            d.added.0,
            d.container_files.len()
        ))
    }

    async fn clones(&self, d: &Demo, b: &LiteBox) -> DemoResult<(String, Duration)> {
        let mut cow = CloneOptions::default();
        cow.from_snapshot("v2");
        let mut full = cow.clone();
        full.cow(false);
        let t = Instant::now();
        let c1 = b
            .clone("demo-clone", &cow)
            .await
            .map_err(|e| format!("clone demo-clone failed: {e}"))?;
        let t1 = t.elapsed();
        let t = Instant::now();
        let c2 = b
            .clone("demo-copy", &full)
            .await
            .map_err(|e| format!("clone demo-copy failed: {e}"))?;
        let t2 = t.elapsed();
        for c in [&c1, &c2] {
            let info = c.info().await.map_err(|e| e.to_string())?;
            compare_chain_to_file(&info.disks.container, &d.v2_img)?;
            compare_chain_to_file(&info.disks.guest_rootfs, &d.rootfs_img)?;
        }
        Ok((
            format!(
                "'demo-clone' (cow, {:.1} ms) and 'demo-copy' (cow=false, {:.1} ms) read as v2",
                t1.as_secs_f64() * 1e3,
                t2.as_secs_f64() * 1e3
            ),
            t1 + t2,
        ))
    }

    async fn verify_same_content(&self, a: &LiteBox, b: &LiteBox) -> DemoResult<()> {
        let ia = a.info().await.map_err(|e| e.to_string())?;
        let ib = b.info().await.map_err(|e| e.to_string())?;
        compare_chains(&ia.disks.container, &ib.disks.container)?;
        compare_chains(&ia.disks.guest_rootfs, &ib.disks.guest_rootfs)?;
        let dump = self.dir.join("imported.raw");
        dump_chain(&ib.disks.container, &dump)?;
        self.fsck(&dump)?;
        let _ = std::fs::remove_file(&dump);
        let dump = self.dir.join("imported-rootfs.raw");
        dump_chain(&ib.disks.guest_rootfs, &dump)?;
        self.fsck(&dump)?;
        let _ = std::fs::remove_file(&dump);
        Ok(())
    }

    async fn verify_after_remove(&self, d: &Demo, b: &LiteBox) -> DemoResult<String> {
        let names: Vec<String> = b
            .snapshot()
            .list()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| s.name)
            .collect();
        if names != ["v2"] {
            return Err(format!("snapshots after removing v1: {names:?}"));
        }
        let info = b.info().await.map_err(|e| e.to_string())?;
        compare_chain_to_file(&info.disks.container, &d.container_img)?;
        let dump = self.dir.join("v2-check.raw");
        for name in ["demo-clone", "demo-copy"] {
            let c = get(&d.rt, name).await?;
            let ci = c.info().await.map_err(|e| e.to_string())?;
            compare_chain_to_file(&ci.disks.container, &d.v2_img)?;
        }
        let v2 = b.snapshot().disks("v2").await.map_err(|e| e.to_string())?;
        dump_chain(&v2.container, &dump)?;
        compare_files(&dump, &d.v2_img)?;
        let _ = std::fs::remove_file(&dump);
        Ok("only v2 left; box, v2 and both clones unchanged".into())
    }

    async fn verify_empty(&self, d: &Demo) -> DemoResult<String> {
        let left = d.rt.list().await.map_err(|e| e.to_string())?;
        if !left.is_empty() {
            return Err(format!("{} boxes left", left.len()));
        }
        let files = count_files(&d.home.join("storage"));
        if files != 0 {
            return Err(format!(
                "{files} stored files left after removing every box"
            ));
        }
        Ok("4 boxes removed; no box and no stored disk file left".into())
    }
}

async fn get(rt: &BoxliteRuntime, name: &str) -> DemoResult<LiteBox> {
    rt.get(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("box {name} not found"))
}

/// Run a tool; its stdout on success, its stderr in the error otherwise.
fn run_tool(cmd: &mut Command) -> DemoResult<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Deterministic pseudo-random bytes (splitmix64).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn text_lines(what: &str, n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        let _ = writeln!(s, "{what}: line {i:05} of {n}, the quick brown fox");
    }
    s.into_bytes()
}

/// The generated files of one filesystem (`kind` is "container" or "rootfs").
fn generated_files(kind: &str, random_bytes: usize) -> Files {
    let mut f = Files::new();
    if kind == "container" {
        f.insert(
            "/hello.txt".into(),
            b"hello from the container disk\n".to_vec(),
        );
        f.insert(
            "/app/config.toml".into(),
            b"workers = 2\nmode = \"dev\"\n".to_vec(),
        );
        f.insert("/app/log.txt".into(), text_lines("container log", 8000));
        f.insert("/data/random.bin".into(), pseudo_random(1, random_bytes));
    } else {
        f.insert(
            "/etc/os-release".into(),
            b"NAME=\"BoxLite demo\"\nID=demo\n".to_vec(),
        );
        f.insert("/sbin/init".into(), b"#!/bin/sh\nexec /bin/sh\n".to_vec());
        f.insert("/lib/blob.bin".into(), pseudo_random(2, random_bytes));
    }
    f
}

/// Copy the guest-visible content of a qcow2 chain into a raw file.
fn dump_chain(disk: &Path, dest: &Path) -> DemoResult<()> {
    let chain = Chain::open(disk, &OpenOptions::new()).map_err(|e| e.to_string())?;
    let size = chain.virtual_size();
    let mut out = File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        chain
            .read_at(&mut buf[..n], off)
            .map_err(|e| e.to_string())?;
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        off += n as u64;
    }
    out.flush().map_err(|e| e.to_string())
}

/// Write the 4 KiB blocks where `after` differs from `before` into the disk at `live`.
/// Returns (blocks written, bytes written).
fn write_back_changes(before: &Path, after: &Path, live: &Path) -> DemoResult<(u64, u64)> {
    let mut a = File::open(before).map_err(|e| e.to_string())?;
    let mut b = File::open(after).map_err(|e| e.to_string())?;
    let mut chain =
        Chain::open(live, &OpenOptions::new().writable(true)).map_err(|e| e.to_string())?;
    let mut ba = vec![0u8; BLOCK];
    let mut bb = vec![0u8; BLOCK];
    let (mut off, mut blocks) = (0u64, 0u64);
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        if na != nb {
            return Err("debugfs changed the image size".into());
        }
        if na == 0 {
            break;
        }
        if ba[..na] != bb[..nb] {
            chain.write_at(&bb[..nb], off).map_err(|e| e.to_string())?;
            blocks += 1;
        }
        off += na as u64;
    }
    chain.close().map_err(|e| e.to_string())?;
    Ok((blocks, blocks * BLOCK as u64))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> DemoResult<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn compare_files(a: &Path, b: &Path) -> DemoResult<()> {
    let x = std::fs::read(a).map_err(|e| format!("{}: {e}", a.display()))?;
    let y = std::fs::read(b).map_err(|e| format!("{}: {e}", b.display()))?;
    match first_difference(&x, &y) {
        None => Ok(()),
        Some(off) => Err(format!(
            "{} and {} differ at byte {off}",
            a.display(),
            b.display()
        )),
    }
}

fn read_chain(disk: &Path) -> DemoResult<Vec<u8>> {
    let chain = Chain::open(disk, &OpenOptions::new()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; chain.virtual_size() as usize];
    chain.read_at(&mut buf, 0).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn compare_chain_to_file(disk: &Path, file: &Path) -> DemoResult<()> {
    let x = read_chain(disk)?;
    let y = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match first_difference(&x, &y) {
        None => Ok(()),
        Some(off) => Err(format!(
            "disk {} differs from {} at byte {off}",
            disk.display(),
            file.display()
        )),
    }
}

fn compare_chains(a: &Path, b: &Path) -> DemoResult<()> {
    let x = read_chain(a)?;
    let y = read_chain(b)?;
    match first_difference(&x, &y) {
        None => Ok(()),
        Some(off) => Err(format!(
            "disks {} and {} differ at byte {off}",
            a.display(),
            b.display()
        )),
    }
}

fn first_difference(x: &[u8], y: &[u8]) -> Option<usize> {
    if x.len() != y.len() {
        return Some(x.len().min(y.len()));
    }
    if x == y {
        return None; // memcmp; the position search below is only for the message
    }
    x.iter().zip(y).position(|(a, b)| a != b)
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}
