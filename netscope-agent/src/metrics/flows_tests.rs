use super::*;
use crate::{
    domain::{FlowState, flow::sample_flow},
    metrics::MetricsBuilder,
};

fn labels(comm_budget: usize) -> FlowLabels {
    FlowLabels {
        dest: DestGroups::default(),
        comm_budget,
        ttl: Duration::from_secs(60),
    }
}

fn update(kind: FlowUpdateKind, port: u16, comm: &str) -> FlowUpdate {
    let mut flow = sample_flow(u64::from(port), port);
    flow.comm = comm.into();
    flow.state = match kind {
        FlowUpdateKind::Established => FlowState::Established,
        FlowUpdateKind::Closed => FlowState::Closed,
        FlowUpdateKind::Failed => FlowState::Failed,
    };
    FlowUpdate {
        kind,
        flow: Arc::new(flow),
    }
}

#[test]
fn names_past_the_budget_go_to_other_and_ports_never_become_labels() {
    let mut b = MetricsBuilder::new();
    let m = FlowMetrics::register(b.registry(), labels(3));
    let now = crate::clock::coarse_monotonic();
    for i in 0..1000u16 {
        let comm = format!("proc-{}", i % 10);
        m.record_at(&update(FlowUpdateKind::Established, 10_000 + i, &comm), now);
        m.record_at(&update(FlowUpdateKind::Closed, 10_000 + i, &comm), now);
    }
    assert_eq!(m.series(), 4, "3 names + ~other, one destination group");
    let text = b.finish().encode().unwrap();
    assert!(text.contains("comm=\"~other\""), "{text}");
    assert!(
        !text.contains("10000"),
        "a port leaked into a label:\n{text}"
    );
    assert!(
        text.contains("netscope_flow_comm_overflow_total 1400"),
        "{text}"
    );
    assert!(
        text.contains("netscope_flow_active_connections{dest=\"internal\",comm=\"proc-0\"} 0"),
        "{text}"
    );
}

#[test]
fn idle_series_expire_and_give_their_name_slot_back() {
    let m = FlowMetrics::register(&mut Registry::default(), labels(1));
    let t0 = crate::clock::coarse_monotonic();
    m.record_at(&update(FlowUpdateKind::Closed, 1, "old"), t0);
    m.record_at(&update(FlowUpdateKind::Established, 2, "open"), t0);
    assert_eq!(m.series(), 2, "`open` went to ~other: budget 1");
    let later = t0 + Duration::from_secs(61);
    m.record_at(&update(FlowUpdateKind::Established, 3, "new"), later);
    let st = m.lock();
    let names: Vec<&str> = st.labelled(&m.dest_labels).map(|(_, c, _)| c).collect();
    assert!(names.contains(&"new"), "{names:?}");
    assert!(!names.contains(&"old"), "idle `old` expired: {names:?}");
    assert!(
        names.contains(&OTHER_COMM),
        "~other holds an open connection: kept {names:?}"
    );
}
