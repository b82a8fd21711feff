//! The runtime suite against storage=qcow2, catalog=redb, codec=none.

boxlite_conformance::runtime_suite_tests!(boxlite_conformance::Combo::new("qcow2", "redb", "none"));
