//! Runtime configuration: home resolution, the TOML config file and environment overrides
//! (DESIGN.md section 4).
//!
//! Precedence, lowest to highest: built-in defaults, the config file, environment variables,
//! explicit overrides (CLI flags / builder calls).
//!
//! * Home: explicit `--home` > `BOXLITE_HOME` > `$HOME/.boxlite`.
//! * Config file: explicit `--config` (must exist) > `$BOXLITE_HOME/config.toml` (if present).
//! * Environment: `BOXLITE_STORAGE`, `BOXLITE_CATALOG`, `BOXLITE_CODEC`.
//!
//! File format (every key optional; unknown keys are errors):
//!
//! ```toml
//! storage = "qcow2"          # or "auto" (reflink where it works, else qcow2), "reflink", "copy"
//! catalog = "sqlite"         # or "redb"
//! codec = "zstd"             # or "lz4", "none"
//! compression_level = 3      # codec level for exports
//!
//! [plugin.qcow2]             # settings handed to the plugin named "qcow2"
//! max_chain_depth = 64
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use boxlite_api::registry::{self, PluginKind};
use boxlite_api::{Error, PluginConfig, Result};
use serde::Deserialize;

/// Environment variable naming the home directory.
pub const ENV_HOME: &str = "BOXLITE_HOME";
/// Environment variable selecting the storage backend.
pub const ENV_STORAGE: &str = "BOXLITE_STORAGE";
/// Environment variable selecting the catalog backend.
pub const ENV_CATALOG: &str = "BOXLITE_CATALOG";
/// Environment variable selecting the archive codec.
pub const ENV_CODEC: &str = "BOXLITE_CODEC";
/// File name of the config file inside the home.
pub const CONFIG_FILE_NAME: &str = "config.toml";
/// The storage value that picks reflink where its probe passes, else qcow2.
pub const STORAGE_AUTO: &str = "auto";

/// The resolved configuration of a runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute home directory.
    pub home: PathBuf,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Storage backend name, or [`STORAGE_AUTO`]. Default "qcow2".
    pub storage: String,
    /// Catalog backend name. Default "sqlite".
    pub catalog: String,
    /// Archive codec name for exports. Default "zstd".
    pub codec: String,
    /// Codec level for exports. Default 3.
    pub compression_level: i32,
    /// Per-plugin settings tables (`[plugin.<name>]`), keyed by plugin name.
    pub plugins: BTreeMap<String, toml::Table>,
    /// True when no flag, variable or file chose the storage backend: an existing home then
    /// keeps the backend it was created with instead of refusing the built-in default.
    pub storage_is_default: bool,
    /// Like [`Config::storage_is_default`], for the catalog.
    pub catalog_is_default: bool,
}

/// The config file's shape. Every field optional; unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    storage: Option<String>,
    catalog: Option<String>,
    codec: Option<String>,
    compression_level: Option<i32>,
    #[serde(default)]
    plugin: BTreeMap<String, toml::Table>,
}

/// Where configuration comes from. Tests pass their own environment; hosts use
/// [`ConfigSources::from_process`].
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Explicit home (`--home`), highest precedence.
    pub home: Option<PathBuf>,
    /// Explicit config file (`--config`); it must exist.
    pub config_file: Option<PathBuf>,
    /// Environment variables (name -> value) consulted for `BOXLITE_*` and `HOME`.
    pub env: BTreeMap<String, String>,
    /// Explicit storage override (highest precedence).
    pub storage: Option<String>,
    /// Explicit catalog override.
    pub catalog: Option<String>,
    /// Explicit codec override.
    pub codec: Option<String>,
}

