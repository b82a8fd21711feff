//! The flat reference model of a box's two disks, and disk I/O through the qcow2 layer.

use std::path::Path;

use boxlite::api::{DiskRole, DiskSet};
use boxlite::qcow2::{Chain, OpenOptions};
use boxlite::{BoxOptions, LiteBox};

/// Virtual size of every test disk: 4 MiB.
pub const DISK_SIZE: u64 = 4 << 20;

/// The expected guest-visible content of a box's two disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Expected guest-rootfs content ([`DISK_SIZE`] bytes unless stated otherwise).
    pub guest: Vec<u8>,
    /// Expected container-disk content.
    pub container: Vec<u8>,
}

impl Model {
    fn disk_mut(&mut self, role: DiskRole) -> &mut Vec<u8> {
        match role {
            DiskRole::GuestRootfs => &mut self.guest,
            DiskRole::Container => &mut self.container,
        }
    }

    /// Record a write of `len` bytes of `byte` at `off` into `role`.
    pub fn write(&mut self, role: DiskRole, off: u64, len: usize, byte: u8) {
        let d = self.disk_mut(role);
        let off = off as usize;
        d[off..off + len].fill(byte);
    }
}

/// Write raw input images: guest rootfs has 0x11 over [0, 64 KiB), container has 0x22 over
/// [1 MiB, 1 MiB + 64 KiB); the rest reads as zeros (sparse files). `tag` keeps names apart.
pub(crate) fn make_images(dir: &Path, tag: &str) -> Result<(BoxOptions, Model), String> {
    let guest = dir.join(format!("{tag}-rootfs.raw"));
    let container = dir.join(format!("{tag}-disk.raw"));
    let mut model = Model {
        guest: vec![0; DISK_SIZE as usize],
        container: vec![0; DISK_SIZE as usize],
    };
    model.write(DiskRole::GuestRootfs, 0, 64 << 10, 0x11);
    model.write(DiskRole::Container, 1 << 20, 64 << 10, 0x22);
    write_sparse(&guest, &model.guest)?;
    write_sparse(&container, &model.container)?;
    Ok((
        BoxOptions {
            disk: container,
            guest_rootfs: guest,
        },
        model,
    ))
}

fn write_sparse(path: &Path, content: &[u8]) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(content.len() as u64)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, chunk) in content.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start((i * (64 << 10)) as u64))
                .and_then(|_| f.write_all(chunk))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Write `len` bytes of `byte` at `off` into a disk file, as the VMM would.
pub(crate) fn write_file(path: &Path, off: u64, len: usize, byte: u8) -> Result<(), String> {
    let mut chain = Chain::open(path, &OpenOptions::new().writable(true))
        .map_err(|e| format!("opening {} for writing: {e}", path.display()))?;
    chain
        .write_at(&vec![byte; len], off)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    chain
        .close()
        .map_err(|e| format!("closing {}: {e}", path.display()))
}

/// Read the whole guest-visible content of a disk file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let chain = Chain::open(path, &OpenOptions::new())
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut buf = vec![0u8; chain.virtual_size() as usize];
    chain
        .read_at(&mut buf, 0)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(buf)
}

/// Compare a disk set's content with the model; describe the first difference.
pub(crate) fn check_disks(what: &str, disks: &DiskSet, model: &Model) -> Result<(), String> {
    for (role, path) in disks.iter() {
        let got = read_file(path)?;
        let want = match role {
            DiskRole::GuestRootfs => &model.guest,
            DiskRole::Container => &model.container,
        };
        if got.len() != want.len() {
            return Err(format!(
                "{what}: {role} disk is {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Err(format!(
                "{what}: {role} disk differs at byte {i}: got {:#04x}, expected {:#04x}",
                got[i], want[i]
            ));
        }
    }
    Ok(())
}

/// Write into a box's live disk and the model together.
pub(crate) async fn write_box(
    b: &LiteBox,
    model: &mut Model,
    role: DiskRole,
    off: u64,
    len: usize,
    byte: u8,
) -> Result<(), String> {
    let info = b.info().await.map_err(|e| format!("info: {e}"))?;
    write_file(info.disks.get(role), off, len, byte)?;
    model.write(role, off, len, byte);
    Ok(())
}

/// Check a box's live content against the model.
pub(crate) async fn check_box(b: &LiteBox, model: &Model) -> Result<(), String> {
    let info = b.info().await.map_err(|e| format!("info: {e}"))?;
    check_disks(&format!("box '{}'", b.name()), &info.disks, model)
}

/// Check a snapshot's content (read from its immutable disks) against the model.
pub(crate) async fn check_snapshot(b: &LiteBox, name: &str, model: &Model) -> Result<(), String> {
    let disks = b
        .snapshot()
        .disks(name)
        .await
        .map_err(|e| format!("snapshot disks: {e}"))?;
    check_disks(&format!("snapshot '{}@{name}'", b.name()), &disks, model)
}
