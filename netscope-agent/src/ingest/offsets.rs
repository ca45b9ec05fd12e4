//! At-least-once bookkeeping: calls finish out of order, but a partition's committed offset
//! only ever moves past a contiguous run of finished records. After a crash, everything past
//! the committed offset is consumed again — never anything before it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
};

use crate::domain::{RecordRef, SourceLog};

#[derive(Default, Debug)]
struct Partition {
    /// Handed out, outcome not yet durable.
    pending: BTreeSet<i64>,
    /// One past the highest offset handed out.
    next: Option<i64>,
    /// Last offset committed (the next record to read after a restart).
    committed: Option<i64>,
}

#[derive(Default, Debug)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

impl OffsetTracker {
    /// A record was handed to the pipeline.
    pub fn started(&mut self, r: &RecordRef) {
        let p = self
            .partitions
            .entry((r.topic.clone(), r.partition))
            .or_default();
        p.pending.insert(r.offset);
        p.next = Some(p.next.map_or(r.offset + 1, |n| n.max(r.offset + 1)));
    }

    /// The record's outcome is durable. Unknown records (a revoked partition) are ignored.
    pub fn finished(&mut self, r: &RecordRef) {
        if let Some(p) = self.partitions.get_mut(&(r.topic.clone(), r.partition)) {
            p.pending.remove(&r.offset);
        }
    }

    /// Offsets to commit now: for each partition whose safe point moved, the first offset not
    /// yet durable (or one past the last handed out). Marks them committed.
    pub fn to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let Some(next) = p.next else { continue };
            let safe = p.pending.first().copied().unwrap_or(next);
            if p.committed != Some(safe) {
                p.committed = Some(safe);
                out.push((topic.clone(), *partition, safe));
            }
        }
        out.sort();
        out
    }

    /// Forget a partition (revoked): its unfinished records will be consumed again by its next
    /// owner, and late outcomes for them must not move anything here.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    /// Records handed out and not yet durable.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

impl SourceLog for Mutex<OffsetTracker> {
    fn finished(&self, record: &RecordRef) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finished(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(partition: i32, offset: i64) -> RecordRef {
        RecordRef {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn commits_only_past_a_contiguous_prefix() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(&r(0, o));
        }
        assert_eq!(t.to_commit(), vec![("t".into(), 0, 10)]);
        t.finished(&r(0, 12));
        t.finished(&r(0, 13));
        assert_eq!(t.to_commit(), vec![], "10 and 11 are still running");
        t.finished(&r(0, 10));
        assert_eq!(t.to_commit(), vec![("t".into(), 0, 11)]);
        t.finished(&r(0, 11));
        assert_eq!(t.to_commit(), vec![("t".into(), 0, 14)]);
        t.finished(&r(0, 14));
        assert_eq!(
            t.to_commit(),
            vec![("t".into(), 0, 15)],
            "all done: the next record"
        );
        assert_eq!(t.to_commit(), vec![], "nothing new");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forgetting_ignores_late_outcomes() {
        let mut t = OffsetTracker::default();
        t.started(&r(0, 5));
        t.started(&r(1, 100));
        t.finished(&r(1, 100));
        assert_eq!(
            t.to_commit(),
            vec![("t".into(), 0, 5), ("t".into(), 1, 101)]
        );
        t.forget("t", 0);
        t.finished(&r(0, 5));
        assert_eq!(t.to_commit(), vec![]);
        assert_eq!(t.in_flight(), 0);
    }
}
