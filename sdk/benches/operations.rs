//! Runtime operation benchmarks on the default plugins (qcow2 storage, SQLite catalog, zstd),
//! in temporary homes under the target directory (the same filesystem as the workspace),
//! with disks of 1 GiB virtual size:
//!
//! * (a) `clone/one_from_snapshot`: one `clone` from a snapshot (+ p50/p99 of 200 clones
//!   printed from our own samples);
//! * (b) `clone_fan_out_100`: one `clone_many` of 100 names vs 100 sequential `clone` calls;
//! * (c) `snapshot_create`: with 1 MiB vs 1 GiB written into the box beforehand (through
//!   `Chain::write_at`, then fsync'd, untimed);
//! * (d) `export`/`import` of a box with 256 MiB written, beside the real alternative:
//!   `qemu-img convert -O qcow2` of both chains + `tar --zstd -cf` + `sha256sum` for export,
//!   `tar --zstd -xf` + `sha256sum` for import.
//!
//! Run: `cargo bench -p boxlite --bench operations` (needs qemu-img, tar, zstd, sha256sum for
//! the alternatives in (d); they are skipped with a message when missing). Results:
//! `docs/PERFORMANCE.md`, "runtime operations".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boxlite::api::{CloneOptions, ExportOptions, SnapshotOptions};
use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources, LiteBox};
use boxlite_backend_qcow2::image::{create_image, Chain, OpenOptions};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;

/// Virtual size of every benchmark disk.
const DISK: u64 = 1 << 30;
/// Data written into the box of the export/import benchmark.
const EXPORT_DATA: u64 = 256 << 20;
/// Write chunk size.
const CHUNK: usize = 4 << 20;

fn tokio() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A temporary directory on the workspace's filesystem.
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// A home with box `src` (two empty 1 GiB qcow2 disks) and its snapshot `base`.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    rt: BoxliteRuntime,
    src: LiteBox,
}

fn images(dir: &Path) -> BoxOptions {
    let disk = dir.join("disk.qcow2");
    let guest_rootfs = dir.join("rootfs.qcow2");
    if !disk.exists() {
        create_image(&disk, DISK).expect("create image");
        create_image(&guest_rootfs, DISK).expect("create image");
    }
    BoxOptions { disk, guest_rootfs }
}

async fn fixture(prefix: &str) -> Fixture {
    let dir = scratch(prefix);
    let path = dir.path().to_path_buf();
    let sources = ConfigSources {
        home: Some(path.join("home")),
        ..Default::default()
    };
    let rt = BoxliteRuntime::open(Config::load(&sources).unwrap())
        .await
        .unwrap();
    let src = rt.create(images(&path), "src").await.unwrap();
    write_data(&src.info().await.unwrap().disks.container, 1 << 20, 0x5A);
    src.snapshot()
        .create("base", &SnapshotOptions::default())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        dir: path,
        rt,
        src,
    }
}

fn from_base() -> CloneOptions {
    let mut o = CloneOptions::default();
    o.from_snapshot("base");
    o
}

/// Write `len` bytes of data into a disk through the qcow2 layer and fsync it (as a VMM
/// would before a capture). Chunks alternate pseudo-random and text-like content.
fn write_data(disk: &Path, len: u64, seed: u8) {
    let mut chain = Chain::open(disk, &OpenOptions::new().writable(true)).unwrap();
    let mut random = vec![0u8; CHUNK];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    for b in random.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let text: Vec<u8> = format!("{seed:02x} log line: the quick brown fox jumps over it\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(CHUNK)
        .collect();
    let mut off = 0u64;
    let mut i = 0;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        let buf = if i % 2 == 0 { &random } else { &text };
        chain.write_at(&buf[..n], off).unwrap();
        off += n as u64;
        i += 1;
    }
    chain.close().unwrap();
    std::fs::File::open(disk).unwrap().sync_all().unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (a) one clone from a snapshot. Each clone is removed again (untimed) so every sample
/// sees the same home.
fn clone_latency(c: &mut Criterion) {
    let tk = tokio();
    let fx = tk.block_on(fixture("bench-clone-"));
    let opts = from_base();

    // Our own samples for p50/p99.
    let mut samples = Vec::with_capacity(200);
    for i in 0..200 {
        let name = format!("p{i}");
        let t = Instant::now();
        tk.block_on(fx.src.clone(&name, &opts)).unwrap();
        samples.push(t.elapsed());
        tk.block_on(fx.rt.remove(&name, false)).unwrap();
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "clone/one_from_snapshot (200 samples): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms, min {:.2} ms, max {:.2} ms",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(mean),
        ms(samples[0]),
        ms(*samples.last().unwrap())
    );

    let mut g = c.benchmark_group("clone");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut n = 0u64;
    g.bench_function("one_from_snapshot", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let name = format!("c{n}");
                let t = Instant::now();
                tk.block_on(fx.src.clone(&name, &opts)).unwrap();
                total += t.elapsed();
                tk.block_on(fx.rt.remove(&name, false)).unwrap();
            }
            total
        })
    });
    g.finish();
}

