//! The wire protocol between a host and the guest agent: newline-delimited JSON, one request
//! object per line, one answer object per line (see `docs/live-snapshots.md`).
//!
//! Requests: `{"op":"freeze","timeout_secs":30,"mounts":["/mnt/a"]}` (both fields optional),
//! `{"op":"thaw"}`, `{"op":"status"}`, `{"op":"ping"}`.
//! Answers: `{"ok":true,"frozen":["/mnt/a"]}` or `{"ok":false,"error":"...","frozen":[]}`;
//! `frozen` (the currently frozen mount points, in freeze order) is in every answer.

use std::io::{self, BufRead};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest request line the agent accepts, newline excluded (64 KiB). Longer lines are
/// discarded up to the next newline and answered with an error.
pub const MAX_LINE: usize = 64 * 1024;

/// `timeout_secs` used when a freeze request does not give one.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Largest `timeout_secs` a freeze request may ask for (10 minutes).
pub const MAX_TIMEOUT_SECS: u64 = 600;

/// One request from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `sync()`, then FIFREEZE the selected mounts (deepest first) and arm the watchdog.
    Freeze {
        /// Seconds after which the agent thaws on its own (1..=600); `None`: the agent's default.
        timeout_secs: Option<u64>,
        /// Mount points to freeze; `None`: every eligible mount the agent is allowed to freeze.
        mounts: Option<Vec<PathBuf>>,
    },
    /// FITHAW everything frozen (parents first). A no-op when nothing is frozen.
    Thaw,
    /// Report what is frozen.
    Status,
    /// Liveness check.
    Ping,
}

impl Request {
    /// Parse one request line (without its newline). The error is the message sent back in the
    /// `error` field of the answer.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
        let serde_json::Value::Object(obj) = value else {
            return Err("request must be a JSON object with an \"op\" field".into());
        };
        let op = match obj.get("op") {
            Some(serde_json::Value::String(op)) => op.as_str(),
            Some(_) => return Err("\"op\" must be a string".into()),
            None => return Err("missing \"op\": expected freeze, thaw, status or ping".into()),
        };
        let allowed: &[&str] = match op {
            "freeze" => &["op", "timeout_secs", "mounts"],
            "thaw" | "status" | "ping" => &["op"],
            other => {
                return Err(format!(
                    "unknown op {other:?}: expected freeze, thaw, status or ping"
                ))
            }
        };
        if let Some(key) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("unknown field {key:?} for op {op:?}"));
        }
        Ok(match op {
            "freeze" => {
                let timeout_secs = match obj.get("timeout_secs") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| {
                        format!("timeout_secs must be a whole number of seconds, got {v}")
                    })?),
                };
                let mounts = match obj.get("mounts") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::Array(items)) => {
                        let mut mounts = Vec::with_capacity(items.len());
                        for item in items {
                            match item {
                                serde_json::Value::String(s) => mounts.push(PathBuf::from(s)),
                                other => {
                                    return Err(format!(
                                        "mounts must be an array of path strings, got {other}"
                                    ))
                                }
                            }
                        }
                        Some(mounts)
                    }
                    Some(other) => {
                        return Err(format!(
                            "mounts must be an array of path strings, got {other}"
                        ))
                    }
                };
                Request::Freeze {
                    timeout_secs,
                    mounts,
                }
            }
            "thaw" => Request::Thaw,
            "status" => Request::Status,
            _ => Request::Ping,
        })
    }

    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let value = match self {
            Request::Freeze {
                timeout_secs,
                mounts,
            } => {
                let mut obj = serde_json::Map::new();
                obj.insert("op".into(), "freeze".into());
                if let Some(t) = timeout_secs {
                    obj.insert("timeout_secs".into(), (*t).into());
                }
                if let Some(m) = mounts {
                    let paths = m
                        .iter()
                        .map(|p| serde_json::Value::String(p.to_string_lossy().into_owned()))
                        .collect();
                    obj.insert("mounts".into(), serde_json::Value::Array(paths));
                }
                serde_json::Value::Object(obj)
            }
            Request::Thaw => serde_json::json!({"op": "thaw"}),
            Request::Status => serde_json::json!({"op": "status"}),
            Request::Ping => serde_json::json!({"op": "ping"}),
        };
        let mut line = value.to_string();
        line.push('\n');
        line
    }
}

