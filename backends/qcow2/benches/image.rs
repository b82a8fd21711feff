//! qcow2 image layer benchmarks, each side by side with qemu-img:
//! * overlay creation: `create_overlay` vs `qemu-img create -b` (subprocess);
//! * flatten of a 1 GiB virtual / ~200 MiB allocated 2-layer chain:
//!   `flatten_to_file` (fsyncs the output) vs `qemu-img convert -O qcow2`
//!   (its default output cache mode never fsyncs), plus our passes alone;
//! * read throughput of 64 MiB through a depth-64 chain vs a depth-1 image.
//!
//! Run: `cargo bench -p boxlite-backend-qcow2 --bench image`
//! (needs qemu-img and qemu-io; results go to docs/PERFORMANCE.md).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boxlite_backend_qcow2::image::{
    create_overlay, flatten_to_file, BackingFormat, Chain, FlattenPlan, OpenOptions,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const MIB: u64 = 1 << 20;

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        st.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn have_qemu() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bench_overlay(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&base), "10G"],
    );
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group("overlay_create");
    g.bench_function("ours/create_overlay", |b| {
        b.iter(|| {
            let p = d
                .path()
                .join(format!("o{}.qcow2", n.fetch_add(1, Ordering::Relaxed)));
            create_overlay(&p, Some(("base.qcow2", BackingFormat::Qcow2)), 10 << 30).unwrap();
        })
    });
    g.bench_function("qemu-img create -b", |b| {
        b.iter(|| {
            let p = d
                .path()
                .join(format!("q{}.qcow2", n.fetch_add(1, Ordering::Relaxed)));
            sh(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    "base.qcow2",
                    "-F",
                    "qcow2",
                    s(&p),
                ],
            );
        })
    });
    g.finish();
}

fn qemu_io(img: &Path, cmds: &[String]) {
    let mut a: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(s(img));
    sh("qemu-io", &a);
}

fn bench_flatten(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "1G"]);
    // 150 MiB in the base (3 MiB runs every 20 MiB), 50 MiB in the top.
    let cmds: Vec<String> = (0..50u64)
        .map(|i| format!("write -q -P {} {} {}", i % 200 + 1, i * 20 * MIB, 3 * MIB))
        .collect();
    qemu_io(&base, &cmds);
    let top = d.path().join("top.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let cmds: Vec<String> = (0..50u64)
        .map(|i| {
            format!(
                "write -q -P {} {} {}",
                i % 100 + 7,
                i * 20 * MIB + 10 * MIB,
                MIB
            )
        })
        .collect();
    qemu_io(&top, &cmds);
    let out = d.path().join("flat.qcow2");
    let mut g = c.benchmark_group("flatten_1GiB_virtual_200MiB_allocated");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(200 * MIB));
    g.bench_function("ours/flatten_to_file", |b| {
        b.iter(|| {
            let chain = Chain::open(&top, &OpenOptions::default()).unwrap();
            flatten_to_file(&chain, &out).unwrap();
        })
    });
    g.bench_function("ours/FlattenPlan::new only (pass 1)", |b| {
        b.iter(|| {
            let chain = Chain::open(&top, &OpenOptions::default()).unwrap();
            FlattenPlan::new(&chain).unwrap().size_bytes()
        })
    });
    g.bench_function("ours/plan + write_to(io::sink)", |b| {
        b.iter(|| {
            let chain = Chain::open(&top, &OpenOptions::default()).unwrap();
            let plan = FlattenPlan::new(&chain).unwrap();
            plan.write_to(&mut std::io::sink()).unwrap()
        })
    });
    g.bench_function("ours/plan + write_to(file), no fsync", |b| {
        b.iter(|| {
            let chain = Chain::open(&top, &OpenOptions::default()).unwrap();
            let plan = FlattenPlan::new(&chain).unwrap();
            let f = std::fs::File::create(&out).unwrap();
            let mut bw = std::io::BufWriter::with_capacity(1 << 20, f);
            plan.write_to(&mut bw).unwrap()
        })
    });
    g.bench_function("qemu-img convert -O qcow2 (no fsync)", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            sh("qemu-img", &["convert", "-O", "qcow2", s(&top), s(&out)]);
        })
    });
    g.finish();
}

fn bench_read_depth(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("l0.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&base), "64M"],
    );
    qemu_io(&base, &[format!("write -q -P 1 0 {}", 64 * MIB)]);
    let mut prev = "l0.qcow2".to_string();
    for i in 1..=64u64 {
        let name = format!("l{i}.qcow2");
        let p = d.path().join(&name);
        sh(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &prev,
                "-F",
                "qcow2",
                s(&p),
            ],
        );
        qemu_io(
            &p,
            &[format!(
                "write -q -P {} {} {}",
                i + 1,
                (i - 1) * MIB,
                MIB / 2
            )],
        );
        prev = name;
    }
    let deep = d.path().join(&prev);
    let flat = d.path().join("flat.qcow2");
    sh("qemu-img", &["convert", "-O", "qcow2", s(&deep), s(&flat)]);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut g = c.benchmark_group("read_64MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(64 * MIB));
    for (name, path) in [("depth-64 chain", &deep), ("depth-1 image", &flat)] {
        let chain = Chain::open(path, &OpenOptions::default()).unwrap();
        assert_eq!(
            chain.layers().len(),
            if name.starts_with("depth-64") { 65 } else { 1 }
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut off = 0;
                while off < 64 * MIB {
                    chain.read_at(&mut buf, off).unwrap();
                    off += 4 * MIB;
                }
            })
        });
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    if !have_qemu() {
        eprintln!("!!!!! qemu-img not installed: skipping the qcow2 image benchmarks !!!!!");
        return;
    }
    bench_overlay(c);
    bench_flatten(c);
    bench_read_depth(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
