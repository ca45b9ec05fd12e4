//! The RGW audit trail's numbers (`/metrics`, `/api/v1/status`) and health (`/readyz`): the
//! spool within its disk budget is required; RGW being down is reported, not fatal — spooling
//! through an outage is the design.

use std::sync::atomic::{AtomicU64, Ordering};

use super::stats::AuditStats;
use crate::domain::{Check, CounterSource, HealthCheck, Sample};

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl CounterSource for AuditStats {
    fn component(&self) -> &'static str {
        "audit"
    }

    fn samples(&self) -> Vec<Sample> {
        const EVENTS: &str = "Audit events: spooled (durable locally) and shipped (in RGW)";
        vec![
            Sample::counter("audit_events", EVENTS, load(&self.spooled)).with("stage", "spooled"),
            Sample::counter("audit_events", EVENTS, load(&self.shipped)).with("stage", "shipped"),
            Sample::counter(
                "audit_uploads",
                "Segment uploads to RGW, by result",
                load(&self.puts),
            )
            .with("result", "put"),
            Sample::counter(
                "audit_uploads",
                "Segment uploads to RGW, by result",
                load(&self.already_there),
            )
            .with("result", "already_there"),
            Sample::counter(
                "audit_uploads",
                "Segment uploads to RGW, by result",
                load(&self.put_failures),
            )
            .with("result", "failed"),
            Sample::counter(
                "audit_quarantined",
                "Spool segments or torn tails set aside as corrupt",
                load(&self.quarantined),
            ),
            Sample::counter(
                "audit_budget_waits",
                "Times the spool writer waited for its disk budget",
                load(&self.budget_waits),
            ),
            Sample::gauge(
                "audit_spool_bytes",
                "Bytes in the local spool now",
                load(&self.spool_bytes),
            ),
            Sample::gauge(
                "audit_spool_budget_bytes",
                "The spool's disk budget",
                load(&self.budget_bytes),
            ),
            Sample::gauge(
                "audit_backlog_segments",
                "Sealed segments waiting for upload",
                load(&self.backlog_segments),
            ),
            Sample::counter(
                "audit_spool_write_errors",
                "Spool writes (segment creations, group appends) that failed: a full or failing disk",
                load(&self.spool_write_errors),
            ),
            Sample::gauge(
                "audit_spool_failing",
                "1 while the spool's last write failed (events wait, none is acknowledged)",
                u64::from(self.spool_failing.load(Ordering::Relaxed)),
            ),
            Sample::gauge(
                "audit_rgw_up",
                "1 when the last upload attempt reached RGW",
                u64::from(!self.rgw_down.load(Ordering::Relaxed)),
            ),
        ]
    }
}

/// The spool writable and within budget (required); RGW's reachability (reported).
impl HealthCheck for AuditStats {
    fn checks(&self) -> Vec<Check> {
        let (used, budget) = (load(&self.spool_bytes), load(&self.budget_bytes));
        let down = self.rgw_down.load(Ordering::Relaxed);
        let failing = self.spool_failing.load(Ordering::Relaxed);
        vec![
            Check {
                name: "audit_spool",
                ok: used < budget && !failing,
                required: true,
                detail: if failing {
                    format!(
                        "writes fail (a full or failing disk; {} failed so far): events wait, retried; {used} of {budget} bytes used",
                        load(&self.spool_write_errors)
                    )
                } else {
                    format!("{used} of {budget} bytes used")
                },
            },
            Check {
                name: "audit_rgw",
                ok: !down,
                required: false,
                detail: if down {
                    format!(
                        "RGW unreachable: {} segments spooled until it is back",
                        load(&self.backlog_segments)
                    )
                } else {
                    "reachable".to_owned()
                },
            },
        ]
    }
}
