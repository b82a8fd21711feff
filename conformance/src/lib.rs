//! Contract test suites for BoxLite implementations (DESIGN.md section 11).
//!
//! What is here now:
//! * [`catalog_suite`]: the [`boxlite_api::CatalogBackend`] contract (boxes, snapshots, journal,
//!   atomic batches, typed errors, ordering, persistence, concurrency), run by every catalog
//!   crate through [`catalog_suite_tests!`].
//!
//! The storage/runtime suite (disk content equality through the eight operations) is not built
//! yet.

#![warn(missing_docs)]

pub mod catalog_suite;
