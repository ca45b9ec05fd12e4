//! Ports: what the domain needs from the outside world, implemented by outer modules.

use super::FlowUpdate;

/// Internal fan-out of flow updates to whoever listens (the CLI printer, the WebSocket view,
/// request correlation). Publishing never blocks: a listener that falls behind loses updates
/// and the bus counts them.
pub trait EventBus: Send + Sync {
    fn publish(&self, update: FlowUpdate);
}
