//! Contract test suites for BoxLite implementations (DESIGN.md section 11).
//!
//! What is here now:
//! * [`catalog_suite`]: the [`boxlite_api::CatalogBackend`] contract (boxes, snapshots, journal,
//!   atomic batches, typed errors, ordering, persistence, concurrency), run by every catalog
//!   crate through [`catalog_suite_tests!`].
//!
//! * [`runtime_suite`]: the eight operations through a `BoxliteRuntime` built from any
//!   (storage, catalog, codec) [`Combo`], checking guest-visible disk content against a flat
//!   reference model; stamped into a test crate by [`runtime_suite_tests!`] or run by
//!   `boxlite conformance`.
//!
//! * [`live`]: a stand-in VMM (a guest that keeps writing through the qcow2 layer, and a
//!   `BoxController` over it) for the running-box cases and the live-capture tests.

#![warn(missing_docs)]

pub mod catalog_suite;
pub mod live;
pub mod runtime_suite;

pub use runtime_suite::Combo;
