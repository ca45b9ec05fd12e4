//! A local HTTP/1.1 upstream with programmable faults, for demos, tests and benchmarks. What it
//! does is chosen by the request path:
//!
//! | path | response |
//! |---|---|
//! | `/status/{code}` | that status, a short body |
//! | `/delay/{ms}` | 200 after `ms` milliseconds |
//! | `/bytes/{n}` | 200 with an `n`-byte body |
//! | `/flaky/{n}/{code}` | `code` for the first `n` requests to this path, then 200 |
//! | `/reset` | reads the request, then resets the connection (RST) |
//! | `/close` | reads the request, then closes without answering |
//! | anything else | 200 `ok` |
//!
//! A fault set with [`Upstream::set_fault`] overrides the path for every request until it is
//! cleared (a soak's scheduled 5xx bursts, resets and slow responses); dropping the upstream
//! closes its listener *and* its open connections, so that a new one on the same address
//! starts from refused connections.
//!
//! Keep-alive is supported; every request is logged with the exact bytes received and sent —
//! the last [`SERVED_KEPT`] of them, so that a long demo run does not grow without bound (and
//! `/flaky` counts at most [`PATHS_COUNTED`] distinct paths before starting over).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// One request as the upstream saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Request head and body, as read from the socket.
    pub received_bytes: u64,
    /// Response head and body, as written (0 for `/reset` and `/close`).
    pub sent_bytes: u64,
    pub peer: SocketAddr,
}

impl Served {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What every request gets while it is set, whatever its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This status (a 5xx burst).
    Status(u16),
    /// The connection reset after the request is read.
    Reset,
    /// 200, after this many milliseconds.
    Delay(u64),
}

/// Requests kept in the log at most (the oldest go first).
pub const SERVED_KEPT: usize = 100_000;
/// Distinct paths whose requests `/flaky` counts at most (then the counts start over).
pub const PATHS_COUNTED: usize = 100_000;

#[derive(Default)]
struct State {
    served: Mutex<VecDeque<Served>>,
    per_path: Mutex<HashMap<String, u64>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    fault: Mutex<Option<Fault>>,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
}

const MAX_HEAD: usize = 64 << 10;

impl Upstream {
    /// Listens on `bind` (port 0 for any) and serves until dropped.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (stop, mut stopped) = watch::channel(false);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        if let Ok((stream, peer)) = accepted {
                            let stopped = stopped.clone();
                            tokio::spawn(serve(stream, peer, Arc::clone(&st), stopped));
                        }
                    }
                }
            }
        });
        Ok(Self {
            addr,
            state,
            _stop: stop,
        })
    }

    /// Every request served so far (the last [`SERVED_KEPT`]), in order of completion.
    pub fn served(&self) -> Vec<Served> {
        self.state
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Requests whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.served()
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .count()
    }

    /// Every request gets `fault` from now on (`None`: its path chooses again).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self
            .state
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// The most requests it was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::Relaxed)
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn linger_zero(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One request as read from the socket.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Head and body bytes.
    bytes: u64,
}

/// Reads one request (head, then a `content-length` body) off the front of `buf`, reading
/// more from the socket as needed; `None` when the peer closed or sent too big a head.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or("/").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let content_length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + content_length {
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + content_length);
    Some(Request {
        method,
        path,
        headers,
        bytes: (head_end + content_length) as u64,
    })
}

/// What the fault set asks for, else what the path does: (status, body length, delay in ms,
/// connection fault).
fn behaviour(
    fault: Option<Fault>,
    path: &str,
    seen: u64,
) -> (u16, usize, u64, Option<&'static str>) {
    match fault {
        Some(Fault::Status(code)) => return (code, 16, 0, None),
        Some(Fault::Reset) => return (0, 0, 0, Some("reset")),
        Some(Fault::Delay(ms)) => return (200, 2, ms, None),
        None => {}
    }
    // The query string does not choose the behaviour (it may make paths unique).
    let route = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code] => (code.parse().unwrap_or(400), 16, 0, None),
        ["delay", ms] => (200, 2, ms.parse().unwrap_or(0), None),
        ["bytes", n] => (200, n.parse().unwrap_or(0), 0, None),
        ["flaky", n, code] if seen <= n.parse().unwrap_or(0) => {
            (code.parse().unwrap_or(503), 16, 0, None)
        }
        ["reset"] => (0, 0, 0, Some("reset")),
        ["close"] => (0, 0, 0, Some("close")),
        _ => (200, 2, 0, None),
    }
}

impl State {
    /// Requests to this path so far, this one included.
    fn seen(&self, path: &str) -> u64 {
        let mut per_path = self.per_path.lock().unwrap_or_else(PoisonError::into_inner);
        if per_path.len() >= PATHS_COUNTED && !per_path.contains_key(path) {
            per_path.clear();
        }
        let n = per_path.entry(path.to_owned()).or_default();
        *n += 1;
        *n
    }

    fn log(&self, served: Served) {
        let mut log = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() >= SERVED_KEPT {
            log.pop_front();
        }
        log.push_back(served);
    }
}

/// Serves one connection until the peer closes it, a fault ends it, or the upstream is
/// dropped (`stopped`: between requests, the connection is closed).
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let request = tokio::select! {
            request = read_request(&mut stream, &mut buf) => request,
            _ = stopped.changed() => None,
        };
        let Some(request) = request else { return };
        let now = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        state.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let set = *state.fault.lock().unwrap_or_else(PoisonError::into_inner);
        let (status, body_len, delay, fault) =
            behaviour(set, &request.path, state.seen(&request.path));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let sent = match fault {
            Some(f) => {
                if f == "reset" {
                    linger_zero(&stream);
                }
                0
            }
            None => {
                let mut response = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-length: {body_len}\r\ncontent-type: text/plain\r\n\r\n",
                    reason(status)
                )
                .into_bytes();
                response.resize(response.len() + body_len, b'x');
                if stream.write_all(&response).await.is_err() {
                    state.in_flight.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                response.len() as u64
            }
        };
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        state.log(Served {
            method: request.method,
            path: request.path,
            headers: request.headers,
            received_bytes: request.bytes,
            sent_bytes: sent,
            peer,
        });
        if fault.is_some() {
            return; // dropping the stream resets (linger 0) or closes it
        }
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
