//! The runtime suite against storage=copy, catalog=sqlite, codec=zstd.

boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new(
    "copy", "sqlite", "zstd"
));
