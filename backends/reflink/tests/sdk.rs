//! The eight operations through the `boxlite` runtime with `storage = "reflink"` on btrfs and
//! xfs loop filesystems, and storage selection: `auto` picks reflink where it works and qcow2
//! elsewhere; an explicit `reflink` on ext4 is refused at open.

#[path = "../../copy/tests/common/mod.rs"]
mod common;

use boxlite::api::Error;
use boxlite::{BoxliteRuntime, Config, ConfigSources};
use common::*;

fn mount_or_skip(kind: Fs, size_mib: u64) -> Option<Mount> {
    match Mount::loop_fs(kind, size_mib) {
        Ok(m) => Some(m),
        Err(e) => {
            skip(&format!(
                "cannot make a {kind:?} filesystem on a loop device: {e}"
            ));
            None
        }
    }
}

async fn operations_on(kind: Fs, size_mib: u64, mkfs: &str) {
    if !have_tools(&["qemu-img", "qemu-io"]) || !can_mount(&[mkfs]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(mnt) = mount_or_skip(kind, size_mib) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    sdk_scenario("reflink", &mnt.dir.join("home"), work.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_operations_on_btrfs() {
    operations_on(Fs::Btrfs, 256, "mkfs.btrfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_operations_on_xfs() {
    operations_on(Fs::XfsReflink, 320, "mkfs.xfs").await;
}

async fn open(home: &std::path::Path, storage: &str) -> boxlite::api::Result<BoxliteRuntime> {
    let sources = ConfigSources {
        home: Some(home.to_path_buf()),
        storage: Some(storage.to_owned()),
        ..Default::default()
    };
    BoxliteRuntime::open(Config::load(&sources)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_selection_by_filesystem() {
    if !can_mount(&["mkfs.btrfs", "mkfs.ext4"]) {
        return;
    }
    let _lock = MountLock::acquire();
    let Some(btrfs) = mount_or_skip(Fs::Btrfs, 256) else {
        return;
    };
    let Some(ext4) = mount_or_skip(Fs::Ext4, 64) else {
        return;
    };
    {
        let rt = open(&btrfs.dir.join("auto"), "auto").await.unwrap();
        assert_eq!(rt.storage_name(), "reflink");
    }
    {
        let rt = open(&ext4.dir.join("auto"), "auto").await.unwrap();
        assert_eq!(rt.storage_name(), "qcow2");
    }
    let err = match open(&ext4.dir.join("explicit"), "reflink").await {
        Ok(_) => panic!("reflink on ext4 must be refused"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("ext4 does not support reflink"),
        "{err}"
    );
}
