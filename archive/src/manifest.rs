//! `manifest.json`: encoding and strict decoding of [`ArchiveManifest`].

use std::path::Path;

use boxlite_api::types::parse_sha256;
use boxlite_api::ARCHIVE_FORMAT_VERSION;
use boxlite_api::{validate_box_name, ArchiveManifest, Error, Result};

/// Name of the manifest entry.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Largest accepted `manifest.json`, in bytes (1 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// The only disk image format of v1 archives.
pub const FORMAT_QCOW2: &str = "qcow2";

/// Serialize a manifest as pretty-printed JSON followed by a newline.
///
/// Errors: none in practice ([`Error::Config`] if serde_json fails).
pub fn to_json(m: &ArchiveManifest) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(m)
        .map_err(|e| Error::config(format!("cannot serialize archive manifest: {e}")))?;
    v.push(b'\n');
    Ok(v)
}

/// Parse and check `manifest.json` bytes read from the archive at `path`.
///
/// Checks, in order: valid UTF-8 JSON object; `version` is an integer, not newer than
/// [`ARCHIVE_FORMAT_VERSION`] (else "created by a newer boxlite; upgrade boxlite") and not 0;
/// every field of [`ArchiveManifest`] present with the right type and no unknown field;
/// `format` is `"qcow2"`; both checksums are `sha256:` + 64 lower-case hex digits;
/// `box_name`, if present, passes [`validate_box_name`].
///
/// Errors: [`Error::Archive`] naming `manifest.json`; [`Error::InvalidName`] for a bad
/// `box_name` (ObjectKind::Box, the name as found).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<ArchiveManifest> {
    let err = |detail: String| Error::archive(path, Some(MANIFEST_NAME), detail);
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| err(format!("manifest is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| err("manifest is not a JSON object".into()))?;
    let version = obj
        .get("version")
        .ok_or_else(|| err("manifest has no \"version\" field".into()))?
        .as_u64()
        .ok_or_else(|| err("manifest \"version\" is not a non-negative integer".into()))?;
    if version > u64::from(ARCHIVE_FORMAT_VERSION) {
        return Err(err(format!(
            "archive format version {version} was created by a newer boxlite (this build reads \
             version {ARCHIVE_FORMAT_VERSION}); upgrade boxlite"
        )));
    }
    if version == 0 {
        return Err(err("archive format version 0 does not exist".into()));
    }
    let m: ArchiveManifest = serde_json::from_slice(bytes).map_err(|e| {
        err(format!(
            "manifest does not match format version {version}: {e}"
        ))
    })?;
    if m.format != FORMAT_QCOW2 {
        return Err(err(format!(
            "disk format {:?} is not supported (v1 archives hold qcow2 disks)",
            m.format
        )));
    }
    for (field, sum) in [
        ("guest_disk_checksum", &m.guest_disk_checksum),
        ("container_disk_checksum", &m.container_disk_checksum),
    ] {
        if parse_sha256(sum).is_none() {
            return Err(err(format!(
                "{field} {sum:?} is not \"sha256:\" followed by 64 lower-case hex digits"
            )));
        }
    }
    if let Some(name) = &m.box_name {
        validate_box_name(name)?;
    }
    Ok(m)
}
