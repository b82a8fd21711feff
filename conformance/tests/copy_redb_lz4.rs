//! The runtime suite against storage=copy, catalog=redb, codec=lz4.

boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new("copy", "redb", "lz4"));
