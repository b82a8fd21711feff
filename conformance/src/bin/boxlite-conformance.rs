//! `boxlite-conformance` (also reachable as `boxlite conformance`): run the runtime contract
//! suite against a (storage, catalog, codec) combination and print a pass/fail table.
//!
//! Exit status: 0 when every case passed, 1 when any failed, 2 for usage errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use boxlite_conformance::runtime_suite::{cases, run_all};
use boxlite_conformance::Combo;
use clap::Parser;

/// Run the BoxLite conformance suite against one plugin combination.
#[derive(Debug, Parser)]
#[command(name = "boxlite-conformance", version, about)]
struct Args {
    /// Storage backend to test.
    #[arg(long, default_value = "qcow2")]
    storage: String,
    /// Catalog to test.
    #[arg(long, default_value = "sqlite")]
    catalog: String,
    /// Codec used by the export cases.
    #[arg(long, default_value = "zstd")]
    codec: String,
    /// Directory in which each case makes its temporary home (e.g. a btrfs mount for reflink).
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// List the case names and exit.
    #[arg(long)]
    list: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // A closed pipe (`--list | head`) ends the program quietly, like other Unix tools.
    // SAFETY: restoring the default SIGPIPE disposition before any thread starts.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let args = Args::parse();
    if args.list {
        let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
        if args.json {
            println!("{}", serde_json::json!(names));
        } else {
            for n in names {
                println!("{n}");
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut combo = Combo::new(&args.storage, &args.catalog, &args.codec);
    if let Some(dir) = &args.home {
        combo = combo.in_dir(dir);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcomes = rt.block_on(run_all(&combo, args.filter.as_deref()));
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "storage": combo.storage, "catalog": combo.catalog, "codec": combo.codec,
            "cases": outcomes.len(), "passed": outcomes.len() - failed, "failed": failed,
            "results": outcomes,
        });
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(
            out,
            "conformance: storage={} catalog={} codec={}",
            combo.storage, combo.catalog, combo.codec
        );
        let _ = writeln!(out, "{:<58} {:<6} {:>8}", "CASE", "RESULT", "MS");
        for o in &outcomes {
            let result = if o.failure.is_some() { "FAIL" } else { "pass" };
            let _ = writeln!(out, "{:<58} {:<6} {:>8}", o.name, result, o.elapsed_ms);
            if let Some(f) = &o.failure {
                let _ = writeln!(out, "    {f}");
            }
        }
        let _ = writeln!(out, "{} passed, {} failed", outcomes.len() - failed, failed);
    }
    if outcomes.is_empty() {
        eprintln!("error: no case matched the filter");
        return ExitCode::from(1);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
