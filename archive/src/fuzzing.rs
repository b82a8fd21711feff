//! Harness shared by the cargo-fuzz target `import_archive` (`/fuzz` at the repository root)
//! and the in-tree mutation stress test (`tests/fuzz_stress.rs`): run the reader side of the
//! archive format ([`crate::import_archive`]: codec detection by magic bytes, the strict tar
//! reader, limits, the manifest parser, checksums, the caller's disk validator) on arbitrary
//! bytes. Errors are expected; a panic is a bug, and so is a failed import that leaves
//! anything in the staging directory (the harness panics on that too, so the fuzzer reports
//! it as a crash).
//!
//! Not part of the supported API: hidden from the documentation and free to change.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use boxlite_api::{DecodeLimits, DiskRole, Result};

use crate::{builtin_codecs, import_archive, ImportLimits};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The tight limits the harness imports under: disks of at most 4 MiB, a decompressed stream
/// of at most 16 MiB, a manifest of at most 64 KiB, zstd windows of at most 2^22 bytes
/// (4 MiB; the reference writer at level 3 uses at most 2^21 for small inputs). They keep one
/// execution in the millisecond range and its memory small, whatever the input declares.
pub fn fuzz_limits() -> ImportLimits {
    ImportLimits {
        max_disk_bytes: 4 << 20,
        max_total_bytes: 16 << 20,
        max_manifest_bytes: 64 << 10,
        decode: DecodeLimits { max_window_log: 22 },
    }
}

/// A private scratch directory of this process: `/dev/shm/boxlite-archive-fuzz-<pid>` (tmpfs:
/// the import fsyncs what it stages, which a disk-backed `/tmp` would make the bottleneck), or
/// the same name under the system temporary directory when `/dev/shm` does not exist.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    root.join(format!("boxlite-archive-fuzz-{}", std::process::id()))
}

/// Write `data` to a private temporary file and import it with [`crate::import_archive`] into
/// a private staging directory under [`fuzz_limits`], with every built-in codec, running
/// `validate` on the staged disks as the runtime would (the fuzz target passes the qcow2
/// backend's standalone safe open). A successful import is discarded again.
///
/// Returns whether the import succeeded. Returns `false` without importing when the scratch
/// files cannot be written (a full `/tmp` is not a finding).
///
/// Panics when a failed import left anything in the staging directory: that breaks the
/// reader's contract ("on any failure the private staging directory is removed entirely"),
/// so the fuzzer must report it.
pub fn import_bytes<V>(data: &[u8], validate: V) -> bool
where
    V: Fn(DiskRole, &Path) -> Result<u64>,
{
    let dir = scratch();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let staging = dir.join(format!("staging-{n}"));
    let input = dir.join(format!("{n}.boxsnap"));
    if std::fs::create_dir_all(&staging).is_err() {
        return false;
    }
    let written = File::create(&input).and_then(|mut f| f.write_all(data));
    let ok = written.is_ok() && {
        match import_archive(
            &input,
            &builtin_codecs(),
            &staging,
            &fuzz_limits(),
            validate,
        ) {
            Ok(imported) => {
                let _ = imported.discard();
                true
            }
            Err(_) => {
                let left: Vec<_> = std::fs::read_dir(&staging)
                    .map(|rd| rd.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                assert!(
                    left.is_empty(),
                    "a refused import left files in staging: {left:?}"
                );
                false
            }
        }
    };
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_dir_all(&staging);
    // Leaves no empty directory behind once the process is done (it is recreated per call).
    let _ = std::fs::remove_dir(&dir);
    ok
}

/// A stand-in disk validator for callers without a qcow2 implementation (the archive crate's
/// own stress test): the file must start with the qcow2 magic `QFI\xfb` and have no backing
/// file (header bytes 8..16 zero); returns the header's virtual size (bytes 24..32,
/// big-endian), per the qcow2 specification's header layout.
///
/// Errors: [`boxlite_api::Error::Io`] when the file cannot be read,
/// [`boxlite_api::Error::Corrupt`] when the header is not acceptable.
pub fn header_only_validator(_role: DiskRole, path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| boxlite_api::Error::io(path, e))?;
    if &head[0..4] != b"QFI\xfb" || head[8..16] != [0u8; 8] {
        return Err(boxlite_api::Error::corrupt(
            path,
            "not a standalone qcow2 header",
        ));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[24..32]);
    Ok(u64::from_be_bytes(size))
}
