//! Random writes (unaligned, cross-cluster, zero writes) through our code and
//! the same writes through qemu-io on a copy give identical guest content
//! (`qemu-img compare`) and clean `qemu-img check`.

mod common;

use boxlite_backend_qcow2::image::{check, Chain, OpenOptions};
use common::*;
use proptest::prelude::*;

const SIZE: u64 = 4 << 20;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, pat: u8 },
    Zero { off: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(300_000)));
    prop_oneof![
        4 => (range.clone(), 1u8..=255).prop_map(|((off, len), pat)| Op::Write { off, len, pat }),
        1 => range.prop_map(|(off, len)| Op::Zero { off, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn random_writes_match_qemu_io(ops in prop::collection::vec(op(), 1..10), small_clusters in any::<bool>(), v2 in any::<bool>()) {
        if !qemu_available("random_writes_match_qemu_io") {
            return Ok(());
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        create(&base, &SIZE.to_string(), &[]);
        qemu_io(&base, &[w(0xee, 0, SIZE / 2), w(0xdd, SIZE - 200_000, 100_000)]);
        let ours = d.path().join("ours.qcow2");
        let mut opts = vec![];
        let o = format!(
            "cluster_size={},compat={}",
            if small_clusters { 4096 } else { 65536 },
            if v2 { "0.10" } else { "1.1" }
        );
        opts.push("-o");
        opts.push(&o);
        let mut a = vec!["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"];
        a.extend_from_slice(&opts);
        a.push(p(&ours));
        run("qemu-img", &a);
        let theirs = d.path().join("theirs.qcow2");
        std::fs::copy(&ours, &theirs).unwrap();
        {
            let mut c = Chain::open(&ours, &OpenOptions::new().writable(true)).unwrap();
            for op in &ops {
                match *op {
                    Op::Write { off, len, pat } => c.write_at(&vec![pat; len as usize], off).unwrap(),
                    Op::Zero { off, len } => c.write_zeroes(off, len).unwrap(),
                }
            }
            c.flush().unwrap();
        }
        let cmds: Vec<String> = ops
            .iter()
            .map(|op| match *op {
                Op::Write { off, len, pat } => w(pat, off, len),
                Op::Zero { off, len } => format!("write -q -z {off} {len}"),
            })
            .collect();
        qemu_io(&theirs, &cmds);
        assert_qemu_check(&ours);
        assert_qemu_compare(&ours, &theirs);
        prop_assert!(check(&ours).unwrap().is_clean());
    }
}
