//! The plugin registry: storage backends, catalogs and codecs register themselves with
//! [`inventory`] and hosts pick them by name (DESIGN.md section 3, "Registry").
//!
//! A third-party crate registers the same way as the in-tree ones, needing nothing but this
//! crate:
//!
//! ```ignore
//! boxlite_api::inventory::submit! {
//!     boxlite_api::Registration {
//!         name: "my-store",
//!         description: "my storage backend",
//!         factory: boxlite_api::Factory::Storage(|cfg| Ok(std::sync::Arc::new(MyStore::open(cfg)?))),
//!     }
//! }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crate::catalog::CatalogBackend;
use crate::codec::ArchiveCodec;
use crate::error::{Error, Result};
use crate::storage::SnapshotBackend;

/// The three kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// A [`SnapshotBackend`] (config key `storage`).
    Storage,
    /// A [`CatalogBackend`] (config key `catalog`).
    Catalog,
    /// An [`ArchiveCodec`] (config key `codec`).
    Codec,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Storage => "storage backend",
            PluginKind::Catalog => "catalog",
            PluginKind::Codec => "codec",
        })
    }
}

/// What a factory gets: the home and the plugin's own settings table from the config file
/// (`[storage.<name>]`, `[catalog.<name>]`, `[codec.<name>]`; empty when absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginConfig {
    /// The BoxLite home directory (absolute). Catalogs put their file here.
    pub home: PathBuf,
    /// Plugin-specific settings.
    pub settings: toml::Table,
}

impl PluginConfig {
    /// Deserialize [`PluginConfig::settings`] into the plugin's own settings type.
    ///
    /// Errors: [`Error::Config`] naming the plugin and the bad key or value.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, plugin: &str) -> Result<T> {
        toml::Value::Table(self.settings.clone())
            .try_into()
            .map_err(|e| Error::config(format!("settings of plugin '{plugin}': {e}")))
    }
}

/// A factory building a plugin instance from its config.
#[derive(Clone, Copy)]
pub enum Factory {
    /// Builds a storage backend.
    Storage(fn(&PluginConfig) -> Result<Arc<dyn SnapshotBackend>>),
    /// Builds (opens) a catalog.
    Catalog(fn(&PluginConfig) -> Result<Arc<dyn CatalogBackend>>),
    /// Builds a codec.
    Codec(fn(&PluginConfig) -> Result<Arc<dyn ArchiveCodec>>),
}

impl Factory {
    /// The kind of plugin this factory builds.
    pub fn kind(&self) -> PluginKind {
        match self {
            Factory::Storage(_) => PluginKind::Storage,
            Factory::Catalog(_) => PluginKind::Catalog,
            Factory::Codec(_) => PluginKind::Codec,
        }
    }
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Factory({})", self.kind())
    }
}

/// One registered plugin. Submit it with `boxlite_api::inventory::submit!`.
#[derive(Debug)]
pub struct Registration {
    /// The name hosts select it by; unique per kind.
    pub name: &'static str,
    /// One line for listings (`boxlite plugins`).
    pub description: &'static str,
    /// Builds an instance.
    pub factory: Factory,
}

inventory::collect!(Registration);

/// Every registration of `kind`, sorted by name.
pub fn registered(kind: PluginKind) -> Vec<&'static Registration> {
    let mut v: Vec<_> = inventory::iter::<Registration>
        .into_iter()
        .filter(|r| r.factory.kind() == kind)
        .collect();
    v.sort_by_key(|r| r.name);
    v
}

/// The registration of `kind` named `name`.
///
/// Errors: [`Error::Config`] listing the registered names of that kind when `name` is unknown,
/// or when two crates registered the same name (ambiguous: remove one of them).
pub fn lookup(kind: PluginKind, name: &str) -> Result<&'static Registration> {
    let all = registered(kind);
    let found: Vec<_> = all.iter().filter(|r| r.name == name).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let names: Vec<_> = all.iter().map(|r| r.name).collect();
            let listed = if names.is_empty() {
                "none are registered (link a crate that provides one)".to_owned()
            } else {
                format!("registered: {}", names.join(", "))
            };
            Err(Error::config(format!("unknown {kind} '{name}'; {listed}")))
        }
        _ => Err(Error::config(format!(
            "{kind} '{name}' is registered {} times; link only one crate that provides it",
            found.len()
        ))),
    }
}

/// Build the storage backend named `name`. Errors: as [`lookup`], plus the factory's errors.
pub fn storage(name: &str, config: &PluginConfig) -> Result<Arc<dyn SnapshotBackend>> {
    match lookup(PluginKind::Storage, name)?.factory {
        Factory::Storage(f) => f(config),
        _ => unreachable_kind(name),
    }
}

/// Open the catalog named `name`. Errors: as [`lookup`], plus the factory's errors.
pub fn catalog(name: &str, config: &PluginConfig) -> Result<Arc<dyn CatalogBackend>> {
    match lookup(PluginKind::Catalog, name)?.factory {
        Factory::Catalog(f) => f(config),
        _ => unreachable_kind(name),
    }
}

/// Build the codec named `name`. Errors: as [`lookup`], plus the factory's errors.
pub fn codec(name: &str, config: &PluginConfig) -> Result<Arc<dyn ArchiveCodec>> {
    match lookup(PluginKind::Codec, name)?.factory {
        Factory::Codec(f) => f(config),
        _ => unreachable_kind(name),
    }
}

fn unreachable_kind<T>(name: &str) -> Result<T> {
    // lookup() filters by kind, so this is only reachable through a logic error here.
    Err(Error::config(format!(
        "internal error: registry returned a plugin of the wrong kind for '{name}'"
    )))
}
