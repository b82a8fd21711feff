//! `boxlite-guest-agent`: the in-guest quiesce agent (see `docs/live-snapshots.md`).
//!
//! `boxlite-guest-agent --listen unix:PATH|vsock:PORT [--only MOUNTPOINT]... [--default-timeout SECS]`
//!
//! On start it thaws filesystems (within `--only`) left frozen by an earlier agent process
//! that was killed; on SIGTERM/SIGINT it thaws everything, removes its unix socket and exits 0.

#[cfg(target_os = "linux")]
mod agent {
    use std::path::PathBuf;
    use std::process::ExitCode;

    use boxlite_guest::{Agent, Config, ListenAddr, Listener, DEFAULT_TIMEOUT_SECS};
    use clap::Parser;
    use nix::sys::signal::{SigSet, Signal};

    /// In-guest quiesce agent: freezes and thaws the guest's filesystems for live snapshots.
    #[derive(Debug, Parser)]
    #[command(name = "boxlite-guest-agent", version)]
    struct Cli {
        /// Where to listen: unix:PATH or vsock:PORT (any CID).
        #[arg(long, value_name = "unix:PATH|vsock:PORT")]
        listen: ListenAddr,
        /// Only ever freeze this mount point (repeatable). Default: every writable, freezable
        /// filesystem except the one holding the agent's unix socket.
        #[arg(long, value_name = "MOUNTPOINT")]
        only: Vec<PathBuf>,
        /// Watchdog timeout for freeze requests that give none (1..=600 seconds).
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
        default_timeout: u64,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        // Block the shutdown signals in every thread (threads inherit the mask) and take them
        // synchronously on a dedicated thread.
        let mut signals = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            signals.add(s);
        }
        if let Err(e) = signals.thread_block() {
            eprintln!("boxlite-guest-agent: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
        let agent = match Agent::new(Config {
            only: cli.only,
            default_timeout_secs: cli.default_timeout,
        }) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("boxlite-guest-agent: {e}");
                return ExitCode::from(2);
            }
        };
        let listener = match Listener::bind(&cli.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("boxlite-guest-agent: cannot listen on {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
        let (_, errors) = agent.thaw_leftovers();
        for e in errors {
            eprintln!("boxlite-guest-agent: startup thaw: {e}");
        }
        {
            let agent = agent.clone();
            let spawned = std::thread::Builder::new()
                .name("agent-signals".into())
                .spawn(move || {
                    if let Ok(sig) = signals.wait() {
                        eprintln!("boxlite-guest-agent: {sig}: thawing and exiting");
                    }
                    agent.shutdown();
                });
            if let Err(e) = spawned {
                eprintln!("boxlite-guest-agent: cannot start the signal thread: {e}");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("boxlite-guest-agent: listening on {}", cli.listen);
        let result = agent.serve(listener);
        // serve returns after shutdown() thawed everything.
        if let ListenAddr::Unix(path) = &cli.listen {
            let _ = std::fs::remove_file(path);
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                agent.shutdown();
                eprintln!("boxlite-guest-agent: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    agent::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("boxlite-guest-agent runs inside a Linux guest only");
    std::process::ExitCode::FAILURE
}
