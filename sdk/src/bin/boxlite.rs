//! The `boxlite` command-line tool: a thin layer over [`boxlite::BoxliteRuntime`],
//! [`boxlite::LiteBox`] and [`boxlite::SnapshotHandle`]. Documented in `docs/cli.md`.
//!
//! Exit codes: 0 success, 1 error (one `error: ...` line on stderr, plus `caused by: ...`
//! lines with `-v`), 2 usage error (clap).

use std::error::Error as StdError;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use boxlite::api::registry::{self, PluginKind};
use boxlite::api::{
    ArchiveCodec, BoxInfo, CloneOptions, Error, ExportOptions, ObjectKind, SnapshotInfo,
    SnapshotOptions,
};
use boxlite::{BoxOptions, BoxliteRuntime, Config, ConfigSources, LiteBox};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

type CliResult<T = ()> = std::result::Result<T, Box<dyn StdError + Send + Sync>>;

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
    /// Create a stopped box from two images (qcow2 or raw; copied into the home).
    Create {
        /// Name of the new box.
        name: String,
        /// Image for the container disk.
        #[arg(long, value_name = "IMAGE")]
        disk: PathBuf,
        /// Image for the guest OS disk.
        #[arg(long, value_name = "IMAGE")]
        guest_rootfs: PathBuf,
    },
    /// List boxes.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one box: status, disk paths, snapshot count.
    Info {
        /// Box name.
        name: String,
    },
    /// Remove a box and its snapshots (clones keep working).
    #[command(visible_alias = "remove")]
    Rm {
        /// Box name.
        name: String,
        /// Remove it even if it is running.
        #[arg(long)]
        force: bool,
    },
    /// Mark a box as running (host hook: the VMM started it).
    Start {
        /// Box name.
        name: String,
    },
    /// Mark a box as stopped (host hook: the VMM stopped it).
    Stop {
        /// Box name.
        name: String,
    },
    /// Create, list, inspect, restore and remove snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Export a box to a .boxsnap archive.
    Export {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Archive file, or a directory to write `<BOX>.boxsnap` into.
        dest: PathBuf,
        /// Codec: zstd, lz4 or none (default: the configured codec).
        #[arg(long)]
        codec: Option<String>,
        /// Compression level (zstd 1..=22; default: configured level / codec default).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        level: Option<i32>,
    },
    /// Import a .boxsnap archive as a new stopped box.
    Import {
        /// Archive file.
        archive: PathBuf,
        /// Name of the new box.
        name: String,
    },
    /// Clone a box into one or more new stopped boxes (one call for all names).
    Clone {
        /// Source box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Names of the new boxes.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Clone from this snapshot instead of the current state.
        #[arg(long, value_name = "SNAP")]
        from_snapshot: Option<String>,
        /// Make standalone full copies instead of copy-on-write overlays.
        #[arg(long)]
        no_cow: bool,
    },
    /// Work with .boxsnap archive files (no home needed).
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// List the registered storage backends, catalogs and codecs.
    Plugins,
    /// Show the resolved configuration (home, config file, selected plugins).
    Config,
    /// Check the home's catalog against its files (stale operations, stuck statuses, broken
    /// chains, damaged images, unreferenced files); exit 1 while problems remain.
    Doctor {
        /// Repair what is safe to repair (roll back dead operations, reset stuck statuses,
        /// delete unreferenced files). Damaged images are only reported.
        #[arg(long)]
        fix: bool,
    },
    /// Run the conformance suite against a storage/catalog/codec combination (runs the
    /// `boxlite-conformance` program installed next to `boxlite`; see its --help).
    Conformance {
        /// Arguments for boxlite-conformance, e.g. --storage copy --catalog redb --codec lz4.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Walk all eight operations on real ext4 images in a temporary home, verifying each.
    Demo {
        /// Keep the temporary directory (home, images, archive) and print its path.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot of a box.
    Create {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Snapshot name.
        #[arg(value_name = "SNAP")]
        snap: String,
        /// Do not quiesce a running guest first.
        #[arg(long)]
        no_quiesce: bool,
        /// How long the guest may stay frozen, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        quiesce_timeout: u64,
    },
    /// List a box's snapshots, oldest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
    },
    /// Show one snapshot.
    Info {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Snapshot name.
        #[arg(value_name = "SNAP")]
        snap: String,
    },
    /// Remove a snapshot (the box must be stopped).
    #[command(visible_alias = "remove")]
    Rm {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Snapshot name.
        #[arg(value_name = "SNAP")]
        snap: String,
    },
    /// Make the box's disks equal to a snapshot (the box must be stopped).
    Restore {
        /// Box name.
        #[arg(value_name = "BOX")]
        source: String,
        /// Snapshot name.
        #[arg(value_name = "SNAP")]
        snap: String,
    },
}

