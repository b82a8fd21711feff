//! Fuzz the `.boxsnap` reader with arbitrary file bytes: codec detection by magic bytes, the
//! zstd/lz4 decoders under limits, the strict tar reader, the manifest parser, size and
//! checksum verification, and (for inputs that get that far) the qcow2 standalone safe open
//! and refcount check the runtime runs on every staged disk. A panic, or a refused import that
//! leaves files in staging, is a crash.
#![no_main]

use std::path::Path;

use boxlite_api::{DiskRole, Error, Result};
use boxlite_backend_qcow2::image::{check, Chain, OpenOptions};
use libfuzzer_sys::fuzz_target;

/// The runtime's validator (sdk `transfer::validate_standalone`): safe open with the staging
/// directory as the allowed root, no backing file at all, a clean refcount check.
fn validate(_role: DiskRole, path: &Path) -> Result<u64> {
    let root = path.parent().map(Path::to_path_buf);
    let chain = Chain::open(path, &OpenOptions::new().allowed_root(root))?;
    if chain.layers().len() != 1 {
        return Err(Error::corrupt(path, "the disk has a backing file"));
    }
    if !check(path)?.is_clean() {
        return Err(Error::corrupt(path, "qcow2 consistency check failed"));
    }
    Ok(chain.virtual_size())
}

fuzz_target!(|data: &[u8]| {
    boxlite_archive::fuzzing::import_bytes(data, validate);
});