/// One answer from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The mount points frozen after the request, in freeze order (deepest first).
    #[serde(default)]
    pub frozen: Vec<PathBuf>,
    /// Why the request failed (only when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success answer.
    pub fn ok(frozen: Vec<PathBuf>) -> Response {
        Response {
            ok: true,
            frozen,
            error: None,
        }
    }

    /// A failure answer.
    pub fn err(error: impl Into<String>, frozen: Vec<PathBuf>) -> Response {
        Response {
            ok: false,
            frozen,
            error: Some(error.into()),
        }
    }

    /// The answer as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serializing a struct of bools, strings and paths cannot fail except for paths that
        // are not UTF-8; those are sent lossily rather than failing the answer.
        let value = serde_json::json!({
            "ok": self.ok,
            "frozen": self
                .frozen
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        });
        let mut value = value;
        if let (Some(e), serde_json::Value::Object(obj)) = (&self.error, &mut value) {
            obj.insert("error".into(), serde_json::Value::String(e.clone()));
        }
        let mut line = value.to_string();
        line.push('\n');
        line
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (newline stripped; a trailing `\r` is kept: JSON treats it as whitespace).
    Line(Vec<u8>),
    /// A line longer than the limit: it was read and discarded up to its newline.
    TooLong,
    /// End of stream. A final line without a newline is returned as [`Line::Line`] first.
    Eof,
}

/// Read one newline-terminated line of at most `max` bytes (newline excluded) without ever
/// buffering more than `max` bytes plus the reader's buffer.
pub fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::Eof
            } else {
                Line::Line(line)
            });
        }
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Line(line)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_request() {
        assert_eq!(Request::parse(br#"{"op":"ping"}"#), Ok(Request::Ping));
        assert_eq!(Request::parse(br#"{"op":"thaw"}"#), Ok(Request::Thaw));
        assert_eq!(Request::parse(br#"{"op":"status"}"#), Ok(Request::Status));
        assert_eq!(
            Request::parse(br#"{"op":"freeze","timeout_secs":30,"mounts":["/mnt/a"]}"#),
            Ok(Request::Freeze {
                timeout_secs: Some(30),
                mounts: Some(vec!["/mnt/a".into()])
            })
        );
        assert_eq!(
            Request::parse(br#"{"op":"freeze"}"#),
            Ok(Request::Freeze {
                timeout_secs: None,
                mounts: None
            })
        );
    }

    #[test]
    fn rejects_bad_requests_with_a_message() {
        for (line, needle) in [
            (&br#"{"op":"explode"}"#[..], "unknown op"),
            (b"not json", "bad JSON"),
            (b"", "bad JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"op":1}"#, "must be a string"),
            (br#"{"timeout_secs":1}"#, "missing"),
            (br#"{"op":"freeze","timeout_secs":-1}"#, "whole number"),
            (br#"{"op":"freeze","timeout_secs":1.5}"#, "whole number"),
            (br#"{"op":"freeze","mounts":"/a"}"#, "array"),
            (br#"{"op":"freeze","mounts":[1]}"#, "array"),
            (br#"{"op":"freeze","timeout":1}"#, "unknown field"),
            (br#"{"op":"ping","x":1}"#, "unknown field"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let err = Request::parse(line).unwrap_err();
            assert!(err.contains(needle), "{line:?}: {err}");
        }
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Ping,
            Request::Thaw,
            Request::Status,
            Request::Freeze {
                timeout_secs: Some(5),
                mounts: Some(vec!["/a b".into(), "/c\"d".into()]),
            },
            Request::Freeze {
                timeout_secs: None,
                mounts: None,
            },
        ] {
            let line = req.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Request::parse(line.trim_end().as_bytes()), Ok(req));
        }
    }

    #[test]
    fn responses_always_carry_frozen() {
        let line = Response::ok(vec![]).to_line();
        assert_eq!(line, "{\"frozen\":[],\"ok\":true}\n");
        let r = Response::err("boom", vec!["/m".into()]);
        let back: Response = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn long_lines_are_discarded_and_the_stream_stays_usable() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\n");
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\nafter\nlast");
        let mut r = io::BufReader::with_capacity(7, &input[..]);
        assert_eq!(
            read_line(&mut r, 10).unwrap(),
            Line::Line(b"short".to_vec())
        );
        assert_eq!(read_line(&mut r, 10).unwrap(), Line::TooLong);
        assert_eq!(
            read_line(&mut r, 10).unwrap(),
            Line::Line(b"after".to_vec())
        );
        assert_eq!(read_line(&mut r, 10).unwrap(), Line::Line(b"last".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Line::Eof);
        let exact = b"0123456789\n";
        let mut r = io::BufReader::with_capacity(3, &exact[..]);
        assert_eq!(
            read_line(&mut r, 10).unwrap(),
            Line::Line(b"0123456789".to_vec())
        );
    }
}
