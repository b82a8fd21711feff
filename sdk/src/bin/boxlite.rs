//! The `boxlite` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use boxlite::api::registry::{self, PluginKind};
use boxlite::{Config, ConfigSources};
use clap::{Parser, Subcommand};

/// Capture, share and move the disk state of BoxLite micro-VM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "boxlite", version, about)]
struct Cli {
    /// Home directory (default: $BOXLITE_HOME, else ~/.boxlite).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Config file (default: $BOXLITE_HOME/config.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Print the chain of causes of errors and debug logs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered storage backends, catalogs and codecs.
    Plugins,
    /// Show the resolved configuration (home, config file, selected plugins).
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if cli.verbose {
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> boxlite::api::Result<()> {
    match cli.command {
        Command::Plugins => {
            let rows: Vec<_> = [PluginKind::Storage, PluginKind::Catalog, PluginKind::Codec]
                .into_iter()
                .flat_map(|k| registry::registered(k).into_iter().map(move |r| (k, r)))
                .collect();
            if cli.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(k, r)| {
                        serde_json::json!({"kind": k, "name": r.name, "description": r.description})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if rows.is_empty() {
                println!("no plugins are registered in this build");
            } else {
                println!("{:<16} {:<12} DESCRIPTION", "KIND", "NAME");
                for (k, r) in rows {
                    println!("{:<16} {:<12} {}", k.to_string(), r.name, r.description);
                }
            }
            Ok(())
        }
        Command::Config => {
            let mut sources = ConfigSources::from_process();
            sources.home = cli.home.clone();
            sources.config_file = cli.config.clone();
            let c = Config::load(&sources)?;
            let problems = c.validate_plugins().err().map(|e| e.to_string());
            if cli.json {
                let v = serde_json::json!({
                    "home": c.home, "config_file": c.config_file, "storage": c.storage,
                    "catalog": c.catalog, "codec": c.codec,
                    "compression_level": c.compression_level,
                    "plugins": c.plugins.keys().collect::<Vec<_>>(),
                    "problem": problems,
                });
                println!("{v}");
            } else {
                println!("home:              {}", c.home.display());
                let file = c.config_file.as_ref().map(|p| p.display().to_string());
                println!("config file:       {}", file.as_deref().unwrap_or("(none)"));
                println!("storage:           {}", c.storage);
                println!("catalog:           {}", c.catalog);
                println!(
                    "codec:             {} (level {})",
                    c.codec, c.compression_level
                );
                if let Some(p) = problems {
                    println!("problem:           {p}");
                }
            }
            Ok(())
        }
    }
}
