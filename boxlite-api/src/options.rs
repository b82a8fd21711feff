//! Per-operation options with the defaults of DESIGN.md section 5.
//!
//! Every options type implements `Default` (the contract's defaults), has builder methods that
//! take and return `&mut Self` so calls chain on a local, and (de)serializes with serde with
//! unknown fields refused.

use serde::{Deserialize, Serialize};

/// Options of `box.snapshot().create(name, opts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotOptions {
    /// Quiesce a running guest (FIFREEZE through the guest agent) before capturing. Default true.
    pub quiesce: bool,
    /// How long the freeze may take and the guest may stay frozen before the agent thaws by
    /// itself, in seconds, 1..=600 (outside: `Config` error before anything happens). Default 30.
    pub quiesce_timeout_secs: u64,
    /// If quiescing fails: stop the box, capture, and report that it was stopped (true, the
    /// default), or fail with `QuiesceFailed` changing nothing (false).
    pub stop_on_quiesce_fail: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            quiesce: true,
            quiesce_timeout_secs: 30,
            stop_on_quiesce_fail: true,
        }
    }
}

impl SnapshotOptions {
    /// Set [`SnapshotOptions::quiesce`].
    pub fn quiesce(&mut self, on: bool) -> &mut Self {
        self.quiesce = on;
        self
    }
    /// Set [`SnapshotOptions::quiesce_timeout_secs`] (seconds).
    pub fn quiesce_timeout_secs(&mut self, secs: u64) -> &mut Self {
        self.quiesce_timeout_secs = secs;
        self
    }
    /// Set [`SnapshotOptions::stop_on_quiesce_fail`].
    pub fn stop_on_quiesce_fail(&mut self, on: bool) -> &mut Self {
        self.stop_on_quiesce_fail = on;
        self
    }
}

/// Options of `box.export(dest, opts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportOptions {
    /// Compress the archive. Default true; false selects the `none` codec.
    pub compress: bool,
    /// Codec level. Default 3 (zstd accepts 1..=22; other codecs document their own range).
    pub compression_level: i32,
    /// Put the box name and image description in the manifest. Default true.
    pub include_metadata: bool,
    /// Codec name overriding the runtime's configured codec (e.g. "lz4"). Default None.
    pub codec: Option<String>,
    /// How a `Running` box is captured before streaming (quiesce, timeout, stop fallback).
    /// Default: [`SnapshotOptions::default`].
    pub live: SnapshotOptions,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            compress: true,
            compression_level: 3,
            include_metadata: true,
            codec: None,
            live: SnapshotOptions::default(),
        }
    }
}

impl ExportOptions {
    /// Set [`ExportOptions::compress`].
    pub fn compress(&mut self, on: bool) -> &mut Self {
        self.compress = on;
        self
    }
    /// Set [`ExportOptions::compression_level`].
    pub fn compression_level(&mut self, level: i32) -> &mut Self {
        self.compression_level = level;
        self
    }
    /// Set [`ExportOptions::include_metadata`].
    pub fn include_metadata(&mut self, on: bool) -> &mut Self {
        self.include_metadata = on;
        self
    }
    /// Set [`ExportOptions::codec`].
    pub fn codec(&mut self, name: impl Into<String>) -> &mut Self {
        self.codec = Some(name.into());
        self
    }
    /// Set [`ExportOptions::live`].
    pub fn live(&mut self, live: SnapshotOptions) -> &mut Self {
        self.live = live;
        self
    }
}

/// Options of `box.clone(name, opts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloneOptions {
    /// Share storage copy-on-write where the backend can (default true); false makes a
    /// standalone full copy.
    pub cow: bool,
    /// Ask the host to start the new box after cloning. Default false.
    pub start_after_clone: bool,
    /// Clone from this snapshot of the source instead of its current state. Default None.
    pub from_snapshot: Option<String>,
    /// How a `Running` source box is captured when cloning its current state (quiesce,
    /// timeout, stop fallback). Default: [`SnapshotOptions::default`].
    pub live: SnapshotOptions,
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            cow: true,
            start_after_clone: false,
            from_snapshot: None,
            live: SnapshotOptions::default(),
        }
    }
}

impl CloneOptions {
    /// Set [`CloneOptions::cow`].
    pub fn cow(&mut self, on: bool) -> &mut Self {
        self.cow = on;
        self
    }
    /// Set [`CloneOptions::start_after_clone`].
    pub fn start_after_clone(&mut self, on: bool) -> &mut Self {
        self.start_after_clone = on;
        self
    }
    /// Set [`CloneOptions::from_snapshot`].
    pub fn from_snapshot(&mut self, name: impl Into<String>) -> &mut Self {
        self.from_snapshot = Some(name.into());
        self
    }
    /// Set [`CloneOptions::live`].
    pub fn live(&mut self, live: SnapshotOptions) -> &mut Self {
        self.live = live;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract() {
        let s = SnapshotOptions::default();
        assert!(s.quiesce);
        assert_eq!(s.quiesce_timeout_secs, 30);
        assert!(s.stop_on_quiesce_fail);
        let e = ExportOptions::default();
        assert!(e.compress);
        assert_eq!(e.compression_level, 3);
        assert!(e.include_metadata);
        assert_eq!(e.codec, None);
        let c = CloneOptions::default();
        assert!(c.cow);
        assert!(!c.start_after_clone);
        assert_eq!(c.from_snapshot, None);
    }

    #[test]
    fn builders_chain_and_serde_fills_defaults() {
        let mut o = SnapshotOptions::default();
        o.quiesce(false).quiesce_timeout_secs(5);
        assert!(!o.quiesce && o.quiesce_timeout_secs == 5 && o.stop_on_quiesce_fail);
        let mut c = CloneOptions::default();
        c.cow(false).from_snapshot("v1");
        assert_eq!(c.from_snapshot.as_deref(), Some("v1"));

        let parsed: ExportOptions = serde_json::from_str(r#"{"compression_level": 19}"#).unwrap();
        assert_eq!(parsed.compression_level, 19);
        assert!(parsed.compress);
        let bad = serde_json::from_str::<CloneOptions>(r#"{"cow": true, "coww": 1}"#);
        assert!(bad.is_err());
    }
}
