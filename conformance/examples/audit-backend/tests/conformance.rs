//! Certify the example backend: the whole runtime contract suite against `audit`.

// The conformance crate links the runtime (and with it the in-tree backends the audit
// backend delegates to); this crate's own registration is linked by naming it here.
use boxlite_example_audit_backend as _;

boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new(
    "audit", "sqlite", "zstd"
));

#[test]
fn audit_log_records_state_changes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = boxlite_conformance::runtime_suite::Harness::new(boxlite_conformance::Combo::new(
            "audit", "sqlite", "zstd",
        ))
        .unwrap();
        let runtime = h.open().await.unwrap();
        let (opts, _) = h.images("a").unwrap();
        let b = runtime.create(opts, "a").await.unwrap();
        b.snapshot()
            .create("v1", &Default::default())
            .await
            .unwrap();
        let log = std::fs::read_to_string(h.home().join("audit.log")).unwrap();
        let ops: Vec<&str> = log.lines().filter_map(|l| l.split(' ').nth(1)).collect();
        assert_eq!(ops, ["create", "snapshot"], "{log}");
    });
}
