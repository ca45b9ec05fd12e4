//! The live view's messages: their kinds, the one serialisation every client shares, the
//! filters a client asks for, and the per-second `stats`.

use serde::Serialize;

use axum::extract::ws::Utf8Bytes;

use crate::domain::{FlowUpdateKind, outcome::ResilienceSnapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::EnumString, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    Call,
    Flow,
    Resilience,
    Stats,
}

/// One message, serialised once, with what filters look at.
#[derive(Debug)]
pub struct LiveMsg {
    pub(super) kind: Kind,
    pub(super) target: Option<String>,
    pub(super) route: Option<String>,
    pub(super) outcome: Option<&'static str>,
    pub(super) text: Utf8Bytes,
}

/// What a client asked to see (all when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveFilter {
    pub types: Vec<Kind>,
    pub target: Option<String>,
    pub route: Option<String>,
    pub outcome: Option<String>,
}

impl LiveFilter {
    pub(super) fn wants(&self, m: &LiveMsg) -> bool {
        if !self.types.is_empty() && !self.types.contains(&m.kind) {
            return false;
        }
        // Field filters narrow calls and flows; resilience and stats always pass.
        if matches!(m.kind, Kind::Resilience | Kind::Stats) {
            return true;
        }
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.target, m.target.as_deref())
            && eq(&self.route, m.route.as_deref())
            && eq(&self.outcome, m.outcome)
    }
}

/// A message: its type, when the hub took the event off the bus (ms since the Unix epoch),
/// and the event.
#[derive(Serialize)]
pub(super) struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub(super) kind: Kind,
    pub(super) at_unix_ms: u64,
    #[serde(flatten)]
    pub(super) body: &'a T,
}

pub(super) fn json<T: Serialize>(kind: Kind, body: &T) -> Option<Utf8Bytes> {
    let at_unix_ms = crate::clock::now_unix_ms();
    serde_json::to_string(&Tagged {
        kind,
        at_unix_ms,
        body,
    })
    .ok()
    .map(Utf8Bytes::from)
}

#[derive(Serialize)]
pub(super) struct FlowBody<'a> {
    pub(super) event: FlowUpdateKind,
    #[serde(flatten)]
    pub(super) flow: &'a crate::domain::Flow,
    pub(super) duration_ns: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct ResilienceBody<'a> {
    pub(super) targets: &'a [ResilienceSnapshot],
}

#[derive(Serialize, Default)]
pub(super) struct StatsBody {
    pub(super) calls_per_s: u64,
    pub(super) flows_per_s: u64,
    call_ms_p50: Option<f64>,
    call_ms_p99: Option<f64>,
    connect_ms_p50: Option<f64>,
    connect_ms_p99: Option<f64>,
    pub(super) clients: u64,
}

pub(super) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

/// The current second's samples, for the `stats` message.
#[derive(Default)]
pub(super) struct Window {
    pub(super) calls: u64,
    pub(super) flows: u64,
    pub(super) call_ms: Vec<f64>,
    pub(super) connect_ms: Vec<f64>,
}

impl Window {
    pub(super) fn stats(&mut self, clients: u64) -> StatsBody {
        self.call_ms.sort_by(f64::total_cmp);
        self.connect_ms.sort_by(f64::total_cmp);
        let w = std::mem::take(self);
        StatsBody {
            calls_per_s: w.calls,
            flows_per_s: w.flows,
            call_ms_p50: quantile(&w.call_ms, 0.5),
            call_ms_p99: quantile(&w.call_ms, 0.99),
            connect_ms_p50: quantile(&w.connect_ms, 0.5),
            connect_ms_p99: quantile(&w.connect_ms, 0.99),
            clients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: Kind, target: &str, outcome: &'static str) -> LiveMsg {
        LiveMsg {
            kind,
            target: Some(target.into()),
            route: Some("r".into()),
            outcome: Some(outcome),
            text: Utf8Bytes::from_static("{}"),
        }
    }

    #[test]
    fn filters_narrow_calls_and_flows_but_never_hide_stats() {
        let f = LiveFilter {
            types: vec![Kind::Call, Kind::Stats],
            target: Some("a".into()),
            ..Default::default()
        };
        assert!(f.wants(&msg(Kind::Call, "a", "response")));
        assert!(!f.wants(&msg(Kind::Call, "b", "response")));
        assert!(!f.wants(&msg(Kind::Flow, "a", "closed")));
        assert!(f.wants(&msg(Kind::Stats, "zzz", "x")));
        assert!(LiveFilter::default().wants(&msg(Kind::Flow, "x", "refused")));
    }

    #[test]
    fn stats_take_quantiles_of_the_second_and_reset() {
        let mut w = Window {
            calls: 100,
            call_ms: (1..=100).map(f64::from).collect(),
            ..Window::default()
        };
        let s = w.stats(2);
        assert_eq!(s.calls_per_s, 100);
        assert_eq!(s.call_ms_p50, Some(51.0));
        assert_eq!(s.call_ms_p99, Some(99.0));
        assert_eq!(w.stats(0).calls_per_s, 0, "reset after each second");
    }
}
