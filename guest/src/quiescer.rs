//! [`AgentQuiescer`]: the runtime's [`Quiescer`] implemented with [`AgentClient`], one agent
//! connection per frozen box (the connection is kept open from freeze to thaw: the agent thaws
//! when the connection that froze closes).

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use boxlite_api::{async_trait, BoxId, Error, LiveBox, Quiescer, Result};

use crate::client::{AgentClient, DEFAULT_IO_TIMEOUT};
use crate::protocol::MAX_TIMEOUT_SECS;

/// Maps a box to the host-side unix socket of its guest agent (e.g. the socket a VMM exposes
/// for guest vsock port 1024).
pub type SocketResolver = dyn Fn(&LiveBox) -> PathBuf + Send + Sync;

/// One box's agent connection: frozen (the client that froze), or a freeze still in flight.
enum Slot {
    Frozen(AgentClient),
    /// A freeze request is in flight.
    Freezing {
        /// A thaw was asked for meanwhile (the host stopped waiting): the freeze's task closes
        /// the connection (the agent then thaws) and reports failure.
        cancelled: bool,
        /// Closes the in-flight request's connection from `thaw` (set once connected).
        interrupt: Option<UnixStream>,
    },
}

/// How long `freeze` waits for an abandoned freeze's task to let go of the box's slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// A [`Quiescer`] that talks to `boxlite-guest-agent` over unix sockets.
///
/// `freeze` connects to the box's socket (from the resolver), sends
/// `{"op":"freeze","timeout_secs":T}` (T = the runtime's quiesce timeout, rounded up to whole
/// seconds, 1..=600: also the agent's watchdog) and keeps the connection; `thaw` sends
/// `{"op":"thaw"}` on it and closes it. Blocking socket I/O runs on tokio's blocking pool.
pub struct AgentQuiescer {
    resolve: Arc<SocketResolver>,
    mounts: Vec<PathBuf>,
    slots: Arc<Mutex<HashMap<BoxId, Slot>>>,
}

impl std::fmt::Debug for AgentQuiescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentQuiescer")
            .field("mounts", &self.mounts)
            .finish_non_exhaustive()
    }
}

impl AgentQuiescer {
    /// A quiescer reaching each box's agent at `resolve(box)`.
    pub fn new(resolve: impl Fn(&LiveBox) -> PathBuf + Send + Sync + 'static) -> Self {
        AgentQuiescer {
            resolve: Arc::new(resolve),
            mounts: Vec::new(),
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Ask the agent to freeze only these guest mount points (the request's `mounts`), instead
    /// of every writable mount it is allowed to freeze.
    pub fn with_mounts(mut self, mounts: Vec<PathBuf>) -> Self {
        self.mounts = mounts;
        self
    }
}

fn lock(slots: &Mutex<HashMap<BoxId, Slot>>) -> MutexGuard<'_, HashMap<BoxId, Slot>> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_box(e: Error, box_name: &str) -> Error {
    match e {
        Error::QuiesceFailed { reason, .. } => Error::QuiesceFailed {
            box_name: box_name.to_owned(),
            reason,
        },
        other => other,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::config(format!("internal error: guest agent task failed: {e}")))
}

#[async_trait]
impl Quiescer for AgentQuiescer {
    /// Errors: [`Error::QuiesceFailed`] when the agent refuses (e.g. already frozen, a mount
    /// outside its `--only` list) or a freeze is already in flight for this box;
    /// [`Error::Io`] when the socket cannot be reached or the agent does not answer in time.
    async fn freeze(&self, b: &LiveBox, timeout: Duration) -> Result<Vec<PathBuf>> {
        // An abandoned freeze (cancelled by `thaw`) lets go of the slot within moments.
        let waited_until = std::time::Instant::now() + SLOT_RELEASE_WAIT;
        loop {
            {
                let mut slots = lock(&self.slots);
                match slots.get(&b.id) {
                    None => {
                        slots.insert(
                            b.id.clone(),
                            Slot::Freezing {
                                cancelled: false,
                                interrupt: None,
                            },
                        );
                        break;
                    }
                    Some(Slot::Freezing {
                        cancelled: true, ..
                    }) if std::time::Instant::now() < waited_until => {}
                    Some(_) => {
                        return Err(Error::QuiesceFailed {
                            box_name: b.name.clone(),
                            reason: "a freeze of this box is already in progress or not yet \
                                     thawed"
                                .into(),
                        })
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = timeout
            .as_secs()
            .saturating_add(u64::from(timeout.subsec_nanos() > 0))
            .clamp(1, MAX_TIMEOUT_SECS);
        let path = (self.resolve)(b);
        let mounts = self.mounts.clone();
        let slots = self.slots.clone();
        let id = b.id.clone();
        let name = b.name.clone();
        blocking(move || {
            let abandoned = || Error::QuiesceFailed {
                box_name: name.clone(),
                reason: "the host stopped waiting for the freeze; the connection was closed \
                         (the agent thaws)"
                    .into(),
            };
            let mut client = match AgentClient::connect_with_timeout(&path, DEFAULT_IO_TIMEOUT) {
                Ok(c) => c,
                Err(e) => {
                    lock(&slots).remove(&id);
                    return Err(with_box(e, &name));
                }
            };
            {
                let mut slots = lock(&slots);
                match slots.get_mut(&id) {
                    Some(Slot::Freezing {
                        cancelled: false,
                        interrupt,
                    }) => *interrupt = client.interrupt_handle(),
                    _ => {
                        slots.remove(&id);
                        return Err(abandoned());
                    }
                }
            }
            let result = client.freeze(secs, &mounts);
            let mut slots = lock(&slots);
            let cancelled = !matches!(
                slots.get(&id),
                Some(Slot::Freezing {
                    cancelled: false,
                    ..
                })
            );
            match result {
                Ok(frozen) if !cancelled => {
                    slots.insert(id, Slot::Frozen(client));
                    Ok(frozen)
                }
                Ok(_) => {
                    slots.remove(&id);
                    drop(slots);
                    if client.thaw().is_err() {
                        client.close();
                    }
                    client.close();
                    Err(abandoned())
                }
                Err(_) if cancelled => {
                    slots.remove(&id);
                    Err(abandoned())
                }
                Err(e) => {
                    slots.remove(&id);
                    Err(with_box(e, &name))
                }
            }
        })
        .await?
    }

    /// Errors: [`Error::QuiesceFailed`] / [`Error::Io`] when the thaw request fails (the
    /// connection is closed anyway, which makes the agent thaw).
    async fn thaw(&self, b: &LiveBox) -> Result<()> {
        let client = {
            let mut slots = lock(&self.slots);
            match slots.remove(&b.id) {
                Some(Slot::Frozen(client)) => client,
                Some(Slot::Freezing { interrupt, .. }) => {
                    // The freeze is still in flight: close its connection (the request fails
                    // at once and the agent thaws whatever it froze); its task clears up.
                    if let Some(conn) = &interrupt {
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                    }
                    slots.insert(
                        b.id.clone(),
                        Slot::Freezing {
                            cancelled: true,
                            interrupt,
                        },
                    );
                    return Ok(());
                }
                None => return Ok(()),
            }
        };
        let name = b.name.clone();
        blocking(move || {
            let mut client = client;
            let result = client.thaw();
            client.close();
            result.map_err(|e| with_box(e, &name))
        })
        .await?
    }
}
