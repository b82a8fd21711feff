//! The `reflink` storage backend (DESIGN.md section 7): the `copy` backend's file-per-disk
//! store ([`boxlite_backend_copy::FileStore`], same layout and crash safety) where every copy
//! of a disk file is one `FICLONE` ioctl, so the filesystem (btrfs, xfs with `reflink=1`)
//! shares the extents and a snapshot or clone costs per-extent metadata, not data.
//!
//! There is never a silent byte copy under this name: [`SnapshotBackend::probe`] refuses a
//! filesystem without reflink with [`Error::Unsupported`] naming it (e.g. "ext4 does not
//! support reflink (FICLONE: EOPNOTSUPP)"), and a `FICLONE` that fails in the middle of an
//! operation removes the partial destination and returns a typed error
//! ([`Error::Unsupported`] for EOPNOTSUPP/EXDEV, [`Error::NoSpace`], [`Error::Io`]).
//! The one exception is explicit: `clone_disks` with `cow = false` asks for copies that share
//! nothing with the source, which are sparse byte copies by definition.
//!
//! [`SnapshotBackend::probe`]: boxlite_api::SnapshotBackend::probe

#![warn(missing_docs)]

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use boxlite_api::{Capabilities, Error, Factory, PluginConfig, Registration, Result};
use boxlite_backend_copy::{CopyMethod, FileStore, FileStoreSettings};

/// `FICLONE` copies: the `reflink` backend's [`CopyMethod`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ficlone;

/// The `reflink` backend.
pub type ReflinkBackend = FileStore<Ficlone>;

boxlite_api::inventory::submit! {
    Registration {
        name: "reflink",
        description: "standalone qcow2 files; snapshots and clones are FICLONE reflinks (btrfs, xfs reflink=1)",
        factory: Factory::Storage(|cfg: &PluginConfig| {
            let _: FileStoreSettings = cfg.parse("reflink")?;
            Ok(Arc::new(ReflinkBackend::new(Ficlone)))
        }),
    }
}

const PROBE_HINT: &str = "put the BoxLite home on btrfs or on xfs made with reflink=1 \
     (`mkfs.xfs -m reflink=1`), or use storage \"qcow2\" (copy-on-write qcow2 layers) or \
     \"copy\" (full copies, any filesystem)";

const EXDEV_HINT: &str = "keep the whole BoxLite home on one mount of one btrfs or xfs \
     filesystem; do not mount or bind-mount anything inside storage/reflink";

impl CopyMethod for Ficlone {
    fn name(&self) -> &'static str {
        "reflink"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cow_clone: true,
            constant_time_snapshot: false,
            needs_filesystem: true,
        }
    }

    fn probe(&self, store: &Path) -> Result<()> {
        let id = ulid::Ulid::new();
        let src_path = store.join(format!(".probe-{id}.src"));
        let dst_path = store.join(format!(".probe-{id}.dst"));
        let result = (|| {
            let mut src = create_new(&src_path)?;
            src.write_all(&[0x5a; 4096])
                .and_then(|()| src.flush())
                .map_err(|e| Error::io(&src_path, e))?;
            let dst = create_new(&dst_path)?;
            ficlone(&src, &dst).map_err(|e| {
                if is_unsupported(&e) {
                    Error::Unsupported {
                        what: format!(
                            "{} does not support reflink (FICLONE: {})",
                            filesystem_name(store),
                            errno_name(&e)
                        ),
                        path: Some(store.to_path_buf()),
                        hint: PROBE_HINT.into(),
                    }
                } else {
                    Error::io(&dst_path, e)
                }
            })
        })();
        for p in [&src_path, &dst_path] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if result.is_ok() => return Err(Error::io(p, e)),
                Err(_) => {}
            }
        }
        result
    }

    fn copy(&self, src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<()> {
        ficlone(src, dst).map_err(|e| {
            if e.raw_os_error() == Some(libc::EXDEV) {
                Error::Unsupported {
                    what: format!(
                        "reflink from {} to {} crosses a mount or filesystem boundary \
                         (FICLONE: EXDEV)",
                        src_path.display(),
                        dst_path.display()
                    ),
                    path: Some(dst_path.to_path_buf()),
                    hint: EXDEV_HINT.into(),
                }
            } else if is_unsupported(&e) {
                Error::Unsupported {
                    what: format!(
                        "{} does not support reflink (FICLONE: {})",
                        filesystem_name(dst_path),
                        errno_name(&e)
                    ),
                    path: Some(dst_path.to_path_buf()),
                    hint: PROBE_HINT.into(),
                }
            } else {
                // ENOSPC/EDQUOT become NoSpace; anything else Io, with the destination.
                Error::io(dst_path, e)
            }
        })
    }
}