/// (b) 100 clones: one `clone_many` vs 100 sequential `clone` calls. Every sample starts
/// from a fresh home (setup untimed).
fn clone_fan_out(c: &mut Criterion) {
    let tk = tokio();
    let names: Vec<String> = (0..100).map(|i| format!("fan{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = from_base();
    let mut g = c.benchmark_group("clone_fan_out_100");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("clone_many", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fx = tk.block_on(fixture("bench-fan-"));
                let t = Instant::now();
                let out = tk.block_on(fx.src.clone_many(&refs, &opts)).unwrap();
                total += t.elapsed();
                assert_eq!(out.len(), 100);
            }
            total
        })
    });
    g.bench_function("sequential_clone", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fx = tk.block_on(fixture("bench-fan-"));
                let t = Instant::now();
                for name in &refs {
                    tk.block_on(fx.src.clone(name, &opts)).unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// (c) snapshot create after 1 MiB vs 1 GiB written (written and fsync'd untimed; a fresh
/// box per iteration, removed afterwards).
fn snapshot_create(c: &mut Criterion) {
    let tk = tokio();
    let fx = tk.block_on(fixture("bench-snap-"));
    let mut g = c.benchmark_group("snapshot_create");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
    let mut n = 0u64;
    for (label, written) in [("1MiB_written", 1u64 << 20), ("1GiB_written", 1u64 << 30)] {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let name = format!("s{n}");
                    let bx = tk.block_on(fx.rt.create(images(&fx.dir), &name)).unwrap();
                    let disk = tk.block_on(bx.info()).unwrap().disks.container;
                    write_data(&disk, written, n as u8);
                    let t = Instant::now();
                    tk.block_on(bx.snapshot().create("snap", &SnapshotOptions::default()))
                        .unwrap();
                    total += t.elapsed();
                    tk.block_on(fx.rt.remove(&name, false)).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

fn have(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool).arg(arg).output().is_ok();
    if !ok {
        eprintln!("SKIPPED: {tool} not found; its alternative is not measured");
    }
    ok
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (d) export and import of a box with 256 MiB written, ours vs qemu-img + tar + sha256sum.
fn export_import(c: &mut Criterion) {
    let tk = tokio();
    let fx = tk.block_on(fixture("bench-export-"));
    let bx = tk.block_on(fx.rt.create(images(&fx.dir), "data")).unwrap();
    let disks = tk.block_on(bx.info()).unwrap().disks;
    write_data(&disks.container, EXPORT_DATA, 7);
    let out = fx.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let archive = out.join("data.boxsnap");
    let alt = have("qemu-img", "--version")
        && have("tar", "--version")
        && have("zstd", "--version")
        && have("sha256sum", "--version");

    let mut g = c.benchmark_group("export_256MiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(EXPORT_DATA));
    g.bench_function("boxlite_export", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_file(&archive); // export refuses to overwrite
                let t = Instant::now();
                tk.block_on(bx.export(&archive, &ExportOptions::default()))
                    .unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    let staged = out.join("alt");
    let alt_archive = out.join("alt.tar.zst");
    if alt {
        g.bench_function("qemu-img_convert+tar_zstd+sha256sum", |b| {
            b.iter(|| {
                std::fs::create_dir_all(&staged).unwrap();
                for (name, src) in [
                    ("guest-rootfs.qcow2", &disks.guest_rootfs),
                    ("disk.qcow2", &disks.container),
                ] {
                    run(Command::new("qemu-img")
                        .args(["convert", "-U", "-O", "qcow2"])
                        .arg(src)
                        .arg(staged.join(name)));
                }
                run(Command::new("sha256sum")
                    .current_dir(&staged)
                    .args(["guest-rootfs.qcow2", "disk.qcow2"]));
                run(Command::new("tar")
                    .arg("--zstd")
                    .arg("-cf")
                    .arg(&alt_archive)
                    .arg("-C")
                    .arg(&staged)
                    .args(["guest-rootfs.qcow2", "disk.qcow2"]));
                std::fs::remove_dir_all(&staged).unwrap();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("import_256MiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(EXPORT_DATA));
    let mut n = 0u64;
    g.bench_function("boxlite_import", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let name = format!("imp{n}");
                let t = Instant::now();
                tk.block_on(fx.rt.import(&archive, &name)).unwrap();
                total += t.elapsed();
                tk.block_on(fx.rt.remove(&name, false)).unwrap();
            }
            total
        })
    });
    if alt {
        let x = out.join("x");
        g.bench_function("tar_zstd_x+sha256sum", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::fs::create_dir_all(&x).unwrap();
                    let t = Instant::now();
                    run(Command::new("tar")
                        .arg("--zstd")
                        .arg("-xf")
                        .arg(&alt_archive)
                        .arg("-C")
                        .arg(&x));
                    run(Command::new("sha256sum")
                        .current_dir(&x)
                        .args(["guest-rootfs.qcow2", "disk.qcow2"]));
                    total += t.elapsed();
                    std::fs::remove_dir_all(&x).unwrap();
                }
                total
            })
        });
    }
    g.finish();
    let sizes =
        [&archive, &alt_archive].map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    println!(
        "export_256MiB: .boxsnap {:.1} MiB, tar.zst {:.1} MiB",
        sizes[0] as f64 / (1 << 20) as f64,
        sizes[1] as f64 / (1 << 20) as f64
    );
}

criterion_group!(
    benches,
    clone_latency,
    clone_fan_out,
    snapshot_create,
    export_import
);
criterion_main!(benches);
