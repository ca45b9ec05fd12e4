//! One call on its way through the gateway's layers ([`CallState`]: its deadline and its
//! result so far), one attempt's result, and how an attempt's error and body are read.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use super::target::TargetRuntime;
use crate::{
    clock::unix_ms,
    domain::{
        CallRequest,
        outcome::{
            AttemptError, CallOutcome, NetworkFacts, OutboundResult, RequestLine, RetryStop,
        },
    },
};

/// Responses are read to the end (the connection can then be reused) up to this size.
pub(super) const MAX_RESPONSE_BYTES: u64 = 16 << 20;

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Why an attempt did not produce a response.
pub(super) fn classify(e: &reqwest::Error) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = s.source();
    }
    use std::io::ErrorKind as K;
    match (e.is_connect(), e.is_timeout(), io_kind) {
        (true, true, _) => AttemptError::ConnectTimeout,
        (true, _, Some(K::ConnectionRefused)) => AttemptError::ConnectRefused,
        (true, _, _) => AttemptError::ConnectFailed,
        (false, true, _) => AttemptError::Timeout,
        (
            _,
            _,
            Some(K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof),
        ) => AttemptError::ConnectionReset,
        _ => AttemptError::Protocol,
    }
}

/// When a call and one of its attempts started, for the kernel's facts.
#[derive(Clone, Copy)]
pub(super) struct AttemptTimes {
    pub(super) call_started: SystemTime,
    pub(super) attempt_started_mono_ns: u64,
}

/// One call on its way through the layers: its deadline, and its result as filled in so far.
pub(super) struct CallState<'a> {
    pub(super) call: &'a CallRequest,
    pub(super) rt: &'a TargetRuntime,
    pub(super) started: Instant,
    pub(super) started_wall: SystemTime,
    pub(super) deadline: Instant,
    pub(super) result: OutboundResult,
}

impl<'a> CallState<'a> {
    /// The result before anything was tried: the deadline passed, unless a layer says
    /// otherwise.
    pub(super) fn begin(call: &'a CallRequest, rt: &'a TargetRuntime) -> Self {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let now_ms = unix_ms(started_wall);
        let left = call.request.deadline_unix_ms.saturating_sub(now_ms);
        Self {
            call,
            rt,
            started,
            started_wall,
            deadline: started + Duration::from_millis(left),
            result: OutboundResult {
                method: call.request.method.as_str(),
                request: RequestLine::of(&call.request.url),
                outcome: CallOutcome::DeadlineExceeded,
                status: None,
                attempts: Vec::new(),
                retry_stop: RetryStop::Deadline,
                started_unix_ms: now_ms,
                duration_ms: 0.0,
                request_bytes: call.request.body.len() as u64,
                response_bytes: 0,
                circuit: rt.circuit.state(started),
                network: NetworkFacts::default(),
                ctx: call.ctx.clone(),
            },
        }
    }

    /// Deadline: nothing starts once it has passed.
    pub(super) fn within_deadline(&self) -> Result<(), CallOutcome> {
        if Instant::now() >= self.deadline {
            Err(CallOutcome::DeadlineExceeded)
        } else {
            Ok(())
        }
    }

    pub(super) fn finish(mut self) -> OutboundResult {
        self.result.duration_ms = ms(self.started.elapsed());
        self.result
    }
}

/// Reads the body to the end — its bytes are part of the call, and the connection can then go
/// back to the pool — up to [`MAX_RESPONSE_BYTES`]. Returns the bytes read and why reading
/// stopped early, if it did.
pub(super) async fn read_body(response: &mut reqwest::Response) -> (u64, Option<AttemptError>) {
    let mut bytes = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                if bytes > MAX_RESPONSE_BYTES {
                    return (bytes, Some(AttemptError::Protocol));
                }
            }
            Ok(None) => return (bytes, None),
            Err(e) => return (bytes, Some(classify(&e))),
        }
    }
}

pub(super) struct AttemptResult {
    pub(super) status: Option<u16>,
    pub(super) error: Option<AttemptError>,
    pub(super) response_bytes: u64,
    pub(super) connection: Option<(SocketAddr, SocketAddr)>,
}
