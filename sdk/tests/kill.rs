//! Real kills (DESIGN.md section 9, case A10): the `boxlite` CLI runs export, import, a
//! 20-name clone fan-out, snapshot create and snapshot rm on a 256 MiB disk holding 64 MiB of
//! data, and is SIGKILLed after a random delay (seeded; spread over each operation's measured
//! duration). After every kill the home is reopened through the library (recovery runs) and
//! checked: doctor clean, no transient status, every box and snapshot reads the committed
//! content, the store holds exactly the referenced files, and the archive destination holds
//! either nothing or a complete archive that `boxlite archive inspect` accepts.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxlite::api::ExportOptions;
use boxlite::{BoxOptions, BoxliteRuntime};
use boxlite_backend_qcow2::image::{Chain, OpenOptions};
use common::*;

const BIG: u64 = 256 << 20;
const DATA: u64 = 64 << 20;
/// SIGKILLs to send in all (attempts where the command had already finished do not count).
const KILLS: usize = 50;
const CLONES: usize = 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The content every box and snapshot must show: byte `0x33` over the first 64 MiB of the
/// container disk (pattern written per MiB index), zeros after. Checked on samples.
fn expected_byte(off: u64) -> u8 {
    if off < DATA {
        0x40u8.wrapping_add((off >> 20) as u8)
    } else {
        0
    }
}

fn check_content(path: &Path, what: &str) {
    let chain = Chain::open(path, &OpenOptions::new()).unwrap();
    assert_eq!(chain.virtual_size(), BIG, "{what}: virtual size");
    let mut buf = vec![0u8; 4096];
    for off in [
        0,
        1 << 20,
        17 << 20,
        40 << 20,
        DATA - 4096,
        DATA,
        128 << 20,
        BIG - 4096,
    ] {
        chain.read_at(&mut buf, off).unwrap();
        let want = expected_byte(off);
        assert!(
            buf.iter().all(|b| *b == want),
            "{what}: wrong content at {off:#x} (want {want:#x})"
        );
    }
}

fn cli(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_boxlite"));
    c.arg("--home").arg(home);
    c
}

/// What a reopened home must satisfy; returns the number of operations recovery rolled back.
async fn check_after_kill(
    home: &Path,
    out: &Path,
    label: &str,
    oracle: bool,
) -> (BoxliteRuntime, usize) {
    let rt = open_runtime(home).await;
    let rolled = rt.recovery_report().rolled_back.len();
    let r = rt.doctor(false).await.unwrap();
    assert!(r.problems.is_empty(), "{label}: doctor: {r:#?}");
    for info in rt.list().await.unwrap() {
        let name = info.name.clone().unwrap();
        assert_eq!(
            info.status,
            boxlite::api::BoxStatus::Stopped,
            "{label}: {name} left in a transient status"
        );
        check_content(&info.disks.container, &format!("{label}: box {name}"));
        let b = rt.get(&name).await.unwrap().unwrap();
        for s in b.snapshot().list().await.unwrap() {
            let d = b.snapshot().disks(&s.name).await.unwrap();
            check_content(&d.container, &format!("{label}: {name}@{}", s.name));
        }
    }
    // Doctor already checked every file and found none unreferenced; qemu-img as an
    // independent oracle costs a process per file, so it runs on every fifth check.
    if oracle {
        assert_store_consistent(&rt, home, label).await;
    }
    // The archive destination: nothing at the final name, or a complete archive.
    let dest = out.join("big.boxsnap");
    if dest.exists() {
        run(cli(home).args(["archive", "inspect"]).arg(&dest));
    }
    (rt, rolled)
}

