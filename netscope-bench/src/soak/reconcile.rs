//! The soak's reconciliation: what was produced against what came out (results, dead letters,
//! audit events), every repeat explained by a kill or a rebalance, retries and circuits as the
//! policy says, no offset committed before its outcome was durable — each a check that passes
//! or fails, plus the figures (rate, RSS, CPU, pauses) the report gives.

use std::collections::{BTreeMap, BTreeSet};

use netscope_agent::{domain::audit::AuditEvent, metrics::sample_sum as metric};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    agents::{Incarnation, ProcSample},
    kafka::{Kind, Placed, Seen, kind, request_id},
    plan::{Action, TARGETS},
};

/// Something that happened during the soak, when it happened, and — for a change of the
/// group — the committed offsets just before it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub at_unix_ms: u64,
    pub action: Action,
    pub what: String,
    pub committed: Option<Vec<Option<i64>>>,
}

/// The retry budget every target has (`[targets.policy]`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Budget {
    pub ttl_s: f64,
    pub min_per_sec: f64,
    pub ratio: f64,
}

pub struct AgentRecord {
    pub node: String,
    pub incarnations: Vec<Incarnation>,
    pub samples: Vec<ProcSample>,
}

/// Once a second: messages the broker acknowledged, and how many of them were answered (a
/// result or a dead letter).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Progress {
    pub at_unix_ms: u64,
    pub produced: usize,
    pub answered: usize,
}