/// Create the new file `path` read-write, mode 0600 (like every file in a home).
fn create_new(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Make `dst` share all of `src`'s extents (`ioctl(dst, FICLONE, src)`): afterwards `dst` has
/// `src`'s length and content, and writes to either never show in the other.
///
/// Errors: the OS error (EOPNOTSUPP / EINVAL where the filesystem has no reflink, EXDEV
/// across mounts or filesystems, ENOSPC, ...).
pub fn ficlone(src: &File, dst: &File) -> io::Result<()> {
    loop {
        // SAFETY: FICLONE takes the source descriptor as its integer argument; both
        // descriptors are open files owned by the borrowed `File`s.
        let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Errors meaning "this filesystem cannot reflink" (EXDEV included: not across mounts).
fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EXDEV | libc::ENOTTY | libc::ENOSYS)
    )
}

/// The symbolic name of an OS error ("EOPNOTSUPP"), or its text for the uncommon ones.
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::ENOTTY) => "ENOTTY",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EBADF) => "EBADF",
        Some(libc::EISDIR) => "EISDIR",
        _ => return e.to_string(),
    };
    name.to_owned()
}

/// The name of a filesystem type from its `statfs` magic number (`f_type`): btrfs, xfs, ext4
/// (which shares its magic with ext2/ext3), tmpfs, overlayfs, a few more, else the number in
/// hex (`0x1234abcd`).
pub fn fs_type_name(magic: u32) -> String {
    let name = match magic {
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x4D44 => "vfat",
        0x8584_58F6 => "ramfs",
        _ => return format!("{magic:#x}"),
    };
    name.to_owned()
}

/// The type name of the filesystem holding `path` (see [`fs_type_name`]); `"an unknown
/// filesystem"` if `statfs` fails. For a path that does not exist yet, its nearest existing
/// ancestor is asked.
pub fn filesystem_name(path: &Path) -> String {
    let mut cur = Some(path);
    while let Some(p) = cur {
        if let Some(magic) = statfs_type(p) {
            return fs_type_name(magic);
        }
        cur = p.parent();
    }
    "an unknown filesystem".to_owned()
}

fn statfs_type(path: &Path) -> Option<u32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable struct for the call.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type is a signed word; the magic numbers are 32-bit.
    (r == 0).then_some(st.f_type as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_names() {
        assert_eq!(fs_type_name(0x9123683E), "btrfs");
        assert_eq!(fs_type_name(0x58465342), "xfs");
        assert_eq!(fs_type_name(0xEF53), "ext4");
        assert_eq!(fs_type_name(0x01021994), "tmpfs");
        assert_eq!(fs_type_name(0x794c7630), "overlayfs");
        assert_eq!(fs_type_name(0x12345678), "0x12345678");
    }

    #[test]
    fn errno_names() {
        let e = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        assert_eq!(errno_name(&e), "EOPNOTSUPP");
        assert!(is_unsupported(&e));
        assert!(!is_unsupported(&io::Error::from_raw_os_error(libc::ENOSPC)));
    }

    #[test]
    fn filesystem_name_of_a_missing_path_asks_an_ancestor() {
        let n = filesystem_name(Path::new("/proc/does/not/exist"));
        assert_eq!(n, "0x9fa0", "procfs magic");
    }
}
