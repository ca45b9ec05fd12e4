//! One live client's session: hello, then batches of messages from the ring, lag notices,
//! pings, and the close frame that ends it.

use std::{
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Instant,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::SinkExt as _;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast};

use super::{
    BATCH, Kind, LINGER, LiveFilter, LiveHub, LiveMsg, MAX_LAGS, PING_EVERY, SEND_TIMEOUT,
};

impl LiveHub {
    /// Serves one client until it leaves, lags too often, stops answering, or the agent stops.
    pub async fn serve(
        self: Arc<Self>,
        mut socket: WebSocket,
        filter: LiveFilter,
        _slot: OwnedSemaphorePermit,
    ) {
        self.counters.clients.fetch_add(1, Ordering::Relaxed);
        let reason = self.session(&mut socket, &filter).await;
        self.counters.clients.fetch_sub(1, Ordering::Relaxed);
        if let Some((code, why)) = reason {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(why),
            };
            let _ =
                tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
        }
    }

    /// `hello`, then the targets' last state (when the client wants resilience messages).
    async fn greet(&self, socket: &mut WebSocket, filter: &LiveFilter) -> Result<(), ()> {
        #[derive(Serialize)]
        struct Hello<'a> {
            version: &'static str,
            mode: &'static str,
            filters: &'a LiveFilter,
        }
        let hello = Hello {
            version: env!("CARGO_PKG_VERSION"),
            mode: self.mode,
            filters: filter,
        };
        let hello = serde_json::json!({"type": "hello", "hello": hello}).to_string();
        self.send(socket, Message::Text(hello.into())).await?;
        let wants_resilience = filter.types.is_empty() || filter.types.contains(&Kind::Resilience);
        let last = self
            .last_resilience
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match last {
            Some(r) if wants_resilience => self.send(socket, Message::Text(r)).await,
            _ => Ok(()),
        }
    }

    /// The session loop; returns the close frame to send, if any.
    async fn session(
        &self,
        socket: &mut WebSocket,
        filter: &LiveFilter,
    ) -> Option<(u16, &'static str)> {
        let mut rx = self.tx.subscribe();
        let mut stop = self.stop.clone();
        self.greet(socket, filter).await.ok()?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let mut lags_in_a_row = 0u32;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(m) => {
                        let sent = match self.send_batch(socket, &mut rx, filter, m).await {
                            Ok(None) => {
                                lags_in_a_row = 0;
                                Ok(())
                            }
                            Ok(Some(skipped)) => {
                                lags_in_a_row += 1;
                                self.lagged(socket, skipped, lags_in_a_row).await
                            }
                            Err(why) => Err(why),
                        };
                        if let Err(why) = sent {
                            self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            return Some((close_code::POLICY, why));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        lags_in_a_row += 1;
                        if let Err(why) = self.lagged(socket, skipped, lags_in_a_row).await {
                            self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            return Some((close_code::POLICY, why));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Some((close_code::AWAY, "agent stopping")),
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > 2 * PING_EVERY {
                        return Some((close_code::POLICY, "no answer to pings"));
                    }
                    if self.send(socket, Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
                _ = stop.changed() => return Some((close_code::AWAY, "agent stopping")),
            }
        }
    }

    /// Sends `first` and what arrives within [`LINGER`] after it (up to [`BATCH`] messages)
    /// with one flush: one wake-up and one write for many frames when the agent is busy, at
    /// the cost of at most [`LINGER`] of latency. Returns how many messages the client skipped,
    /// when it turned out to lag meanwhile.
    async fn send_batch(
        &self,
        socket: &mut WebSocket,
        rx: &mut broadcast::Receiver<Arc<LiveMsg>>,
        filter: &LiveFilter,
        first: Arc<LiveMsg>,
    ) -> Result<Option<u64>, &'static str> {
        let linger_until = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        let mut queued = 0u64;
        let mut skipped = None;
        let mut lingered = false;
        let batch = async {
            while let Some(m) = next.take() {
                if filter.wants(&m) {
                    socket.feed(Message::Text(m.text.clone())).await?;
                    queued += 1;
                }
                if queued >= BATCH {
                    break;
                }
                let mut more = rx.try_recv();
                if matches!(more, Err(broadcast::error::TryRecvError::Empty)) && !lingered {
                    // Sleep rather than wait on the ring: a wake-up per batch, not per message.
                    tokio::time::sleep_until(linger_until).await;
                    lingered = true;
                    more = rx.try_recv();
                }
                let more = match more {
                    Err(broadcast::error::TryRecvError::Empty) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Ok(m) => Ok(m),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                };
                match more {
                    Ok(m) => next = Some(m),
                    Err(broadcast::error::RecvError::Lagged(n)) => skipped = Some(n),
                    // Linger over, or closing (the next `recv` says so).
                    Err(broadcast::error::RecvError::Closed) => {}
                }
            }
            socket.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, batch).await {
            Ok(Ok(())) => {
                self.counters.sent.fetch_add(queued, Ordering::Relaxed);
                Ok(skipped)
            }
            _ => Err("too slow: messages were not taken in time"),
        }
    }

    /// Tells the client it skipped `skipped` messages; `Err` when it lags too often.
    async fn lagged(
        &self,
        socket: &mut WebSocket,
        skipped: u64,
        in_a_row: u32,
    ) -> Result<(), &'static str> {
        self.counters.lagged.fetch_add(skipped, Ordering::Relaxed);
        if in_a_row >= MAX_LAGS {
            return Err("too slow: lagged repeatedly");
        }
        let notice = format!("{{\"type\":\"lagged\",\"skipped\":{skipped}}}");
        self.send(socket, Message::Text(notice.into()))
            .await
            .map_err(|()| "too slow")
    }

    async fn send(&self, socket: &mut WebSocket, m: Message) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(m)).await {
            Ok(Ok(())) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(()),
        }
    }
}
