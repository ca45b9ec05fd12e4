//! The soak's fault schedule: what happens when, as fractions of the production time (so that a
//! short soak sees every fault too), each fault lasting a share of it but never less than what
//! makes it bite (a circuit's window, a broker restart).

use std::time::Duration;

use netscope_agent::demo::upstream::Fault;
use serde::Serialize;

/// The agents: node-1 from the start (killed twice), node-2 joining then leaving.
pub const NODE_1: usize = 0;
pub const NODE_2: usize = 1;

/// The upstream targets, each its own port.
pub const TARGETS: [&str; 3] = ["svc-a", "svc-b", "svc-c"];
pub const SVC_A: usize = 0;
pub const SVC_B: usize = 1;
pub const SVC_C: usize = 2;

/// Each target's attempt timeout: the slow fault answers after longer than this.
pub const ATTEMPT_TIMEOUT_MS: u64 = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An agent starts (a node joins the group, or a killed one comes back).
    Start(usize),
    /// SIGTERM: a clean leave.
    Leave(usize),
    Kill(usize),
    /// Every request to a target gets this fault (`None`: normal again).
    Upstream(usize, Option<SoakFault>),
    /// A target's listener and connections close: connections are refused.
    Refuse(usize),
    Accept(usize),
    BrokerStop,
    BrokerStart,
    RgwStop,
    RgwStart,
    /// Many connections opened and held from a namespace of their own: every agent's flow
    /// table holds them live (root; `--live-flows`).
    HoldFlows(usize),
    ReleaseFlows,
}

/// [`Fault`], serializable for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SoakFault {
    Status(u16),
    Reset,
    Delay(u64),
}

impl From<SoakFault> for Fault {
    fn from(f: SoakFault) -> Self {
        match f {
            SoakFault::Status(s) => Fault::Status(s),
            SoakFault::Reset => Fault::Reset,
            SoakFault::Delay(ms) => Fault::Delay(ms),
        }
    }
}

impl Action {
    /// Does it change the group's membership or reach (so that records not yet committed may
    /// run again)?
    pub fn disrupts_group(self) -> bool {
        matches!(
            self,
            Self::Start(_) | Self::Leave(_) | Self::Kill(_) | Self::BrokerStop
        )
    }

    pub fn describe(self) -> String {
        let node = |i: usize| format!("node-{}", i + 1);
        match self {
            Self::Start(i) => format!("{} starts (joins the group)", node(i)),
            Self::Leave(i) => format!("{} stops cleanly (leaves the group)", node(i)),
            Self::Kill(i) => format!("{} SIGKILLed", node(i)),
            Self::Upstream(t, Some(SoakFault::Status(s))) => {
                format!("{}: every response {s} (burst begins)", TARGETS[t])
            }
            Self::Upstream(t, Some(SoakFault::Reset)) => {
                format!("{}: every connection reset", TARGETS[t])
            }
            Self::Upstream(t, Some(SoakFault::Delay(ms))) => {
                format!("{}: every response after {ms} ms", TARGETS[t])
            }
            Self::Upstream(t, None) => format!("{}: healthy again", TARGETS[t]),
            Self::Refuse(t) => format!("{}: connections refused", TARGETS[t]),
            Self::Accept(t) => format!("{}: listening again", TARGETS[t]),
            Self::BrokerStop => "Kafka broker stopped".into(),
            Self::BrokerStart => "Kafka broker started".into(),
            Self::RgwStop => "RGW stopped".into(),
            Self::RgwStart => "RGW started".into(),
            Self::HoldFlows(n) => format!("{n} connections opened and held (live flows)"),
            Self::ReleaseFlows => "the held connections closed".into(),
        }
    }
}

/// One scheduled action, `at` after the soak's start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Step {
    #[serde(serialize_with = "as_secs")]
    pub at: Duration,
    pub action: Action,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The schedule for a production time of `production`, in time order; `live_flows`
