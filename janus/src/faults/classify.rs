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

/// A replay to judge: what failed on the stable node, what the replay on the debug node did.
pub(crate) struct Judged<'a> {
    /// Fault kind (`divergence`, `stable_fault`, `debug_fault`, ...).
    pub kind: &'a str,
    /// How the node that failed failed.
    pub stable: &'a OutcomeClass,
    /// How the replay ended.
    pub replay: &'a OutcomeClass,
    /// The stable node's status (divergences).
    pub stable_status: Option<u16>,
    /// The stable node's answer (divergences).
    pub stable_answer: Option<&'a str>,
    /// The replay's answer.
    pub replay_answer: Option<&'a str>,
    /// Whether the replay ran on the stable node's exact state (not the empty fallback).
    pub exact_state: bool,
    /// The replay's transport error, if it had one.
    pub transport_error: Option<String>,
    /// The debug node replayed on.
    pub debug_node: &'a str,
}

/// The verdict of a reproduction and why, in one sentence. `control` replays the request on an
/// empty state; it is called only when the failure reproduced on the exact state (to tell
/// `reproduced` from `state_dependent`).
pub(crate) fn judge(
    r: &Judged,
    control: impl FnOnce() -> anyhow::Result<OutcomeClass>,
) -> anyhow::Result<(Verdict, String)> {
    let (stable, replay_class) = (r.stable, r.replay);
    Ok(if *r.replay == OutcomeClass::Unavailable {
        (
            Verdict::Inconclusive,
            format!(
                "the replay on {} failed in transport: {}",
                r.debug_node,
                r.transport_error.as_deref().unwrap_or_default()
            ),
        )
    } else if r.kind == "divergence" {
        let same = matches!(r.replay, OutcomeClass::Answered(c) if Some(*c) == r.stable_status)
            && r.replay_answer.is_some()
            && r.replay_answer == r.stable_answer;
        if same {
            (
                Verdict::NotReproduced,
                "given the stable node's state the debug build gives the stable answer: the \
                 builds agree, the divergence came from the mirror target's own state"
                    .to_owned(),
            )
        } else if r.exact_state {
            (
                Verdict::BuildSpecific,
                format!(
                    "given the stable node's state the debug build answers {replay_class:?}, \
                     the stable build answered {}",
                    r.stable_status.map_or("?".to_owned(), |s| s.to_string())
                ),
            )
        } else {
            (
                Verdict::NotReproduced,
                "the stable node's state was not available: the answers cannot be compared \
                 on the same state"
                    .to_owned(),
            )
        }
    } else if *r.stable != OutcomeClass::Unavailable && r.replay == r.stable {
        if r.exact_state {
            // Does it need the state? The same replay on an empty state says.
            let without = control()?;
            if without == *r.stable {
                (
                    Verdict::Reproduced,
                    "the debug build fails the same way, with or without the mirrored state"
                        .to_owned(),
                )
            } else {
                (
                    Verdict::StateDependent,
                    format!(
                        "the debug build fails the same way under the mirrored state; on an \
                         empty state it answers {without:?}"
                    ),
                )
            }
        } else {
            (
                Verdict::Reproduced,
                "the debug build fails the same way".to_owned(),
            )
        }
    } else if *r.stable != OutcomeClass::Unavailable && r.exact_state {
        (
            Verdict::BuildSpecific,
            format!(
                "the stable node failed ({stable:?}); the debug build under the same state \
                 answers {replay_class:?}: see the unikernel's panic report, console and \
                 janus_uk_* counters"
            ),
        )
    } else {
        (
            Verdict::NotReproduced,
            format!(
                "the debug build answers {replay_class:?}{}",
                if r.exact_state {
                    ""
                } else {
                    " (without the stable node's exact state)"
                }
            ),
        )
    })
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

    fn judged<'a>(kind: &'a str, stable: &'a OutcomeClass, replay: &'a OutcomeClass) -> Judged<'a> {
        Judged {
            kind,
            stable,
            replay,
            stable_status: None,
            stable_answer: None,
            replay_answer: None,
            exact_state: true,
            transport_error: None,
            debug_node: "spare-0",
        }
    }

    #[test]
    fn verdicts() {
        let (panic, ok) = (OutcomeClass::Panic, OutcomeClass::Answered(200));
        let no_control =
            || -> anyhow::Result<OutcomeClass> { panic!("no control replay expected") };
        // Same failure with and without the state; only with it; a different outcome.
        let r = judged("stable_fault", &panic, &panic);
        assert_eq!(
            judge(&r, || Ok(OutcomeClass::Panic)).expect("judged").0,
            Verdict::Reproduced
        );
        assert_eq!(
            judge(&r, || Ok(ok.clone())).expect("judged").0,
            Verdict::StateDependent
        );
        let r = judged("stable_fault", &panic, &ok);
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::BuildSpecific
        );
        // Without the exact state: a match is reproduced (no control), a miss is not.
        let mut r = judged("stable_fault", &panic, &panic);
        r.exact_state = false;
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::Reproduced
        );
        let mut r = judged("stable_fault", &panic, &ok);
        r.exact_state = false;
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::NotReproduced
        );
        // A transport failure is never a reproduction, and says why.
        let unavailable = OutcomeClass::Unavailable;
        let mut r = judged("stable_fault", &panic, &unavailable);
        r.transport_error = Some("connection refused".into());
        let (v, why) = judge(&r, no_control).expect("judged");
        assert_eq!(v, Verdict::Inconclusive);
        assert!(
            why.contains("spare-0") && why.contains("connection refused"),
            "{why}"
        );
        // Divergences: the same answer means the builds agree; another one is the finding.
        let mut r = judged("divergence", &ok, &ok);
        r.stable_status = Some(200);
        r.stable_answer = Some("1");
        r.replay_answer = Some("1");
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::NotReproduced
        );
        r.replay_answer = Some("2");
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::BuildSpecific
        );
        r.exact_state = false;
        assert_eq!(
            judge(&r, no_control).expect("judged").0,
            Verdict::NotReproduced
        );
    }
}
