//! In-process qcow2 image layer and the external copy-on-write qcow2 backend.
//!
//! The image layer lives in [`image`]; see `docs/qcow2.md`.

pub mod image;