/// connections are held through its middle (none when 0).
pub fn schedule(production: Duration, live_flows: usize) -> Vec<Step> {
    let p = production.as_secs_f64();
    let at = |f: f64| Duration::from_secs_f64(p * f);
    // A fault begins at `from` (a fraction) and lasts `share` of the production time, or
    // `floor` seconds if that is longer.
    let window = |from: f64, share: f64, floor: f64| {
        let begin = at(from);
        (
            begin,
            begin + Duration::from_secs_f64((p * share).max(floor)),
        )
    };
    let mut steps = vec![Step {
        at: at(0.06),
        action: Action::Start(NODE_2),
    }];
    let mut fault = |(begin, end): (Duration, Duration), on: Action, off: Action| {
        steps.push(Step {
            at: begin,
            action: on,
        });
        steps.push(Step {
            at: end,
            action: off,
        });
    };
    fault(
        window(0.10, 0.06, 10.0),
        Action::Upstream(SVC_A, Some(SoakFault::Status(503))),
        Action::Upstream(SVC_A, None),
    );
    fault(
        window(0.20, 0.0, 5.0),
        Action::Kill(NODE_1),
        Action::Start(NODE_1),
    );
    fault(
        window(0.27, 0.04, 5.0),
        Action::Upstream(SVC_B, Some(SoakFault::Reset)),
        Action::Upstream(SVC_B, None),
    );
    fault(window(0.34, 0.06, 15.0), Action::RgwStop, Action::RgwStart);
    fault(
        window(0.44, 0.04, 5.0),
        Action::Upstream(SVC_C, Some(SoakFault::Delay(ATTEMPT_TIMEOUT_MS + 400))),
        Action::Upstream(SVC_C, None),
    );
    fault(
        window(0.52, 0.03, 5.0),
        Action::Refuse(SVC_C),
        Action::Accept(SVC_C),
    );
    fault(
        window(0.58, 0.0, 15.0),
        Action::BrokerStop,
        Action::BrokerStart,
    );
    fault(
        window(0.76, 0.0, 5.0),
        Action::Kill(NODE_1),
        Action::Start(NODE_1),
    );
    if live_flows > 0 {
        fault(
            (at(0.40), at(0.92)),
            Action::HoldFlows(live_flows),
            Action::ReleaseFlows,
        );
    }
    steps.push(Step {
        at: at(0.86),
        action: Action::Leave(NODE_2),
    });
    steps.sort_by_key(|s| s.at);
    steps
}

/// When the 5xx burst on svc-a runs, as offsets from the start.
#[cfg(test)]
fn burst(steps: &[Step]) -> Option<(Duration, Duration)> {
    let on = steps
        .iter()
        .find(|s| matches!(s.action, Action::Upstream(SVC_A, Some(_))))?;
    let off = steps
        .iter()
        .find(|s| s.action == Action::Upstream(SVC_A, None))?;
    Some((on.at, off.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_is_scheduled_and_ends_before_the_production_does() {
        for secs in [120, 720] {
            let production = Duration::from_secs(secs);
            let steps = schedule(production, 10_000);
            assert!(steps.windows(2).all(|w| w[0].at <= w[1].at), "in order");
            assert!(steps.iter().all(|s| s.at < production), "{secs}: {steps:?}");
            let count = |f: fn(&Action) -> bool| steps.iter().filter(|s| f(&s.action)).count();
            assert_eq!(count(|a| matches!(a, Action::Kill(NODE_1))), 2);
            assert_eq!(count(|a| matches!(a, Action::Start(_))), 3);
            assert_eq!(count(|a| matches!(a, Action::Leave(NODE_2))), 1);
            assert_eq!(count(|a| *a == Action::BrokerStop), 1);
            assert_eq!(count(|a| *a == Action::RgwStop), 1);
            assert_eq!(count(|a| matches!(a, Action::Refuse(_))), 1);
            assert_eq!(count(|a| matches!(a, Action::HoldFlows(10_000))), 1);
            assert_eq!(count(|a| *a == Action::ReleaseFlows), 1);
            let (on, off) = burst(&steps).unwrap();
            assert!(
                off - on >= Duration::from_secs(10),
                "the circuit has time to open"
            );
        }
    }
}
