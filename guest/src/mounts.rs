//! Mount table parsing (`/proc/self/mountinfo`) and the FIFREEZE / FITHAW ioctls.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Filesystem types that are never frozen: pseudo, memory-backed or read-only-by-design
/// filesystems (the prefix `cgroup` covers cgroup and cgroup2).
pub const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "bpf",
    "pstore",
    "autofs",
    "overlay",
    "nsfs",
    "ramfs",
    "squashfs",
    "efivarfs",
    "binfmt_misc",
    "rpc_pipefs",
];

/// True for a filesystem type in [`PSEUDO_FILESYSTEMS`] (or any `cgroup*` type).
pub fn is_pseudo(fstype: &str) -> bool {
    fstype.starts_with("cgroup") || PSEUDO_FILESYSTEMS.contains(&fstype)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id (field 1).
    pub id: u64,
    /// Device major number of the filesystem.
    pub major: u64,
    /// Device minor number of the filesystem.
    pub minor: u64,
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: String,
    /// True when the mount or the superblock is read-only.
    pub read_only: bool,
}

/// Parse the text of a mountinfo file. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    if fields.len() < 6 {
        return None;
    }
    let id = fields[0].parse().ok()?;
    let (major, minor) = fields[2].split_once(':')?;
    let mount_point = PathBuf::from(unescape(fields[4]));
    let mount_ro = fields[5].split(',').any(|o| o == "ro");
    let mut right = right.split(' ');
    let fstype = right.next()?.to_string();
    let _source = right.next();
    let super_ro = right
        .next()
        .map(|opts| opts.split(',').any(|o| o == "ro"))
        .unwrap_or(false);
    Some(MountEntry {
        id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point,
        fstype,
        read_only: mount_ro || super_ro,
    })
}

/// Decode the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out)
}

/// Read and parse `/proc/self/mountinfo`.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

mod raw {
    // FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int) (linux/fs.h).
    nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
    nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);
}

/// Open a mount point for the freeze ioctls (read-only, close-on-exec, no atime change).
pub fn open_mount(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOATIME)
        .open(path)
        .or_else(|e| {
            // O_NOATIME is refused (EPERM) on files the caller does not own unless it has
            // CAP_FOWNER: retry without it.
            if e.raw_os_error() == Some(libc::EPERM) {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(path)
            } else {
                Err(e)
            }
        })
}

/// FIFREEZE the filesystem `file` lives on. Blocks until dirty data is written and new writes
/// are held. EBUSY: already frozen; EOPNOTSUPP: the filesystem cannot be frozen.
pub fn fifreeze(file: &File) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE takes an int argument the kernel ignores; `arg` lives for the call.
    unsafe { raw::fifreeze(file.as_raw_fd(), &mut arg) }
        .map(drop)
        .map_err(io::Error::from)
}

/// FITHAW the filesystem `file` lives on. EINVAL: it was not frozen.
pub fn fithaw(file: &File) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FITHAW takes an int argument the kernel ignores; `arg` lives for the call.
    unsafe { raw::fithaw(file.as_raw_fd(), &mut arg) }
        .map(drop)
        .map_err(io::Error::from)
}

/// FITHAW the filesystem mounted at `path`; Ok(false) when it was not frozen (EINVAL).
pub fn thaw_path(path: &Path) -> io::Result<bool> {
    let file = open_mount(path)?;
    match fithaw(&file) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Short errno name plus the OS message, e.g. `EBUSY (Device or resource busy)`.
pub fn describe_errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{errno:?} ({})", errno.desc())
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /mnt/ro ro,nosuid - tmpfs x ro,size=4k
29 27 7:3 / /mnt/with\\040space rw - xfs /dev/loop3 rw,attr2
30 27 7:4 /sub /mnt/bind rw shared:5 master:2 - ext4 /dev/loop4 ro,errors=remount-ro
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
garbage line
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 6);
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert_eq!((m[1].major, m[1].minor), (254, 0));
        assert_eq!(m[1].fstype, "ext4");
        assert!(!m[1].read_only);
        assert!(m[2].read_only);
        assert_eq!(m[3].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[3].id, 29);
        assert!(m[4].read_only, "superblock ro counts");
        assert!(is_pseudo(&m[5].fstype) && is_pseudo("tmpfs") && !is_pseudo("ext4"));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\134b\\011c\\012"), "a\\b\tc\n");
        assert_eq!(unescape("trail\\"), "trail\\");
        assert_eq!(unescape("bad\\9999"), "bad\\9999");
        assert_eq!(unescape("big\\777"), "big\\777");
    }
}
