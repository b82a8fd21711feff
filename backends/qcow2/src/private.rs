//! Owner-only files and directories.
//!
//! Everything BoxLite writes into a home is either guest disk data or catalog metadata, so
//! every file it creates there gets mode 0600 and every directory 0700. The mode is passed to
//! `open(2)` / `mkdir(2)` when the file or directory is created: the process umask is never
//! changed (a host process may embed BoxLite and own it) and can only remove bits from these
//! modes, never add any. Files that exist already keep their mode.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// Mode of every file BoxLite creates (owner read/write).
pub const FILE_MODE: u32 = 0o600;

/// Mode of every directory BoxLite creates (owner only).
pub const DIR_MODE: u32 = 0o700;

/// [`OpenOptions`] that create files with [`FILE_MODE`]; nothing else is set (add `write`,
/// `create_new` and so on).
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// A [`DirBuilder`] that creates directories with [`DIR_MODE`] (not recursive).
pub fn dir_builder() -> DirBuilder {
    let mut b = DirBuilder::new();
    b.mode(DIR_MODE);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn modes_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        file_options()
            .write(true)
            .create_new(true)
            .open(&f)
            .unwrap();
        let d = dir.path().join("a/b");
        dir_builder().recursive(true).create(&d).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // Whatever the umask, the modes never exceed these (the usual 022 leaves them as is).
        assert_eq!(mode(&f) & !FILE_MODE, 0);
        assert_eq!(mode(&d) & !DIR_MODE, 0);
        assert_eq!(mode(&dir.path().join("a")) & !DIR_MODE, 0);
    }

    #[test]
    fn images_are_created_0600() {
        use crate::image::{create_image, create_overlay_staged, flatten_to_file, BackingFormat};
        let dir = tempfile::tempdir().unwrap();
        let mode = |n: &str| {
            std::fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        let base = dir.path().join("base.qcow2");
        create_image(&base, 1 << 20).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay_staged(&top, Some(("base.qcow2", BackingFormat::Qcow2)), 1 << 20).unwrap();
        let chain = crate::image::Chain::open(&top, &Default::default()).unwrap();
        flatten_to_file(&chain, &dir.path().join("flat.qcow2")).unwrap();
        for n in ["base.qcow2", "top.qcow2", "flat.qcow2"] {
            assert_eq!(mode(n), 0o600, "{n}");
        }
    }
}