/// Bring the home to the state an operation starts from.
async fn prepare(rt: &BoxliteRuntime, op: &str, out: &Path) {
    for i in 1..=CLONES {
        if rt.get(&format!("n{i}")).await.unwrap().is_some() {
            rt.remove(&format!("n{i}"), false).await.unwrap();
        }
    }
    if rt.get("imp").await.unwrap().is_some() {
        rt.remove("imp", false).await.unwrap();
    }
    // Leftovers of a killed export: the archive, and the hidden temporary file the archive
    // writer had open (outside the home, so recovery cannot know it).
    for e in std::fs::read_dir(out).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let big = rt.get("big").await.unwrap().unwrap();
    let has_k = big.snapshot().get("k").await.unwrap().is_some();
    match op {
        "snapshot_create" if has_k => big.snapshot().remove("k").await.unwrap(),
        "snapshot_rm" if !has_k => {
            big.snapshot()
                .create("k", &Default::default())
                .await
                .unwrap();
        }
        _ => {}
    }
}

fn op_command(home: &Path, op: &str, archive: &Path, out: &Path) -> Command {
    let mut c = cli(home);
    match op {
        "export" => c.arg("export").arg("big").arg(out.join("big.boxsnap")),
        "import" => c.arg("import").arg(archive).arg("imp"),
        "clone" => {
            c.args(["clone", "big"]);
            c.args((1..=CLONES).map(|i| format!("n{i}")))
        }
        "snapshot_create" => c.args(["snapshot", "create", "big", "k"]),
        "snapshot_rm" => c.args(["snapshot", "rm", "big", "k"]),
        other => panic!("unknown operation {other}"),
    };
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_cli_mid_operation() {
    if !have_qemu() {
        return;
    }
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A 256 MiB container disk with 64 MiB of data (a different byte per MiB).
    let disk = tmp.path().join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg(BIG.to_string()));
    let mut io = Command::new("qemu-io");
    for mib in 0..(DATA >> 20) {
        io.arg("-c").arg(format!(
            "write -q -P {} {}M 1M",
            expected_byte(mib << 20),
            mib
        ));
    }
    run(io.arg(&disk));
    let rootfs = tmp.path().join("rootfs.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&rootfs)
        .arg((8u64 << 20).to_string()));
    let archive = tmp.path().join("big-archive.boxsnap");
    {
        let rt = open_runtime(&home).await;
        let b = rt
            .create(
                BoxOptions {
                    disk,
                    guest_rootfs: rootfs,
                },
                "big",
            )
            .await
            .unwrap();
        b.export(&archive, &ExportOptions::default()).await.unwrap();
    }
    let setup = start.elapsed();

    let ops = [
        "export",
        "import",
        "clone",
        "snapshot_create",
        "snapshot_rm",
    ];
    // Measure each operation once, uninterrupted.
    let mut durations = Vec::new();
    for op in ops {
        let rt = open_runtime(&home).await;
        prepare(&rt, op, &out).await;
        drop(rt);
        let t = Instant::now();
        let status = op_command(&home, op, &archive, &out).status().unwrap();
        assert!(status.success(), "{op} (uninterrupted) failed");
        durations.push(t.elapsed());
        check_after_kill(&home, &out, &format!("{op} uninterrupted"), true).await;
    }

    let mut rng = Rng(0x6b69_6c6c_2d39_0001);
    let (mut kills, mut attempts, mut rolled_back) = (0, 0, 0);
    'outer: for round in 0.. {
        for (op, d) in ops.iter().zip(&durations) {
            if kills >= KILLS || attempts >= 2 * KILLS {
                break 'outer;
            }
            attempts += 1;
            let rt = open_runtime(&home).await;
            prepare(&rt, op, &out).await;
            drop(rt);
            let delay = Duration::from_micros(rng.below(d.as_micros() as u64 * 11 / 10));
            let mut child = op_command(&home, op, &archive, &out).spawn().unwrap();
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                kills += 1;
            }
            child.wait().unwrap();
            let label = format!("round {round} {op} killed after {delay:?}");
            let (_rt, rolled) = check_after_kill(&home, &out, &label, attempts % 5 == 0).await;
            rolled_back += rolled;
        }
    }
    eprintln!(
        "kill: {kills} SIGKILLs in {attempts} attempts (the others found the command already \
         finished), {rolled_back} operations rolled back by recovery; operation durations \
         {:?}; setup {:.1} s, total {:.1} s",
        ops.iter().zip(&durations).collect::<Vec<_>>(),
        setup.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert!(kills >= KILLS, "only {kills} kills in {attempts} attempts");
}
