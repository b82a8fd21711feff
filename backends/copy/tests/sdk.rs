//! The eight operations through the `boxlite` runtime with `storage = "copy"`.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_operations_with_copy_storage() {
    if !common::have_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    common::sdk_scenario("copy", &tmp.path().join("home"), &tmp.path().join("work")).await;
}
