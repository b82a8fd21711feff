//! Export and import of ~200 MiB of disk data (two qcow2 files, each half random, half
//! compressible text), ours vs GNU tar + zstd + sha256sum, side by side.
//!
//! Run: `cargo bench -p boxlite-archive --bench archive` (needs qemu-img, tar, zstd).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boxlite_archive::{
    builtin_codecs, export_to_path, import_archive, write_archive, ExportDisks, ImportLimits,
};
use common::{codec, meta, random_bytes, run, test_validator, FileFlatDisk};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// 50 MiB random + 50 MiB of log-like text, as a qcow2.
fn mixed_qcow2(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut f = BufWriter::new(File::create(&raw).unwrap());
    f.write_all(&random_bytes(50 << 20, seed)).unwrap();
    let mut text = 0usize;
    let mut i = 0u64;
    while text < 50 << 20 {
        let line = format!(
            "2026-01-02T03:04:{:02}Z host-{} service[{}]: request {} served in {} ms status=200\n",
            i % 60,
            i % 7,
            1000 + i % 13,
            i,
            (i * 7919) % 1000
        );
        f.write_all(line.as_bytes()).unwrap();
        text += line.len();
        i += 1;
    }
    drop(f);
    let out = dir.join(name);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&out));
    std::fs::remove_file(raw).unwrap();
    out
}

fn bench(c: &mut Criterion) {
    if !["qemu-img", "tar", "zstd", "sha256sum"]
        .iter()
        .all(|t| common::have(t))
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let guest = mixed_qcow2(&src, "guest-rootfs.qcow2", 1);
    let container = mixed_qcow2(&src, "disk.qcow2", 2);
    let disks = || ExportDisks {
        guest_rootfs: Box::new(FileFlatDisk::open(&guest)),
        container: Box::new(FileFlatDisk::open(&container)),
    };
    let payload = disks().payload_bytes();
    eprintln!("payload: {} MiB", payload >> 20);
    let zstd = codec("zstd");
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let mut g = c.benchmark_group("archive-export");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Bytes(payload));
    g.bench_function("boxlite write_archive zstd-3 (no fsync)", |b| {
        b.iter(|| {
            let p = out.join("a.boxsnap");
            let f = BufWriter::with_capacity(1 << 20, File::create(&p).unwrap());
            write_archive(f, &p, zstd.as_ref(), 3, &meta(), disks(), &mut |_| {}).unwrap();
            std::fs::remove_file(p).unwrap();
        })
    });
    g.bench_function("boxlite export_to_path zstd-3 (staged + fsync)", |b| {
        b.iter(|| {
            let r =
                export_to_path(&out, "b", zstd.as_ref(), 3, &meta(), disks(), &mut |_| {}).unwrap();
            std::fs::remove_file(r.path).unwrap();
        })
    });
    g.bench_function("tar --zstd -cf + sha256sum", |b| {
        b.iter(|| {
            let p = out.join("c.tar.zst");
            run(Command::new("tar")
                .args(["--zstd", "-cf"])
                .arg(&p)
                .arg("-C")
                .arg(&src)
                .args(["guest-rootfs.qcow2", "disk.qcow2"]));
            run(Command::new("sha256sum")
                .args(["guest-rootfs.qcow2", "disk.qcow2"])
                .current_dir(&src));
            std::fs::remove_file(p).unwrap();
        })
    });
    g.finish();

    let archive = export_to_path(
        &out,
        "fixture",
        zstd.as_ref(),
        3,
        &meta(),
        disks(),
        &mut |_| {},
    )
    .unwrap();
    eprintln!(
        "archive: {} MiB",
        std::fs::metadata(&archive.path).unwrap().len() >> 20
    );
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let codecs = builtin_codecs();
    let mut g = c.benchmark_group("archive-import");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Bytes(payload));
    g.bench_function("boxlite import_archive (verify + extract + fsync)", |b| {
        b.iter(|| {
            let imported = import_archive(
                &archive.path,
                &codecs,
                &staging,
                &ImportLimits::default(),
                test_validator,
            )
            .unwrap();
            imported.discard().unwrap();
        })
    });
    g.bench_function("tar --zstd -xf + sha256sum", |b| {
        b.iter(|| {
            let x = staging.join("x");
            std::fs::create_dir(&x).unwrap();
            run(Command::new("tar")
                .args(["--zstd", "-xf"])
                .arg(&archive.path)
                .arg("-C")
                .arg(&x));
            run(Command::new("sha256sum")
                .args(["guest-rootfs.qcow2", "disk.qcow2"])
                .current_dir(&x));
            std::fs::remove_dir_all(x).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
