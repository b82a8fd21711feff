//! Harness shared by the cargo-fuzz target `open_image` (`fuzz/` at the
//! repository root) and the in-tree byte-mutation stress test: run every
//! entry point of the image layer on arbitrary bytes. Any panic is a bug;
//! errors are expected.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check, Chain, FlattenPlan, OpenOptions};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Largest virtual size that is read/flattened in full, in bytes.
const FULL_LIMIT: u64 = 16 << 20;

/// Where the harness writes its files: `/dev/shm` (tmpfs) when it exists, because every
/// execution flushes (fdatasync) a written image and on a disk-backed `/tmp` that limits a
/// run to a few dozen executions per second; the system temporary directory otherwise.
fn scratch_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Write `data` to a private temporary file and exercise safe open, reads,
/// allocation map, flatten (into a sink), check, and a small write + flush
/// on it. Never panics unless the image layer has a bug.
pub fn exercise_bytes(data: &[u8]) {
    let dir = scratch_root().join(format!("boxlite-qcow2-fuzz-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{n}.qcow2"));
    if std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .is_err()
    {
        return;
    }
    let opts = OpenOptions::new()
        .allowed_root(Some(dir.clone()))
        .max_depth(4);
    if let Ok(chain) = Chain::open(&path, &opts) {
        let size = chain.virtual_size();
        let mut buf = vec![0u8; 65536];
        for off in [0, size / 2, size.saturating_sub(65536)] {
            let len = (size - off.min(size)).min(65536) as usize;
            let _ = chain.read_at(&mut buf[..len], off.min(size));
        }
        let _ = chain.map(0, size.min(FULL_LIMIT));
        if size <= FULL_LIMIT {
            if let Ok(plan) = FlattenPlan::new(&chain) {
                let _ = plan.write_to(&mut std::io::sink());
            }
        }
    }
    let _ = check(&path);
    if let Ok(mut chain) = Chain::open(&path, &opts.clone().writable(true)) {
        let size = chain.virtual_size();
        if size > 0 {
            let off = size / 3;
            let len = (size - off).min(70_000) as usize;
            let _ = chain.write_at(&vec![0xa5; len], off);
            let _ = chain.write_zeroes(0, size.min(65536));
            let _ = chain.flush();
        }
        drop(chain);
        let _ = check(&path);
    }
    let _ = std::fs::remove_file(&path);
    // No empty directory is left behind once the process is done (recreated per call).
    let _ = std::fs::remove_dir(&dir);
}