/// Everything the soak collected.
pub struct Evidence {
    pub progress: Vec<Progress>,
    pub placed: Vec<Placed>,
    pub results: Vec<Seen>,
    pub dlq: Vec<Seen>,
    pub unreadable: usize,
    pub audit: Vec<AuditEvent>,
    /// `audit verify` per node.
    pub verify: BTreeMap<String, Value>,
    /// The committed offsets, sampled about every second: (when, per partition).
    pub commits: Vec<(u64, Vec<Option<i64>>)>,
    pub events: Vec<Event>,
    /// The 5xx burst on svc-a, in Unix ms.
    pub burst: Option<(u64, u64)>,
    pub open_wait_ms: u64,
    /// When the held connections were open (Unix ms), if any were.
    pub live_window: Option<(u64, u64)>,
    pub budget: Budget,
    pub agents: Vec<AgentRecord>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub figures: Value,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A request's runs: how many results and audit events it has, and the earliest time either
/// was written.
#[derive(Default, Clone, Copy)]
struct Runs {
    results: usize,
    audits: usize,
    first_unix_ms: u64,
    /// When its outcome was durable: the later of its first result and its first audit event
    /// (a dead letter: its record's time).
    durable_unix_ms: u64,
}

fn runs_by_id(e: &Evidence) -> BTreeMap<&str, Runs> {
    let mut runs: BTreeMap<&str, Runs> = BTreeMap::new();
    let mut first_result: BTreeMap<&str, u64> = BTreeMap::new();
    let mut first_audit: BTreeMap<&str, u64> = BTreeMap::new();
    for r in e.results.iter().chain(&e.dlq) {
        runs.entry(&r.request_id).or_default().results += 1;
        let t = first_result.entry(&r.request_id).or_insert(u64::MAX);
        *t = (*t).min(r.timestamp_unix_ms);
    }
    for a in &e.audit {
        runs.entry(&a.context.request_id).or_default().audits += 1;
        let t = first_audit.entry(&a.context.request_id).or_insert(u64::MAX);
        *t = (*t).min(a.timestamp_unix_ms);
    }
    let dead: BTreeSet<&str> = e.dlq.iter().map(|d| d.request_id.as_str()).collect();
    for (id, r) in &mut runs {
        let res = first_result.get(id).copied().unwrap_or(u64::MAX);
        let aud = first_audit.get(id).copied();
        r.first_unix_ms = res.min(aud.unwrap_or(u64::MAX));
        r.durable_unix_ms = if dead.contains(id) {
            res
        } else {
            res.max(aud.unwrap_or(u64::MAX))
        };
    }
    runs
}

/// Why message `i` could have run more than once: the last change of the group at which its
/// offset was not yet committed and after its first run had begun (a kill loses what was in
/// flight; a rebalance hands what was not committed to the next owner). `None`: unexplained.
fn cause(e: &Evidence, placed: Placed, first_unix_ms: u64) -> Option<&Event> {
    // A first run still in flight when a group change came may deliver up to a call's worst
    // duration after it (three attempts and their backoff at most, under 10 s).
    const IN_FLIGHT_MS: u64 = 10_000;
    e.events
        .iter()
        .filter(|ev| ev.action.disrupts_group())
        .filter(|ev| first_unix_ms <= ev.at_unix_ms + IN_FLIGHT_MS)
        .filter(|ev| {
            ev.committed.as_ref().is_some_and(|c| {
                c.get(placed.partition as usize)
                    .copied()
                    .flatten()
                    .unwrap_or(0)
                    <= placed.offset
            })
        })
        .min_by_key(|ev| ev.at_unix_ms.abs_diff(first_unix_ms))
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check { name, ok, detail }
}

fn first<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    let shown: Vec<String> = items.iter().take(n).map(|i| format!("{i:?}")).collect();
    let more = items.len().saturating_sub(n);
    if more > 0 {
        format!("{} … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

pub fn reconcile(e: &Evidence) -> Report {
    let runs = runs_by_id(e);
    Report {
        checks: vec![
            accounting(e),
            repeats(e, &runs),
            audit_per_delivery(e, &runs),
            audit_verified(e),
            retries(e),
            circuit(e),
            commits_after_durable(e, &runs),
            kernel_losses(e),
        ],
        figures: figures(e),
    }
}

/// A call dead-lettered as `maybe_executed`: a POST without a key, its record uncommitted when a
/// node was killed before the dead letter was written (the agent that died had started it).
fn maybe_executed_after_a_kill(e: &Evidence, i: usize) -> bool {
    let id = request_id(i);
    let (Kind::Call { method, keyed, .. }, Some(placed)) = (kind(i), e.placed.get(i)) else {
        return false;
    };
    let Some(letter) = e
        .dlq
        .iter()
        .find(|d| d.request_id == id && d.reason.as_deref() == Some("maybe_executed"))
    else {
        return false;
    };
    !keyed
        && matches!(method, "POST" | "PATCH")
        && e.events.iter().any(|ev| {
            matches!(ev.action, Action::Kill(_))
                && ev.at_unix_ms <= letter.timestamp_unix_ms
                && ev.committed.as_ref().is_some_and(|c| {
                    c.get(placed.partition as usize)
                        .copied()
                        .flatten()
                        .unwrap_or(0)
                        <= placed.offset
                })
        })
}

/// Produced = dead letters + distinct request ids with a result. A call is in the dead-letter
/// topic only as `maybe_executed` after a kill (then it may have a result from before it too).
fn accounting(e: &Evidence) -> Check {
    let produced = e.placed.len();
    let dead: BTreeSet<&str> = e.dlq.iter().map(|d| d.request_id.as_str()).collect();
    let answered: BTreeSet<&str> = e.results.iter().map(|r| r.request_id.as_str()).collect();
    let mut missing = Vec::new();
    let mut misrouted = Vec::new();
    for i in 0..produced {
        let id = request_id(i);
        let (in_dlq, in_results) = (dead.contains(id.as_str()), answered.contains(id.as_str()));
        match (kind(i), in_dlq, in_results) {
            (_, false, false) => missing.push(id),
            (Kind::Malformed, true, false) => {}
            (Kind::Call { .. }, false, true) => {}
            (Kind::Call { .. }, true, _) if maybe_executed_after_a_kill(e, i) => {}
            _ => misrouted.push(id),
        }
    }
    let malformed = (0..produced)
        .filter(|&i| kind(i) == Kind::Malformed)
        .count();
    check(
        "every message accounted for",
        missing.is_empty() && misrouted.is_empty() && e.unreadable == 0,
        format!(
            "produced {produced} = {} dead letters + {} answered (malformed sent: {malformed}); \
             missing {}: [{}]; misrouted {}: [{}]; unreadable records {}",
            dead.len(),
            answered.len(),
            missing.len(),
            first(&missing, 10),
            misrouted.len(),
            first(&misrouted, 10),
            e.unreadable
        ),
    )
}

/// Repeats: only where a kill or a rebalance found the record uncommitted.
fn repeats(e: &Evidence, runs: &BTreeMap<&str, Runs>) -> Check {
    let mut repeats = Vec::new();
    let mut unexplained = Vec::new();
    let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
    for (i, placed) in e.placed.iter().enumerate() {
        let id = request_id(i);
        let Some(r) = runs.get(id.as_str()) else {
            continue;
        };
        if r.results.max(r.audits) <= 1 {
            continue;
        }
        match cause(e, *placed, r.first_unix_ms) {
            Some(ev) => {
                *by_cause.entry(ev.what.clone()).or_default() += 1;
                repeats.push(json!({
                    "request_id": id, "partition": placed.partition, "offset": placed.offset,
                    "results": r.results, "audit_events": r.audits, "cause": ev.what,
                }));
            }
            None => unexplained.push(format!(
                "{id} (p{} o{}: {} results, {} audit events)",
                placed.partition, placed.offset, r.results, r.audits
            )),
        }
    }
    check(
        "repeats only where a kill or rebalance found the record uncommitted",
        unexplained.is_empty(),
        format!(
            "{} requests ran more than once, by cause {by_cause:?}; unexplained {}: [{}]",
            repeats.len(),
            unexplained.len(),
            first(&unexplained, 10)
        ),
    )
}

/// One audit event per delivery.
fn audit_per_delivery(e: &Evidence, runs: &BTreeMap<&str, Runs>) -> Check {
    let mut unmatched = Vec::new();
    for (i, placed) in e.placed.iter().enumerate() {
        if kind(i) == Kind::Malformed {
            continue;
        }
        let id = request_id(i);
        let r = runs.get(id.as_str()).copied().unwrap_or_default();
        let explained = r.results.max(r.audits) > 1 && cause(e, *placed, r.first_unix_ms).is_some();
        if r.audits == 0 || (r.audits != r.results && !explained) {
            unmatched.push(format!(
                "{id}: {} results, {} audit events",
                r.results, r.audits
            ));
        }
    }
    check(
        "one audit event per delivered result",
        unmatched.is_empty(),
        format!(
            "{} audit events for {} results; unmatched {}: [{}]",
            e.audit.len(),
            e.results.len(),
            unmatched.len(),
            first(&unmatched, 10)
        ),
    )
}

/// `audit verify`: complete, per node.
fn audit_verified(e: &Evidence) -> Check {
    let mut verify_detail = Vec::new();
    let mut verify_ok = !e.verify.is_empty();
    for (node, report) in &e.verify {
        let n = &report["nodes"][node];
        let stored = e.audit.iter().filter(|a| &a.node == node).count() as u64;
        let ok = n["gaps"] == json!([])
            && n["duplicates"] == json!([])
            && n["first_sequence"] == json!(1)
            && n["events"].as_u64() == Some(stored);
        verify_ok &= ok;
        verify_detail.push(format!(
            "{node}: {} events, sequences {}–{}, gaps {}, duplicates {}",
            n["events"], n["first_sequence"], n["last_sequence"], n["gaps"], n["duplicates"]
        ));
    }
    check(
        "audit verify: no gap, no duplicate sequence",
        verify_ok,
        verify_detail.join("; "),
    )
}

/// Retries: never a non-idempotent call without a key; within each budget.
fn retries(e: &Evidence) -> Check {
    let mut retried_unsafe = Vec::new();
    let mut retries: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for a in &e.audit {
        let attempts = a.outcome.attempts.len() as u64;
        let unsafe_call = a.request.method == "POST" && a.context.idempotency_key.is_none();
        if unsafe_call && attempts > 1 {
            retried_unsafe.push(a.context.request_id.clone());
        }
        let entry = retries
            .entry((a.node.clone(), a.context.target.clone()))
            .or_default();
        entry.0 += 1;
        entry.1 += attempts.saturating_sub(1);
    }
    let mut over_budget = Vec::new();
    let mut budget_detail = Vec::new();
    for ((node, target), (calls, retried)) in &retries {
        let alive_s: f64 = e
            .agents
            .iter()
            .filter(|a| &a.node == node)
            .flat_map(|a| &a.incarnations)
            .map(|i| {
                let end = i.ended_unix_ms.unwrap_or(i.started_unix_ms);
                // Each incarnation's budget starts with its reserve, then refills every ttl.
                (end.saturating_sub(i.started_unix_ms) as f64 / 1000.0) + e.budget.ttl_s
            })
            .sum();
        let bound = e.budget.ratio * *calls as f64
            + e.budget.min_per_sec * e.budget.ttl_s * (alive_s / e.budget.ttl_s).ceil();
        budget_detail.push(format!("{node}/{target}: {retried} retries ≤ {bound:.0}"));
        if *retried as f64 > bound {
            over_budget.push(format!("{node}/{target}"));
        }
    }
    check(
        "retries within budget; none of a non-idempotent call without a key",
        retried_unsafe.is_empty() && over_budget.is_empty(),
        format!(
            "{}; retried without a key: [{}]; over budget: [{}]",
            budget_detail.join(", "),
            first(&retried_unsafe, 10),
            over_budget.join(", ")
        ),
    )
}

/// The circuit of svc-a opened during its 5xx burst and closed after it.
fn circuit(e: &Evidence) -> Check {
    match e.burst {
        Some((on, off)) => {
            let svc_a: Vec<&AuditEvent> = e
                .audit
                .iter()
                .filter(|a| a.context.target == TARGETS[0])
                .collect();
            let opened = svc_a
                .iter()
                .filter(|a| {
                    a.outcome.outcome == "circuit_open"
                        && (on..=off + e.open_wait_ms).contains(&a.outcome.started_unix_ms)
                })
                .count();
            let settled = off + e.open_wait_ms + 10_000;
            let open_later = svc_a
                .iter()
                .filter(|a| {
                    a.outcome.outcome == "circuit_open" && a.outcome.started_unix_ms > settled
                })
                .count();
            let closed_ok = svc_a
                .iter()
                .filter(|a| {
                    a.outcome.started_unix_ms > off
                        && a.outcome.circuit == "closed"
                        && a.outcome.status == Some(200)
                })
                .count();
            check(
                "svc-a's circuit opened in its 5xx burst and closed after it",
                opened > 0 && closed_ok > 0 && open_later == 0,
                format!(
                    "{opened} calls refused by the open circuit during the burst; {closed_ok} \
                     answered 200 through a closed circuit after it; {open_later} refused \
                     more than 10 s after it settled"
                ),
            )
        }
        None => check(
            "svc-a's circuit opened in its 5xx burst and closed after it",
            false,
            "no burst was scheduled".into(),
        ),
    }
}

/// No record committed before its outcome was durable.
fn commits_after_durable(e: &Evidence, runs: &BTreeMap<&str, Runs>) -> Check {
    let mut early = Vec::new();
    for (i, placed) in e.placed.iter().enumerate() {
        let p = placed.partition as usize;
        let Some((committed_at, _)) = e.commits.iter().find(|(_, c)| {
            c.get(p)
                .copied()
                .flatten()
                .is_some_and(|c| c > placed.offset)
        }) else {
            continue; // never seen committed (the end of the run): nothing to hold against it
        };
        let id = request_id(i);
        let durable = runs
            .get(id.as_str())
            .map_or(u64::MAX, |r| r.durable_unix_ms);
        if durable > *committed_at {
            early.push(format!(
                "{id} (p{} o{}): committed by {committed_at}, durable at {}",
                placed.partition,
                placed.offset,
                if durable == u64::MAX {
                    "never".to_owned()
                } else {
                    durable.to_string()
                }
            ));
        }
    }
    check(
        "no offset committed before its outcome was durable",
        early.is_empty() && e.commits.len() > 1,
        format!(
            "{} committed-offset samples held against the results, dead letters and audit \
             trail; committed early: {} [{}]",
            e.commits.len(),
            early.len(),
            first(&early, 5)
        ),
    )
}

/// The kernel lost nothing.
fn kernel_losses(e: &Evidence) -> Check {
    let mut lost = BTreeMap::new();
    for a in &e.agents {
        for i in &a.incarnations {
            let m = &i.metrics;
            for (what, value) in [
                (
                    "ring drops",
                    metric(
                        m,
                        "netscope_kernel_ring_events_total",
                        &[("result", "dropped")],
                    ),
                ),
                (
                    "socket table full",
                    metric(m, "netscope_kernel_sock_table_full_total", &[]),
                ),
                (
                    "flow table evictions",
                    metric(
                        m,
                        "netscope_flow_table_total",
                        &[("action", "evicted_for_room")],
                    ),
                ),
                (
                    "flow table rejections",
                    metric(
                        m,
                        "netscope_flow_table_total",
                        &[("action", "rejected_full")],
                    ),
                ),
            ] {
                *lost.entry(what).or_insert(0.0) += value;
            }
        }
    }
    let scraped = e
        .agents
        .iter()
        .flat_map(|a| &a.incarnations)
        .filter(|i| !i.metrics.is_empty())
        .count();
    check(
        "the kernel's ring and the flow table lost nothing",
        scraped > 0 && lost.values().all(|v| *v == 0.0),
        format!("{lost:?} over {scraped} agent runs' last scrape"),
    )
}

/// The longest stretch in which messages waited but none was answered (from the soak's
/// once-a-second progress samples), what happened last before it began, and what happened
/// during it.
fn longest_pause(e: &Evidence) -> Value {
    let mut longest: Option<(u64, u64)> = None; // (from, to)
    let mut since: Option<(u64, usize)> = None; // the last progress: (when, answered)
    for p in &e.progress {
        let Some((from, answered)) = since else {
            since = Some((p.at_unix_ms, p.answered));
            continue;
        };
        if p.answered > answered {
            if longest.is_none_or(|(a, b)| p.at_unix_ms - from > b - a) {
                longest = Some((from, p.at_unix_ms));
            }
            since = Some((p.at_unix_ms, p.answered));
        } else if p.produced <= p.answered {
            since = Some((p.at_unix_ms, p.answered)); // idle: nothing waits
        }
    }
    let Some((from, to)) = longest else {
        return json!({ "ms": 0 });
    };
    let began_after = e
        .events
        .iter()
        .filter(|ev| ev.at_unix_ms <= from + 1_000)
        .max_by_key(|ev| ev.at_unix_ms)
        .map(|ev| ev.what.clone());
    let during: Vec<String> = e
        .events
        .iter()
        .filter(|ev| ev.at_unix_ms > from + 1_000 && ev.at_unix_ms < to)
        .map(|ev| ev.what.clone())
        .collect();
    json!({ "ms": to - from, "from_unix_ms": from, "began_after": began_after, "during": during })
}

fn figures(e: &Evidence) -> Value {
    let mut times: Vec<u64> = e.results.iter().map(|r| r.timestamp_unix_ms).collect();
    times.sort_unstable();
    let span_s = match (times.first(), times.last()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    let distinct: BTreeSet<&str> = e.results.iter().map(|r| r.request_id.as_str()).collect();
    let cpu_ms: u64 = e
        .agents
        .iter()
        .flat_map(|a| &a.incarnations)
        .map(|i| i.cpu_ms)
        .sum();
    let mut agents = Vec::new();
    for a in &e.agents {
        let mut rss: Vec<u64> = a.samples.iter().map(|s| s.rss_kib).collect();
        let peak = rss.iter().copied().max().unwrap_or(0);
        // Steady: the median of the second half of the samples (warm caches, pools full).
        let half = rss.split_off(rss.len() / 2);
        let mut steady = half;
        steady.sort_unstable();
        let steady = steady.get(steady.len() / 2).copied().unwrap_or(0);
        // While the connections were held: the most flows seen, and the RSS then.
        let live: Vec<&ProcSample> = e
            .live_window
            .map(|(from, to)| {
                a.samples
                    .iter()
                    .filter(|s| (from..=to).contains(&s.at_unix_ms))
                    .collect()
            })
            .unwrap_or_default();
        let live_flows = live.iter().filter_map(|s| s.flows).max();
        let live_rss = live.iter().map(|s| s.rss_kib).max();
        agents.push(json!({
            "node": a.node,
            "live_flows_max": live_flows,
            "rss_peak_with_live_flows_mib": live_rss.map(|k| k as f64 / 1024.0),
            "runs": a.incarnations.len(),
            "ended_by": a.incarnations.iter().map(|i| i.ended_by.clone()).collect::<Vec<_>>(),
            "rss_peak_mib": peak as f64 / 1024.0,
            "rss_steady_mib": steady as f64 / 1024.0,
            "cpu_s": a.incarnations.iter().map(|i| i.cpu_ms).sum::<u64>() as f64 / 1000.0,
        }));
    }
    json!({
        "messages_produced": e.placed.len(),
        "results": e.results.len(),
        "distinct_results": distinct.len(),
        "dead_letters": e.dlq.len(),
        "audit_events": e.audit.len(),
        "messages_per_s": if span_s > 0.0 { distinct.len() as f64 / span_s } else { 0.0 },
        "cpu_ms_per_1000_calls": if distinct.is_empty() { 0.0 } else { cpu_ms as f64 * 1000.0 / distinct.len() as f64 },
        "longest_pause": longest_pause(e),
        "agents": agents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(partition: i32, offset: i64) -> Placed {
        Placed { partition, offset }
    }

    fn evidence(events: Vec<Event>) -> Evidence {
        Evidence {
            progress: Vec::new(),
            placed: Vec::new(),
            results: Vec::new(),
            dlq: Vec::new(),
            unreadable: 0,
            audit: Vec::new(),
            verify: BTreeMap::new(),
            commits: Vec::new(),
            events,
            burst: None,
            open_wait_ms: 0,
            live_window: None,
            budget: Budget {
                ttl_s: 10.0,
                min_per_sec: 5.0,
                ratio: 0.2,
            },
            agents: Vec::new(),
        }
    }

    fn kill_at(at: u64, committed: i64) -> Event {
        Event {
            at_unix_ms: at,
            action: Action::Kill(0),
            what: format!("kill at {at}"),
            committed: Some(vec![Some(committed), Some(0)]),
        }
    }

    #[test]
    fn a_call_is_dead_lettered_only_as_maybe_executed_a_post_without_a_key_after_a_kill() {
        // The first POST without a key of the mix, and the first GET.
        let post = (0..1000)
            .find(|&i| {
                kind(i)
                    == Kind::Call {
                        method: "POST",
                        target: 0,
                        keyed: false,
                    }
            })
            .or_else(|| {
                (0..1000).find(|&i| {
                    matches!(
                        kind(i),
                        Kind::Call {
                            method: "POST",
                            keyed: false,
                            ..
                        }
                    )
                })
            })
            .unwrap();
        let get = (0..1000)
            .find(|&i| matches!(kind(i), Kind::Call { method: "GET", .. }))
            .unwrap();
        let mut e = evidence(vec![kill_at(100_000, 0)]);
        e.placed = vec![
            Placed {
                partition: 0,
                offset: 0
            };
            post.max(get) + 1
        ];
        let letter = |i: usize, at: u64| Seen {
            request_id: request_id(i),
            timestamp_unix_ms: at,
            reason: Some("maybe_executed".into()),
        };
        e.dlq = vec![letter(post, 150_000)];
        assert!(maybe_executed_after_a_kill(&e, post));
        e.dlq = vec![letter(post, 50_000)];
        assert!(!maybe_executed_after_a_kill(&e, post), "before any kill");
        e.dlq = vec![letter(get, 150_000)];
        assert!(
            !maybe_executed_after_a_kill(&e, get),
            "a GET is run again, never dead-lettered"
        );
    }

    #[test]
    fn a_repeat_is_explained_only_by_a_group_change_that_found_it_uncommitted() {
        let e = evidence(vec![kill_at(100_000, 50), kill_at(200_000, 80)]);
        // Uncommitted at the first kill, first run before it.
        assert_eq!(
            cause(&e, placed(0, 60), 99_000).unwrap().what,
            "kill at 100000"
        );
        // Uncommitted at the second kill only.
        assert_eq!(
            cause(&e, placed(0, 90), 195_000).unwrap().what,
            "kill at 200000"
        );
        // Committed before either: no excuse.
        assert!(cause(&e, placed(0, 10), 99_000).is_none());
        // First run long after the last change: no excuse either.
        assert!(cause(&e, placed(0, 90), 300_000).is_none());
    }

    #[test]
    fn the_longest_pause_names_what_came_just_before_its_end() {
        let mut e = evidence(vec![kill_at(1_500, 0), kill_at(4_000, 0)]);
        let at = |t, produced, answered| Progress {
            at_unix_ms: t,
            produced,
            answered,
        };
        e.progress = vec![
            at(1_000, 10, 5),
            at(2_000, 20, 6),
            at(3_000, 30, 6),
            at(4_000, 40, 6),
            at(5_000, 50, 6),
            at(6_000, 60, 30),
            // Nothing waits: idle, not a pause.
            at(7_000, 60, 60),
            at(9_000, 60, 60),
            at(20_000, 60, 60),
        ];
        let pause = longest_pause(&e);
        assert_eq!(pause["ms"], 4_000);
        assert_eq!(pause["began_after"], "kill at 1500");
        assert_eq!(pause["during"], json!(["kill at 4000"]));
    }
}