#[derive(Debug, Subcommand)]
enum ArchiveCmd {
    /// Verify an archive (checksums, sizes, qcow2 headers) and print its manifest and entries.
    Inspect {
        /// Archive file.
        archive: PathBuf,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`boxlite ls | head`) ends the process quietly
    // instead of a failed print panicking.
    // SAFETY: restoring the default SIGPIPE disposition before any thread starts.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| -> Box<dyn StdError + Send + Sync> {
            format!("cannot start the async runtime: {e}").into()
        })
        .and_then(|rt| rt.block_on(run(&cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            if cli.verbose {
                let mut source = e.source();
                while let Some(s) = source {
                    eprintln!("caused by: {}", one_line(&s.to_string()));
                    source = s.source();
                }
            }
            ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: bool) {
    let level = if verbose { "debug" } else { "warn" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .try_init();
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn load_config(cli: &Cli) -> CliResult<Config> {
    let mut sources = ConfigSources::from_process();
    sources.home = cli.home.clone();
    sources.config_file = cli.config.clone();
    Ok(Config::load(&sources)?)
}

async fn open(cli: &Cli) -> CliResult<BoxliteRuntime> {
    let config = load_config(cli)?;
    let rt = BoxliteRuntime::open(config).await?;
    let rep = rt.recovery_report();
    if !rep.is_empty() {
        eprintln!(
            "recovery: rolled back {} interrupted operation(s), reset the status of {} box(es), \
             deleted {} leftover file(s) (run with -v for details)",
            rep.rolled_back.len(),
            rep.statuses_reset.len(),
            rep.deleted.len()
        );
        if cli.verbose {
            for r in &rep.rolled_back {
                eprintln!("  rolled back: {r}");
            }
            for b in &rep.statuses_reset {
                eprintln!("  status reset: {b}");
            }
            for p in &rep.deleted {
                eprintln!("  deleted: {}", p.display());
            }
        }
    }
    Ok(rt)
}

async fn get_box(rt: &BoxliteRuntime, name: &str) -> CliResult<LiteBox> {
    rt.get(name).await?.ok_or_else(|| {
        Error::NotFound {
            kind: ObjectKind::Box,
            name: name.to_owned(),
            box_name: None,
        }
        .into()
    })
}

async fn run(cli: &Cli) -> CliResult {
    match &cli.command {
        Command::Plugins => plugins(cli),
        Command::Config => show_config(cli),
        Command::Demo { keep } => demo(*keep).await,
        Command::Doctor { fix } => doctor(cli, *fix).await,
        Command::Conformance { args } => conformance(cli, args),
        Command::Archive(ArchiveCmd::Inspect { archive }) => archive_inspect(cli, archive),
        Command::Create {
            name,
            disk,
            guest_rootfs,
        } => {
            let rt = open(cli).await?;
            let opts = BoxOptions {
                disk: disk.clone(),
                guest_rootfs: guest_rootfs.clone(),
            };
            let b = rt.create(opts, name).await?;
            report_box(cli, &b.info().await?, "created box")
        }
        Command::Ls => {
            let rt = open(cli).await?;
            let boxes = rt.list().await?;
            if cli.json {
                print_json(&Value::Array(boxes.iter().map(box_json).collect()));
            } else if boxes.is_empty() {
                println!("no boxes");
            } else {
                let rows = boxes
                    .iter()
                    .map(|b| {
                        vec![
                            b.name.clone().unwrap_or_else(|| "-".into()),
                            b.status.to_string(),
                            b.snapshot_count.to_string(),
                            b.storage.clone(),
                            fmt_time(&b.created_at),
                            b.image.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "STATUS", "SNAPSHOTS", "STORAGE", "CREATED", "IMAGE"],
                    rows,
                );
            }
            Ok(())
        }
        Command::Info { name } => {
            let rt = open(cli).await?;
            let info = get_box(&rt, name).await?.info().await?;
            if cli.json {
                print_json(&box_json(&info));
            } else {
                print_box(&info);
            }
            Ok(())
        }
        Command::Rm { name, force } => {
            let rt = open(cli).await?;
            rt.remove(name, *force).await?;
            done(cli, json!({"removed": name}), format!("removed box {name}"))
        }
        Command::Start { name } => {
            let rt = open(cli).await?;
            let b = get_box(&rt, name).await?;
            b.start().await?;
            report_box(cli, &b.info().await?, "started box")
        }
        Command::Stop { name } => {
            let rt = open(cli).await?;
            let b = get_box(&rt, name).await?;
            b.stop().await?;
            report_box(cli, &b.info().await?, "stopped box")
        }
        Command::Snapshot(cmd) => snapshot(cli, cmd).await,
        Command::Export {
            source,
            dest,
            codec,
            level,
        } => {
            let rt = open(cli).await?;
            let b = get_box(&rt, source).await?;
            let config = rt.config();
            let mut opts = ExportOptions::default();
            let codec_name = codec.clone().unwrap_or_else(|| config.codec.clone());
            if codec_name == "none" {
                opts.compress(false);
            } else {
                opts.codec(codec_name.clone());
                let lvl = match level {
                    Some(l) => *l,
                    None if codec.is_none() || codec_name == config.codec => {
                        config.compression_level
                    }
                    None => registry::codec(&codec_name, &config.plugin_config(&codec_name))?
                        .default_level(),
                };
                opts.compression_level(lvl);
            }
            let pb = spinner(&format!("exporting {source}"));
            let res = b.export(dest, &opts).await;
            finish(pb);
            let path = res?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).ok();
            if cli.json {
                print_json(&json!({"archive": path, "bytes": bytes, "codec": codec_name}));
            } else {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Import { archive, name } => {
            let rt = open(cli).await?;
            let pb = spinner(&format!("importing {}", archive.display()));
            let res = rt.import(archive, name).await;
            finish(pb);
            report_box(cli, &res?.info().await?, "imported box")
        }
        Command::Clone {
            source,
            names,
            from_snapshot,
            no_cow,
        } => {
            let rt = open(cli).await?;
            let b = get_box(&rt, source).await?;
            let mut opts = CloneOptions::default();
            opts.cow(!no_cow);
            if let Some(s) = from_snapshot {
                opts.from_snapshot(s.clone());
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let clones = b.clone_many(&refs, &opts).await?;
            let mut infos = Vec::new();
            for c in &clones {
                infos.push(c.info().await?);
            }
            if cli.json {
                print_json(&Value::Array(infos.iter().map(box_json).collect()));
            } else {
                for i in &infos {
                    println!(
                        "cloned {source} -> {}",
                        i.name.as_deref().unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

async fn snapshot(cli: &Cli, cmd: &SnapshotCmd) -> CliResult {
    let rt = open(cli).await?;
    match cmd {
        SnapshotCmd::Create {
            source,
            snap,
            no_quiesce,
            quiesce_timeout,
        } => {
            let b = get_box(&rt, source).await?;
            let mut opts = SnapshotOptions::default();
            opts.quiesce(!no_quiesce)
                .quiesce_timeout_secs(*quiesce_timeout);
            let info = b.snapshot().create(snap, &opts).await?;
            if cli.json {
                print_json(&snapshot_json(&info, None));
            } else {
                println!(
                    "created snapshot {source}/{} ({})",
                    info.name,
                    human(info.size_bytes)
                );
            }
            Ok(())
        }
        SnapshotCmd::Ls { source } => {
            let b = get_box(&rt, source).await?;
            let snaps = b.snapshot().list().await?;
            if cli.json {
                print_json(&Value::Array(
                    snaps.iter().map(|s| snapshot_json(s, None)).collect(),
                ));
            } else if snaps.is_empty() {
                println!("box {source} has no snapshots");
            } else {
                let rows = snaps
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            fmt_time(&s.created_at),
                            human(s.size_bytes),
                            human(s.guest_disk_bytes),
                            human(s.container_disk_bytes),
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "CREATED", "SIZE", "GUEST-ROOTFS", "CONTAINER"],
                    rows,
                );
            }
            Ok(())
        }
        SnapshotCmd::Info { source, snap } => {
            let b = get_box(&rt, source).await?;
            let info = b
                .snapshot()
                .get(snap)
                .await?
                .ok_or_else(|| Error::NotFound {
                    kind: ObjectKind::Snapshot,
                    name: snap.clone(),
                    box_name: Some(source.clone()),
                })?;
            let disks = b.snapshot().disks(snap).await?;
            if cli.json {
                print_json(&snapshot_json(&info, Some(&disks)));
            } else {
                println!("name:               {}", info.name);
                println!("box:                {source}");
                println!("created:            {}", fmt_time(&info.created_at));
                println!("size:               {}", human(info.size_bytes));
                println!("guest-rootfs bytes: {}", human(info.guest_disk_bytes));
                println!("container bytes:    {}", human(info.container_disk_bytes));
                for (role, p) in disks.iter() {
                    println!("{:<19} {}", format!("{role} file:"), p.display());
                }
            }
            Ok(())
        }
        SnapshotCmd::Rm { source, snap } => {
            let b = get_box(&rt, source).await?;
            b.snapshot().remove(snap).await?;
            done(
                cli,
                json!({"box": source, "removed": snap}),
                format!("removed snapshot {source}/{snap}"),
            )
        }
        SnapshotCmd::Restore { source, snap } => {
            let b = get_box(&rt, source).await?;
            b.snapshot().restore(snap).await?;
            done(
                cli,
                json!({"box": source, "restored": snap}),
                format!("restored box {source} to snapshot {snap}"),
            )
        }
    }
}

fn archive_inspect(cli: &Cli, archive: &Path) -> CliResult {
    let config = load_config(cli)?;
    let mut codecs: Vec<Arc<dyn ArchiveCodec>> = Vec::new();
    for r in registry::registered(PluginKind::Codec) {
        codecs.push(registry::codec(r.name, &config.plugin_config(r.name))?);
    }
    let info =
        boxlite_archive::inspect(archive, &codecs, &boxlite_archive::ImportLimits::default())?;
    if cli.json {
        let entries: Vec<_> = info
            .entries
            .iter()
            .map(|e| json!({"name": e.name, "size": e.size, "checksum": e.checksum}))
            .collect();
        print_json(&json!({
            "archive": archive,
            "codec": info.codec,
            "archive_bytes": info.archive_bytes,
            "tar_bytes": info.tar_bytes,
            "manifest": info.manifest,
            "entries": entries,
        }));
    } else {
        let m = &info.manifest;
        println!("archive:         {}", archive.display());
        println!(
            "codec:           {} ({} compressed, {} uncompressed)",
            info.codec,
            human(info.archive_bytes),
            human(info.tar_bytes)
        );
        println!("format version:  {}", m.version);
        println!(
            "box name:        {}",
            m.box_name.as_deref().unwrap_or("(none)")
        );
        println!("image:           {}", m.image);
        println!("exported at:     {}", fmt_time(&m.exported_at));
        println!("disk format:     {}", m.format);
        println!(
            "guest-rootfs:    virtual {}, {}",
            human(m.guest_disk_virtual_size),
            m.guest_disk_checksum
        );
        println!(
            "container:       virtual {}, {}",
            human(m.container_disk_virtual_size),
            m.container_disk_checksum
        );
        println!();
        let rows = info
            .entries
            .iter()
            .map(|e| vec![e.name.clone(), human(e.size), e.checksum.clone()])
            .collect();
        print_table(&["ENTRY", "SIZE", "CHECKSUM"], rows);
        println!("verified: checksums, sizes and qcow2 headers are valid");
    }
    Ok(())
}

async fn demo(keep: bool) -> CliResult {
    let report = boxlite::demo::run(&boxlite::demo::DemoOptions { keep }).await;
    print!("{}", report.table());
    if let Some(dir) = &report.kept {
        println!("kept: {}", dir.display());
    }
    match report.failure() {
        Some(step) => Err(format!("demo step '{}' failed: {}", step.name, step.result).into()),
        None => Ok(()),
    }
}

fn plugins(cli: &Cli) -> CliResult {
    let rows: Vec<_> = [PluginKind::Storage, PluginKind::Catalog, PluginKind::Codec]
        .into_iter()
        .flat_map(|k| registry::registered(k).into_iter().map(move |r| (k, r)))
        .collect();
    if cli.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, r)| json!({"kind": k, "name": r.name, "description": r.description}))
            .collect();
        print_json(&Value::Array(v));
    } else if rows.is_empty() {
        println!("no plugins are registered in this build");
    } else {
        let rows = rows
            .into_iter()
            .map(|(k, r)| vec![k.to_string(), r.name.to_string(), r.description.to_string()])
            .collect();
        print_table(&["KIND", "NAME", "DESCRIPTION"], rows);
    }
    Ok(())
}

fn show_config(cli: &Cli) -> CliResult {
    let c = load_config(cli)?;
    let problems = c.validate_plugins().err().map(|e| e.to_string());
    if cli.json {
        print_json(&json!({
            "home": c.home, "config_file": c.config_file, "storage": c.storage,
            "catalog": c.catalog, "codec": c.codec,
            "compression_level": c.compression_level,
            "plugins": c.plugins.keys().collect::<Vec<_>>(),
            "problem": problems,
        }));
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

// ---------------------------------------------------------------------------------------
// Output helpers

fn box_json(b: &BoxInfo) -> Value {
    let disks: serde_json::Map<String, Value> = b
        .disks
        .iter()
        .map(|(role, p)| (role.as_str().to_owned(), json!(p)))
        .collect();
    json!({
        "id": b.id,
        "name": b.name,
        "status": b.status,
        "created_at": b.created_at,
        "image": b.image,
        "storage": b.storage,
        "disks": disks,
        "snapshot_count": b.snapshot_count,
    })
}

fn snapshot_json(s: &SnapshotInfo, disks: Option<&boxlite::api::DiskSet>) -> Value {
    let mut v = json!({
        "name": s.name,
        "created_at": s.created_at,
        "size_bytes": s.size_bytes,
        "guest_disk_bytes": s.guest_disk_bytes,
        "container_disk_bytes": s.container_disk_bytes,
    });
    if let Some(d) = disks {
        let m: serde_json::Map<String, Value> = d
            .iter()
            .map(|(role, p)| (role.as_str().to_owned(), json!(p)))
            .collect();
        v["disks"] = Value::Object(m);
    }
    v
}

fn print_box(b: &BoxInfo) {
    println!("name:          {}", b.name.as_deref().unwrap_or("-"));
    println!("id:            {}", b.id);
    println!("status:        {}", b.status);
    println!("created:       {}", fmt_time(&b.created_at));
    println!("image:         {}", b.image);
    println!("storage:       {}", b.storage);
    println!("snapshots:     {}", b.snapshot_count);
    for (role, p) in b.disks.iter() {
        let size = std::fs::metadata(p)
            .map(|m| human(m.len()))
            .unwrap_or_else(|_| "missing".into());
        println!("{:<14} {} ({size})", format!("{role}:"), p.display());
    }
}

fn report_box(cli: &Cli, b: &BoxInfo, verb: &str) -> CliResult {
    if cli.json {
        print_json(&box_json(b));
    } else {
        println!("{verb} {}", b.name.as_deref().unwrap_or("-"));
    }
    Ok(())
}

fn done(cli: &Cli, v: Value, text: String) -> CliResult {
    if cli.json {
        print_json(&v);
    } else {
        println!("{text}");
    }
    Ok(())
}

async fn doctor(cli: &Cli, fix: bool) -> CliResult {
    // Inspect the home as it is: no recovery on open (doctor --fix does the repairs), and no
    // home is created at a mistyped path.
    let mut sources = ConfigSources::from_process();
    sources.home = cli.home.clone();
    sources.config_file = cli.config.clone();
    let rt = BoxliteRuntime::open_for_inspection(Config::load(&sources)?).await?;
    let report = rt.doctor(fix).await?;
    let remaining = report.problems.iter().filter(|p| !p.repaired).count();
    if cli.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "checked {} root(s) and {} file(s)",
            report.roots_checked, report.files_checked
        );
        for p in &report.problems {
            let state = if p.repaired { "repaired" } else { "PROBLEM" };
            println!("{state:<9} {:<17} {}", format!("{:?}", p.kind), p.detail);
        }
        if report.problems.is_empty() {
            println!("the home is consistent");
        }
    }
    if remaining > 0 {
        let hint = if fix {
            "damaged images need a good copy (restore from a snapshot or re-import)"
        } else {
            "run `boxlite doctor --fix` to repair what is safe to repair"
        };
        return Err(format!("{remaining} problem(s) remain; {hint}").into());
    }
    Ok(())
}

/// `boxlite conformance ARGS...` runs `boxlite-conformance ARGS...` (next to this executable,
/// else on PATH) and exits with its status, like git's external subcommands.
fn conformance(cli: &Cli, args: &[String]) -> CliResult {
    let name = "boxlite-conformance";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(name));
    let mut cmd = std::process::Command::new(&program);
    cmd.args(args);
    if cli.json {
        cmd.arg("--json");
    }
    if let Some(home) = &cli.home {
        cmd.arg("--home").arg(home);
    }
    let status = cmd.status().map_err(|e| {
        format!(
            "cannot run {}: {e}; build it with `cargo build --release -p boxlite-conformance`",
            program.display()
        )
    })?;
    std::process::exit(status.code().unwrap_or(1));
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn fmt_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A spinner with elapsed time on stderr, only when stderr is a terminal (the runtime has no
/// progress callback).
fn spinner(msg: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

fn finish(pb: Option<indicatif::ProgressBar>) {
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
}
