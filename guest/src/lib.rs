//! In-guest quiesce agent and its host-side client.
//!
//! The agent (binary `boxlite-guest-agent`, or [`serve`] in-process) runs inside a box's guest
//! and, on request, flushes (`sync()`) and FIFREEZEs the guest's writable filesystems so that
//! the host can capture an application-consistent snapshot of a running box; it thaws on
//! request, when its watchdog expires, when the client that froze disconnects, and on
//! SIGTERM/SIGINT. [`AgentClient`] is the host side. The wire protocol is in [`protocol`] and
//! `docs/live-snapshots.md`.
//!
//! The agent is Linux-only (FIFREEZE, AF_VSOCK); the protocol and the client build everywhere.

#![warn(missing_docs)]

pub mod client;
#[cfg(target_os = "linux")]
pub mod mounts;
pub mod protocol;
pub mod quiescer;
#[cfg(target_os = "linux")]
pub mod server;

pub use client::{AgentClient, Quiesced, DEFAULT_IO_TIMEOUT};
pub use protocol::{Request, Response, DEFAULT_TIMEOUT_SECS, MAX_LINE, MAX_TIMEOUT_SECS};
pub use quiescer::AgentQuiescer;
#[cfg(target_os = "linux")]
pub use server::{serve, Agent, Config, ListenAddr, Listener};
