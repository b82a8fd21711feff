//! libFuzzer-free stress test of the safe open and everything after it:
//! real images from the test vectors, truncated and with random bytes
//! flipped (deterministic xorshift), fed to the same harness as the
//! cargo-fuzz target `open_image` (`fuzz/` at the repository root). Any panic fails the test.

mod common;

use boxlite_backend_qcow2::image::fuzzing::exercise_bytes;
use common::*;

fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let specs: &[(&str, &[&str])] = &[
        ("a", &["-o", "cluster_size=512"]),
        ("b", &["-o", "cluster_size=512,compat=0.10"]),
        ("c", &["-o", "cluster_size=1024,refcount_bits=1"]),
        ("d", &["-o", "cluster_size=512,refcount_bits=64"]),
    ];
    for (name, opts) in specs {
        let img = dir.join(format!("{name}.qcow2"));
        create(&img, "256k", opts);
        qemu_io(
            &img,
            &[
                w(0x3c, 1000, 5000),
                "write -q -z 20000 4096".into(),
                w(0x11, 200_000, 512),
            ],
        );
        out.push(std::fs::read(&img).unwrap());
    }
    // Compressed (zstd and zlib) with 512-byte clusters.
    for kind in ["zlib", "zstd"] {
        let src = dir.join(format!("src-{kind}.qcow2"));
        create(&src, "64k", &["-o", "cluster_size=512"]);
        qemu_io(&src, &[w(0x21, 0, 8192)]);
        let dst = dir.join(format!("cmp-{kind}.qcow2"));
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size=512,compression_type={kind}"),
                p(&src),
                p(&dst),
            ],
        );
        out.push(std::fs::read(&dst).unwrap());
    }
    // Internal snapshot.
    let s = dir.join("snap.qcow2");
    create(&s, "64k", &["-o", "cluster_size=512"]);
    qemu_io(&s, &[w(0x1, 0, 4096)]);
    run("qemu-img", &["snapshot", "-c", "s", p(&s)]);
    out.push(std::fs::read(&s).unwrap());
    out
}

#[test]
fn mutated_images_never_panic() {
    if !qemu_available("mutated_images_never_panic") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let seeds = seeds(d.path());
    // Also write the seeds where fuzz/run.sh / cargo fuzz can pick them up.
    if let Ok(dir) = std::env::var("QCOW2_FUZZ_SEED_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(format!("{dir}/seed-{i}.qcow2"), s).unwrap();
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for s in &seeds {
        exercise_bytes(s);
    }
    for _ in 0..400 {
        let s = &seeds[(next() % seeds.len() as u64) as usize];
        let mut b = s.clone();
        // Mostly mutate the metadata-heavy start of the file.
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            let region = if next().is_multiple_of(4) {
                b.len()
            } else {
                b.len().min(2048)
            };
            let i = (next() % region as u64) as usize;
            b[i] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            };
        }
        if next().is_multiple_of(8) {
            let n = (next() % b.len() as u64) as usize;
            b.truncate(n);
        }
        exercise_bytes(&b);
    }
}
