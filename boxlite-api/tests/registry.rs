//! A separate crate (this integration test) registers one implementation of each trait through
//! `inventory`, exactly as a third-party crate would, and looks them up by name.
//!
//! The implementations here are registry fixtures: every storage/catalog method refuses with
//! `Unsupported`, because what is under test is registration and lookup, not behaviour.

use std::io::{Read, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxlite_api::registry::{self, PluginKind};
use boxlite_api::*;

struct FixtureStorage;
struct FixtureCatalog;
struct FixtureCodec;

fn refuse<T>() -> Result<T> {
    Err(Error::Unsupported {
        what: "registry fixture".into(),
        path: None,
        hint: "this fixture exists only to test registration".into(),
    })
}

#[async_trait]
impl SnapshotBackend for FixtureStorage {
    fn name(&self) -> &str {
        "fixture-storage"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cow_clone: false,
            constant_time_snapshot: false,
            needs_filesystem: false,
        }
    }
    async fn probe(&self, _: &StorageContext) -> Result<()> {
        refuse()
    }
    async fn create_disks(&self, _: &StorageContext, _: &BoxId, _: &DiskSource) -> Result<DiskSet> {
        refuse()
    }
    async fn snapshot(&self, _: &StorageContext, _: &BoxId, _: &DiskSet) -> Result<Capture> {
        refuse()
    }
    async fn restore(&self, _: &StorageContext, _: &BoxId, _: &DiskSet) -> Result<DiskSet> {
        refuse()
    }
    async fn clone_disks(
        &self,
        _: &StorageContext,
        _: &CloneSource,
        _: &[BoxId],
        _: bool,
    ) -> Result<CloneOutcome> {
        refuse()
    }
    async fn read_flat(&self, _: &StorageContext, _: &Path) -> Result<Box<dyn FlatDisk>> {
        refuse()
    }
    async fn adopt_disks(&self, _: &StorageContext, _: &BoxId, _: &DiskSource) -> Result<DiskSet> {
        refuse()
    }
    async fn remove_snapshot(&self, _: &StorageContext, _: &DiskSet, _: &Roots) -> Result<Release> {
        refuse()
    }
    async fn remove_disks(&self, _: &StorageContext, _: &DiskSet, _: &Roots) -> Result<Release> {
        refuse()
    }
    async fn references(&self, _: &StorageContext, _: &DiskSet) -> Result<Vec<PathBuf>> {
        refuse()
    }
    async fn stored_files(&self, _: &StorageContext) -> Result<Vec<PathBuf>> {
        refuse()
    }
    async fn usage(&self, _: &StorageContext, _: &DiskSet) -> Result<Usage> {
        refuse()
    }
}

#[async_trait]
impl CatalogBackend for FixtureCatalog {
    fn name(&self) -> &str {
        "fixture-catalog"
    }
    async fn schema_version(&self) -> Result<u32> {
        refuse()
    }
    async fn apply(&self, _: Vec<CatalogOp>) -> Result<()> {
        refuse()
    }
    async fn get_box(&self, _: &BoxId) -> Result<Option<BoxRecord>> {
        refuse()
    }
    async fn find_box(&self, _: &str) -> Result<Option<BoxRecord>> {
        refuse()
    }
    async fn list_boxes(&self) -> Result<Vec<BoxRecord>> {
        refuse()
    }
    async fn get_snapshot(&self, _: &BoxId, _: &str) -> Result<Option<SnapshotRecord>> {
        refuse()
    }
    async fn list_snapshots(&self, _: &BoxId) -> Result<Vec<SnapshotRecord>> {
        refuse()
    }
    async fn list_all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        refuse()
    }
    async fn list_journal(&self) -> Result<Vec<JournalEntry>> {
        refuse()
    }
}

/// An identity codec: real enough to check that the registry hands back a working instance.
impl ArchiveCodec for FixtureCodec {
    fn name(&self) -> &str {
        "fixture-codec"
    }
    fn magic(&self) -> &[u8] {
        b"FIXT"
    }
    fn levels(&self) -> RangeInclusive<i32> {
        0..=0
    }
    fn default_level(&self) -> i32 {
        0
    }
    fn encoder<'a>(
        &self,
        out: Box<dyn Write + Send + 'a>,
        level: i32,
    ) -> Result<Box<dyn Encoder + 'a>> {
        if !self.levels().contains(&level) {
            return Err(Error::config(format!("level {level} out of range")));
        }
        struct Plain<'a>(Box<dyn Write + Send + 'a>);
        impl Write for Plain<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        impl Encoder for Plain<'_> {
            fn finish(mut self: Box<Self>) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        Ok(Box::new(Plain(out)))
    }
    fn decoder<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
        _: &DecodeLimits,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(input)
    }
}

inventory::submit! {
    Registration {
        name: "fixture-storage",
        description: "registry test fixture",
        factory: Factory::Storage(|_| Ok(Arc::new(FixtureStorage))),
    }
}
inventory::submit! {
    Registration {
        name: "fixture-catalog",
        description: "registry test fixture",
        factory: Factory::Catalog(|_| Ok(Arc::new(FixtureCatalog))),
    }
}
inventory::submit! {
    Registration {
        name: "fixture-codec",
        description: "registry test fixture",
        factory: Factory::Codec(|cfg| {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Settings {
                #[allow(dead_code)]
                strict: Option<bool>,
            }
            let _: Settings = cfg.parse("fixture-codec")?;
            Ok(Arc::new(FixtureCodec))
        }),
    }
}
inventory::submit! {
    Registration {
        name: "fixture-codec-b",
        description: "second codec, to check listing order",
        factory: Factory::Codec(|_| Ok(Arc::new(FixtureCodec))),
    }
}

#[test]
fn each_kind_is_found_by_name() {
    let cfg = PluginConfig::default();
    assert_eq!(
        registry::storage("fixture-storage", &cfg).unwrap().name(),
        "fixture-storage"
    );
    assert_eq!(
        registry::catalog("fixture-catalog", &cfg).unwrap().name(),
        "fixture-catalog"
    );
    let codec = registry::codec("fixture-codec", &cfg).unwrap();
    assert!(codec.detect(b"FIXTxxxx"));
    assert!(!codec.detect(b"xFIXT"));

    let mut out = Vec::new();
    let mut enc = codec.encoder(Box::new(&mut out), 0).unwrap();
    enc.write_all(b"hello").unwrap();
    enc.finish().unwrap();
    assert_eq!(out, b"hello");
}

#[test]
fn kinds_do_not_mix() {
    let cfg = PluginConfig::default();
    let err = registry::storage("fixture-catalog", &cfg)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("registered: fixture-storage"), "{msg}");
}

#[test]
fn unknown_name_lists_the_registered_ones() {
    let err = registry::codec("brotli", &PluginConfig::default())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("unknown codec 'brotli'"), "{msg}");
    assert!(
        msg.contains("registered: fixture-codec, fixture-codec-b"),
        "{msg}"
    );
    let names: Vec<_> = registry::registered(PluginKind::Codec)
        .iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["fixture-codec", "fixture-codec-b"]);
}

#[test]
fn plugin_settings_are_parsed_strictly() {
    let mut cfg = PluginConfig::default();
    cfg.settings
        .insert("strict".into(), toml::Value::Boolean(true));
    assert!(registry::codec("fixture-codec", &cfg).is_ok());
    cfg.settings.insert("typo".into(), toml::Value::Integer(1));
    let msg = registry::codec("fixture-codec", &cfg)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("fixture-codec") && msg.contains("typo"),
        "{msg}"
    );
}
