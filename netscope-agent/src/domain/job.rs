//! A call to execute, and the record of the source log (a Kafka partition) it came from: the
//! record is acknowledged — its offset may be committed — once the call's outcome is durable.

use super::CallRequest;

/// A record's place in its source log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A valid call, with the record it came from.
#[derive(Clone, Debug)]
pub struct Job {
    pub call: CallRequest,
    pub record: RecordRef,
    pub received_unix_ms: u64,
    /// Its record was in flight when the agent last died: it runs alone among such records,
    /// so that a second death names the one record that caused it.
    pub suspect: bool,
}
