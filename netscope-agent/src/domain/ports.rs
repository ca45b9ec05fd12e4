//! Ports: what the domain needs from the outside world, implemented by outer modules.

use std::{net::SocketAddr, time::SystemTime};

use super::{FlowUpdate, outcome::NetworkFacts};

/// Internal fan-out of flow updates to whoever listens (the CLI printer, the WebSocket view,
/// request correlation). Publishing never blocks: a listener that falls behind loses updates
/// and the bus counts them.
pub trait EventBus: Send + Sync {
    fn publish(&self, update: FlowUpdate);
}

/// The kernel's view of a connection, for the outbound side (implemented by the probe).
pub trait ConnectionObserver: Send + Sync {
    /// What the kernel saw of the connection `local → remote` during a call that started at
    /// `call_started` (counters are deltas over the call; a connection opened before it is
    /// "reused"). `matched: false` when the kernel has no such flow.
    fn facts(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        call_started: SystemTime,
    ) -> NetworkFacts;
}
