//! The runtime suite against the default plugins: qcow2 storage, SQLite catalog, zstd codec.

boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new(
    "qcow2", "sqlite", "zstd"
));
