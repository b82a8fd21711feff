//! Host-side client of the guest agent over a unix socket (for a VMM that exposes the guest's
//! vsock port as a unix socket on the host, or for tests that run the agent locally).

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boxlite_api::{Error, Result};

use crate::protocol::{read_line, Line, Request, Response, MAX_LINE};

/// Default time limit for sending a request and receiving its answer (freeze requests get
/// their `timeout_secs` plus [`FREEZE_GRACE`] instead).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time a freeze request's answer may take beyond its `timeout_secs`: the agent checks
/// its deadline after each blocking step and answers right after it.
pub const FREEZE_GRACE: Duration = Duration::from_secs(2);

/// A connection to a guest agent. Requests are answered in order, one at a time.
///
/// After any I/O failure or time-out the connection is closed (so the agent, seeing the
/// connection go, thaws whatever this client froze) and further calls fail: reconnect.
/// Dropping the client closes the connection, which also makes the agent thaw.
#[derive(Debug)]
pub struct AgentClient {
    stream: Option<UnixStream>,
    reader: Option<BufReader<UnixStream>>,
    path: PathBuf,
    io_timeout: Duration,
}

impl AgentClient {
    /// Connect to the agent listening on the unix socket `path`, with [`DEFAULT_IO_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<AgentClient> {
        Self::connect_with_timeout(path, DEFAULT_IO_TIMEOUT)
    }

    /// Connect with a per-request I/O time limit (clamped to at least 1 ms).
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        io_timeout: Duration,
    ) -> Result<AgentClient> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|e| Error::io(&path, e))?;
        let reader = stream
            .try_clone()
            .map(BufReader::new)
            .map_err(|e| Error::io(&path, e))?;
        Ok(AgentClient {
            stream: Some(stream),
            reader: Some(reader),
            path,
            io_timeout: io_timeout.max(Duration::from_millis(1)),
        })
    }

    /// Change the per-request I/O time limit.
    pub fn set_io_timeout(&mut self, io_timeout: Duration) {
        self.io_timeout = io_timeout.max(Duration::from_millis(1));
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Check the agent answers.
    pub fn ping(&mut self) -> Result<()> {
        self.call(&Request::Ping, self.io_timeout).map(drop)
    }

    /// The mount points frozen now, in freeze order.
    pub fn status(&mut self) -> Result<Vec<PathBuf>> {
        self.call(&Request::Status, self.io_timeout)
    }

    /// Freeze (after one `sync()` in the guest) the given mount points, or every mount the
    /// agent is allowed to freeze when `mounts` is empty. The agent thaws on its own
    /// `timeout_secs` (1..=600) after receiving the request, or when this connection closes.
    /// Returns the frozen mount points in freeze order (deepest first).
    pub fn freeze(&mut self, timeout_secs: u64, mounts: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let req = Request::Freeze {
            timeout_secs: Some(timeout_secs),
            mounts: (!mounts.is_empty()).then(|| mounts.to_vec()),
        };
        let limit =
            Duration::from_secs(timeout_secs.min(crate::protocol::MAX_TIMEOUT_SECS)) + FREEZE_GRACE;
        self.call(&req, limit.max(self.io_timeout))
    }

    /// Thaw everything the agent has frozen (a no-op when nothing is).
    pub fn thaw(&mut self) -> Result<()> {
        self.call(&Request::Thaw, self.io_timeout).map(drop)
    }

    /// Freeze like [`AgentClient::freeze`] and return a guard that thaws when dropped (on
    /// every path, including errors and panics in the capture step).
    pub fn quiesce(&mut self, timeout_secs: u64, mounts: &[PathBuf]) -> Result<Quiesced<'_>> {
        let frozen = self.freeze(timeout_secs, mounts)?;
        Ok(Quiesced {
            client: self,
            frozen,
            done: false,
        })
    }

    /// Send one request and read its answer within `limit`; the raw answer, `ok` or not.
    pub fn request(&mut self, req: &Request, limit: Duration) -> Result<Response> {
        let result = self.exchange(req, limit);
        if result.is_err() {
            self.close();
        }
        result
    }

    /// A second handle on this connection (`None` once closed), for closing it from another
    /// thread while a request blocks: `shutdown(Both)` on it makes the blocked request fail at
    /// once and the agent thaw what this connection froze.
    pub fn interrupt_handle(&self) -> Option<UnixStream> {
        self.stream.as_ref().and_then(|s| s.try_clone().ok())
    }

    /// Close the connection (the agent thaws what this client froze).
    pub fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.reader = None;
    }

    fn call(&mut self, req: &Request, limit: Duration) -> Result<Vec<PathBuf>> {
        let answer = self.request(req, limit)?;
        if answer.ok {
            Ok(answer.frozen)
        } else {
            Err(Error::QuiesceFailed {
                box_name: String::new(),
                reason: format!(
                    "guest agent refused {}: {}",
                    op_name(req),
                    answer.error.as_deref().unwrap_or("no reason given")
                ),
            })
        }
    }

    fn exchange(&mut self, req: &Request, limit: Duration) -> Result<Response> {
        let path = self.path.clone();
        let io_err = |e: io::Error| Error::io(&path, e);
        let (Some(stream), Some(reader)) = (self.stream.as_mut(), self.reader.as_mut()) else {
            return Err(io_err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection to the guest agent was closed after an earlier failure: reconnect",
            )));
        };
        stream.set_write_timeout(Some(limit)).map_err(io_err)?;
        stream.set_read_timeout(Some(limit)).map_err(io_err)?;
        stream
            .write_all(req.to_line().as_bytes())
            .map_err(|e| io_err(timeout_msg(e, req, limit)))?;
        match read_line(reader, MAX_LINE).map_err(|e| io_err(timeout_msg(e, req, limit)))? {
            Line::Line(line) => serde_json::from_slice::<Response>(&line).map_err(|e| {
                io_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("guest agent sent an unreadable answer: {e}"),
                ))
            }),
            Line::TooLong => Err(io_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "guest agent sent an answer longer than 64 KiB",
            ))),
            Line::Eof => Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "guest agent closed the connection without answering",
            ))),
        }
    }
}

fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Freeze { .. } => "freeze",
        Request::Thaw => "thaw",
        Request::Status => "status",
        Request::Ping => "ping",
    }
}

fn timeout_msg(e: io::Error, req: &Request, limit: Duration) -> io::Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "guest agent did not answer {} within {:?}; connection closed (the agent thaws)",
                op_name(req),
                limit
            ),
        )
    } else {
        e
    }
}

/// A successful freeze; thaws when dropped unless [`Quiesced::thaw`] was called. If the thaw
/// request fails, the connection is closed, which makes the agent thaw too.
#[derive(Debug)]
pub struct Quiesced<'a> {
    client: &'a mut AgentClient,
    frozen: Vec<PathBuf>,
    done: bool,
}

impl Quiesced<'_> {
    /// The frozen mount points, in freeze order.
    pub fn frozen(&self) -> &[PathBuf] {
        &self.frozen
    }

    /// Thaw now and report how it went.
    pub fn thaw(mut self) -> Result<()> {
        self.done = true;
        let result = self.client.thaw();
        if result.is_err() {
            self.client.close();
        }
        result
    }
}

impl Drop for Quiesced<'_> {
    fn drop(&mut self) {
        if !self.done && self.client.thaw().is_err() {
            self.client.close();
        }
    }
}
