//! Outcome classes (how a node failed, coarse enough to compare a unikernel with a process) and the
//! verdicts of a reproduction.

use serde::Serialize;

use crate::client::Reply;

/// How a node failed (or not), coarse enough to compare a unikernel with a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// The service panicked (a unikernel stops; a process answers 500 with `x-janus-fault: panic`).
    Panic,
    /// No answer within the deadline.
    Hang,
    /// A 5xx answer.
    ServerError(u16),
    /// An answer that is not a fault.
    Answered(u16),
    /// The node could not be reached at all (nothing to reproduce).
    Unavailable,
}

/// The class of a stable node's outcome as the router recorded it.
pub fn stable_class(outcome: &str) -> OutcomeClass {
    match outcome {
        // node_stopped: the engine reported the VM stopped under the request (libvirt discovery).
        "panic" | "reset" | "body_cut_off" | "node_stopped" => OutcomeClass::Panic,
        "timeout" | "abandoned_unhealthy" => OutcomeClass::Hang,
        "connect_error" => OutcomeClass::Unavailable,
        o => match o.strip_prefix("status_").or_else(|| o.strip_prefix("ok_")) {
            Some(code) => {
                let c = code.parse().unwrap_or(0);
                if c >= 500 {
                    OutcomeClass::ServerError(c)
                } else {
                    OutcomeClass::Answered(c)
                }
            }
            None => OutcomeClass::Unavailable,
        },
    }
}

/// What a reproduction concluded. `janus faults repro` exits 0 for `reproduced` and
/// `state_dependent`, 3 for `not_reproduced`, 4 for `build_specific`, 5 for `inconclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The debug build fails the same way under the same state, and also without it.
    Reproduced,
    /// The debug build fails the same way under the mirrored state only (an empty state does not).
    StateDependent,
    /// The two builds differ on the same state: the stable node failed (or answered differently)
    /// and the debug build, given that state, did not: a difference of the builds (for a
    /// divergence, the debug build's side is the finding).
    BuildSpecific,
    /// The debug build does not fail (or, for a divergence, gives the stable answer), and the
    /// stable node's exact state was not available (or the divergence came from the mirror
    /// target's own state, not from the build).
    NotReproduced,
    /// The replay could not be judged (the debug node could not be reached or cut the
    /// connection): never counted as reproduced.
    Inconclusive,
}

impl Verdict {
    /// Whether the failure was reproduced on the debug build.
    pub fn reproduced(self) -> bool {
        matches!(self, Verdict::Reproduced | Verdict::StateDependent)
    }

    /// The exit status of `janus faults repro`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Reproduced | Verdict::StateDependent => 0,
            Verdict::NotReproduced => 3,
            Verdict::BuildSpecific => 4,
            Verdict::Inconclusive => 5,
        }
    }

    /// The headline of the report.
    pub fn headline(self) -> &'static str {
        match self {
            Verdict::Reproduced => "REPRODUCED",
            Verdict::StateDependent => {
                "REPRODUCED, STATE-DEPENDENT (only with the mirrored state, not on an empty one)"
            }
            Verdict::BuildSpecific => {
                "BUILD-SPECIFIC (the builds differ on the same state; caught on the instrumented build)"
            }
            Verdict::NotReproduced => "NOT REPRODUCED",
            Verdict::Inconclusive => "INCONCLUSIVE (the replay could not be judged)",
        }
    }
}

/// How a replayed request ended: a timeout is a hang, an answer marked `x-janus-fault` a panic, and
/// a dropped connection is `dropped`: inconclusive on a repro process, a panic on a recorded
/// unikernel (its kernel stops on a panic and the connection goes with it).
pub(crate) fn replay_class(result: &anyhow::Result<Reply>, dropped: OutcomeClass) -> OutcomeClass {
    match result {
        Err(e) if crate::client::is_timeout(e) => OutcomeClass::Hang,
        Err(_) => dropped,
        Ok(r) if r.header("x-janus-fault").is_some() => OutcomeClass::Panic,
        Ok(r) if r.status >= 500 => OutcomeClass::ServerError(r.status),
        Ok(r) => OutcomeClass::Answered(r.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes() {
        assert_eq!(stable_class("reset"), OutcomeClass::Panic);
        assert_eq!(stable_class("panic"), OutcomeClass::Panic);
        assert_eq!(stable_class("timeout"), OutcomeClass::Hang);
        assert_eq!(stable_class("status_503"), OutcomeClass::ServerError(503));
        assert_eq!(stable_class("ok_200"), OutcomeClass::Answered(200));
        assert_eq!(stable_class("connect_error"), OutcomeClass::Unavailable);
    }
}