impl ConfigSources {
    /// Sources with the current process environment (`HOME` and `BOXLITE_*` variables).
    pub fn from_process() -> Self {
        let env = std::env::vars()
            .filter(|(k, _)| k == "HOME" || k.starts_with("BOXLITE_"))
            .collect();
        ConfigSources {
            env,
            ..Default::default()
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Resolve the configuration from `sources`.
    ///
    /// Errors: [`Error::Config`] when no home can be determined, when an explicit config file is
    /// missing, when the file is not valid TOML or has unknown keys (the message names the key
    /// and the file), or when a value is empty. Plugin names are checked by
    /// [`Config::validate_plugins`], which needs the plugins to be linked.
    pub fn load(sources: &ConfigSources) -> Result<Config> {
        let home = resolve_home(sources)?;
        let (config_file, file) = match &sources.config_file {
            Some(path) => (Some(path.clone()), read_file(path)?),
            None => {
                let path = home.join(CONFIG_FILE_NAME);
                if path.is_file() {
                    let parsed = read_file(&path)?;
                    (Some(path), parsed)
                } else {
                    (None, FileConfig::default())
                }
            }
        };
        let pick = |explicit: &Option<String>, env: &str, file: Option<String>, default: &str| {
            explicit
                .clone()
                .or_else(|| sources.var(env).map(str::to_owned))
                .or(file)
                .unwrap_or_else(|| default.to_owned())
        };
        let storage_is_default = sources.storage.is_none()
            && sources.var(ENV_STORAGE).is_none()
            && file.storage.is_none();
        let catalog_is_default = sources.catalog.is_none()
            && sources.var(ENV_CATALOG).is_none()
            && file.catalog.is_none();
        let config = Config {
            storage_is_default,
            catalog_is_default,
            storage: pick(&sources.storage, ENV_STORAGE, file.storage, "qcow2"),
            catalog: pick(&sources.catalog, ENV_CATALOG, file.catalog, "sqlite"),
            codec: pick(&sources.codec, ENV_CODEC, file.codec, "zstd"),
            compression_level: file.compression_level.unwrap_or(3),
            plugins: file.plugin,
            home,
            config_file,
        };
        for (key, value) in [
            ("storage", &config.storage),
            ("catalog", &config.catalog),
            ("codec", &config.codec),
        ] {
            if value.trim().is_empty() {
                return Err(config.error(format!("'{key}' must not be empty")));
            }
        }
        Ok(config)
    }

    /// Check every plugin name against the registry: the selected storage (or `auto`), catalog
    /// and codec, and every `[plugin.<name>]` section.
    ///
    /// Errors: [`Error::Config`] naming the unknown plugin and listing the registered ones.
    pub fn validate_plugins(&self) -> Result<()> {
        if self.storage != STORAGE_AUTO {
            registry::lookup(PluginKind::Storage, &self.storage).map_err(|e| self.wrap(e))?;
        }
        registry::lookup(PluginKind::Catalog, &self.catalog).map_err(|e| self.wrap(e))?;
        registry::lookup(PluginKind::Codec, &self.codec).map_err(|e| self.wrap(e))?;
        for name in self.plugins.keys() {
            let known = [PluginKind::Storage, PluginKind::Catalog, PluginKind::Codec]
                .into_iter()
                .any(|k| registry::lookup(k, name).is_ok());
            if !known {
                let all: Vec<_> = [PluginKind::Storage, PluginKind::Catalog, PluginKind::Codec]
                    .into_iter()
                    .flat_map(registry::registered)
                    .map(|r| r.name)
                    .collect();
                return Err(self.error(format!(
                    "[plugin.{name}] configures a plugin that is not registered; registered: {}",
                    if all.is_empty() {
                        "none".to_owned()
                    } else {
                        all.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// The [`PluginConfig`] handed to the factory of plugin `name`.
    pub fn plugin_config(&self, name: &str) -> PluginConfig {
        PluginConfig {
            home: self.home.clone(),
            settings: self.plugins.get(name).cloned().unwrap_or_default(),
        }
    }

    fn error(&self, detail: String) -> Error {
        Error::Config {
            path: self.config_file.clone(),
            detail,
        }
    }

    fn wrap(&self, e: Error) -> Error {
        match e {
            Error::Config { path: None, detail } => self.error(detail),
            other => other,
        }
    }
}

fn resolve_home(sources: &ConfigSources) -> Result<PathBuf> {
    let home = match (&sources.home, sources.var(ENV_HOME), sources.var("HOME")) {
        (Some(h), _, _) => h.clone(),
        (None, Some(h), _) => PathBuf::from(h),
        (None, None, Some(user_home)) => Path::new(user_home).join(".boxlite"),
        (None, None, None) => {
            return Err(Error::config(
                "cannot find a home directory: set BOXLITE_HOME or pass --home DIR",
            ))
        }
    };
    if home.is_absolute() {
        Ok(home)
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        Ok(cwd.join(home))
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        path: Some(path.to_owned()),
        detail: format!("cannot read the config file: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| Error::Config {
        path: Some(path.to_owned()),
        detail: format!("invalid config file: {}", e.to_string().trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)]) -> ConfigSources {
        ConfigSources {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_with_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())])).unwrap();
        assert_eq!(c.home, dir.path());
        assert_eq!(
            (c.storage.as_str(), c.catalog.as_str(), c.codec.as_str()),
            ("qcow2", "sqlite", "zstd")
        );
        assert_eq!(c.compression_level, 3);
        assert_eq!(c.config_file, None);
    }

    #[test]
    fn home_precedence_flag_over_env_over_user_home() {
        let s = sources(&[("HOME", "/home/u")]);
        assert_eq!(
            Config::load(&s).unwrap().home,
            Path::new("/home/u/.boxlite")
        );
        let s = sources(&[("HOME", "/home/u"), ("BOXLITE_HOME", "/srv/bl")]);
        assert_eq!(Config::load(&s).unwrap().home, Path::new("/srv/bl"));
        let mut s = s;
        s.home = Some("/flag".into());
        assert_eq!(Config::load(&s).unwrap().home, Path::new("/flag"));
        let err = Config::load(&sources(&[])).unwrap_err();
        assert!(err.to_string().contains("BOXLITE_HOME"), "{err}");
    }

    #[test]
    fn file_then_env_then_explicit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "storage = \"copy\"\ncatalog = \"redb\"\ncodec = \"lz4\"\ncompression_level = 7\n\
             [plugin.qcow2]\nmax_chain_depth = 9\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let c = Config::load(&sources(&[("BOXLITE_HOME", home)])).unwrap();
        assert_eq!(
            (c.storage.as_str(), c.catalog.as_str(), c.codec.as_str()),
            ("copy", "redb", "lz4")
        );
        assert_eq!(c.compression_level, 7);
        assert_eq!(
            c.config_file.as_deref(),
            Some(dir.path().join("config.toml").as_path())
        );
        let pc = c.plugin_config("qcow2");
        assert_eq!(pc.settings["max_chain_depth"].as_integer(), Some(9));
        assert_eq!(pc.home, dir.path());

        let mut s = sources(&[
            ("BOXLITE_HOME", home),
            ("BOXLITE_STORAGE", "reflink"),
            ("BOXLITE_CODEC", "none"),
        ]);
        let c = Config::load(&s).unwrap();
        assert_eq!(
            (c.storage.as_str(), c.catalog.as_str(), c.codec.as_str()),
            ("reflink", "redb", "none")
        );
        s.storage = Some("auto".into());
        assert_eq!(Config::load(&s).unwrap().storage, "auto");
    }

    #[test]
    fn explicit_config_file_must_exist_and_wins_over_home_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "storage = \"copy\"\n").unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "storage = \"reflink\"\n").unwrap();
        let mut s = sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())]);
        s.config_file = Some(other.clone());
        assert_eq!(Config::load(&s).unwrap().storage, "reflink");
        s.config_file = Some(dir.path().join("missing.toml"));
        let err = Config::load(&s).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "storage = \"qcow2\"\nstorgae = \"copy\"\n").unwrap();
        let err =
            Config::load(&sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }));
        assert!(
            msg.contains("storgae") && msg.contains("config.toml"),
            "{msg}"
        );

        std::fs::write(&path, "compression_level = \"high\"\n").unwrap();
        let msg = Config::load(&sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("compression_level"), "{msg}");

        std::fs::write(&path, "codec = \"\"\n").unwrap();
        let msg = Config::load(&sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'codec' must not be empty"), "{msg}");
    }

    #[test]
    fn unknown_plugin_names_list_the_registered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sources(&[("BOXLITE_HOME", dir.path().to_str().unwrap())]);
        s.storage = Some("zfs".into());
        let err = Config::load(&s).unwrap().validate_plugins().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }));
        assert!(msg.contains("unknown storage backend 'zfs'"), "{msg}");
        assert!(msg.contains("registered"), "{msg}");
    }
}
