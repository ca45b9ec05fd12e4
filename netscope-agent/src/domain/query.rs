//! Read models: what the API may ask of the running agent (flows, recent calls, readiness,
//! counters), as plain values. The ports that answer them are in [`super::ports`].

use serde::Serialize;

use super::{Cidr, Flow, FlowOutcome, FlowState, outcome::CallOutcome};

/// Which flows to list. Every field narrows the set; `None` means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub remote: Option<Cidr>,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub outcome: Option<FlowOutcomeFilter>,
}

/// A flow's outcome as a filter: still open, or ended this way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowOutcomeFilter {
    Open,
    Ended(FlowOutcome),
}

impl std::str::FromStr for FlowOutcomeFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "open" {
            return Ok(Self::Open);
        }
        s.parse::<FlowOutcome>().map(Self::Ended).map_err(|_| {
            let known: Vec<&str> = <FlowOutcome as strum::IntoEnumIterator>::iter()
                .map(<&str>::from)
                .collect();
            format!("`{s}` is not one of open, {}", known.join(", "))
        })
    }
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.remote.is_none_or(|c| c.contains(f.remote.ip()))
            && self.port.is_none_or(|p| f.remote.port() == p)
            && self.pid.is_none_or(|p| f.pid == p)
            && self.comm.as_deref().is_none_or(|c| f.comm == c)
            && self.outcome.is_none_or(|o| match o {
                FlowOutcomeFilter::Open => f.state == FlowState::Established,
                FlowOutcomeFilter::Ended(want) => f.outcome == Some(want),
            })
    }
}

/// Where a page of flows ends: flows are listed newest first, by (`start_mono_ns`, socket).
/// Its text form (`<start_mono_ns>-<socket hex>`) is the API's opaque cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowCursor {
    pub start_mono_ns: u64,
    pub sock_id: u64,
}

impl FlowCursor {
    pub fn of(f: &Flow) -> Self {
        Self {
            start_mono_ns: f.id.start_mono_ns,
            sock_id: f.id.sock_id,
        }
    }
}

impl std::fmt::Display for FlowCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{:x}", self.start_mono_ns, self.sock_id)
    }
}

impl std::str::FromStr for FlowCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a cursor this API returned");
        let (start, sock) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            start_mono_ns: start.parse().map_err(|_| bad())?,
            sock_id: u64::from_str_radix(sock, 16).map_err(|_| bad())?,
        })
    }
}

/// One page of flows, newest first; `next` is set when more match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowPage {
    pub flows: Vec<Flow>,
    pub next: Option<String>,
    /// Flows in the table (matching or not).
    pub table_len: usize,
}

/// Which recent calls to list. Every field narrows the set; `None` means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallFilter {
    pub target: Option<String>,
    pub route: Option<String>,
    pub outcome: Option<CallOutcome>,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

impl CallFilter {
    pub fn matches(&self, r: &super::outcome::OutboundResult) -> bool {
        self.target.as_deref().is_none_or(|t| r.ctx.target.0 == t)
            && self.route.as_deref().is_none_or(|t| r.ctx.route.0 == t)
            && self.outcome.is_none_or(|o| r.outcome == o)
            && self
                .trace_id
                .as_deref()
                .is_none_or(|t| r.ctx.trace_id.to_string() == t)
            && self
                .request_id
                .as_deref()
                .is_none_or(|t| r.ctx.request_id == t)
    }
}

/// One readiness check's verdict. A failed `required` check makes the agent not ready; the
/// others are reported only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub required: bool,
    pub detail: String,
}

/// Whether a sample only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    Counter,
    Gauge,
}

/// One value a component counts, read at scrape (and status) time: the same atomics the run
/// and probe summaries read. `name` is the metric's name without the `netscope_` prefix (and
/// without `_total`); `label` is at most one pair whose value comes from a closed set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub name: &'static str,
    #[serde(skip)]
    pub help: &'static str,
    pub kind: SampleKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: SampleKind::Counter,
            label: None,
            value,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            kind: SampleKind::Gauge,
            ..Self::counter(name, help, value)
        }
    }

    pub fn with(self, key: &'static str, value: &'static str) -> Self {
        Self {
            label: Some((key, value)),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::flow::sample_flow;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let c = FlowCursor {
            start_mono_ns: 123,
            sock_id: 0xffff_8880_dead_beef,
        };
        assert_eq!(c.to_string().parse::<FlowCursor>(), Ok(c));
        assert!("123".parse::<FlowCursor>().is_err());
        assert!("x-1".parse::<FlowCursor>().is_err());
    }

    #[test]
    fn an_outcome_filter_names_every_choice_when_it_is_wrong() {
        assert_eq!("open".parse(), Ok(FlowOutcomeFilter::Open));
        assert_eq!(
            "refused".parse(),
            Ok(FlowOutcomeFilter::Ended(FlowOutcome::Refused))
        );
        let err = "nope".parse::<FlowOutcomeFilter>().unwrap_err();
        assert!(err.contains("reset_by_peer"), "{err}");
    }

    #[test]
    fn a_flow_filter_narrows_by_every_field() {
        let f = sample_flow(1, 5000);
        assert!(FlowFilter::default().matches(&f));
        let port = FlowFilter {
            port: Some(f.remote.port()),
            ..Default::default()
        };
        assert!(port.matches(&f));
        let other = FlowFilter {
            port: Some(f.remote.port() + 1),
            ..Default::default()
        };
        assert!(!other.matches(&f));
        let net = FlowFilter {
            remote: Some("10.0.0.0/8".parse().unwrap()),
            ..Default::default()
        };
        assert!(!net.matches(&f), "sample flows go to 127.0.0.1");
        let open = FlowFilter {
            outcome: Some(FlowOutcomeFilter::Open),
            comm: Some(f.comm.to_string()),
            ..Default::default()
        };
        assert_eq!(open.matches(&f), f.state == FlowState::Established);
    }
}
