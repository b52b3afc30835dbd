//! The progressive canary's analysis: after each interval, the figures of
//! the requests the canary's proxies served since the weight last changed
//! decide whether to roll back, wait for more traffic, move the weight up
//! a step, or finish. [`decide`] is pure; the loop that scrapes and applies
//! is in the parent module.

use std::time::Duration;

use serde::Serialize;

use crate::scrape::Stats;

/// The rollout's thresholds and pace.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Weight added per healthy interval (percent).
    pub step: u8,
    /// Wait between analyses.
    pub interval: Duration,
    /// Stop moving at this weight; 100 promotes.
    pub max_weight: u8,
    /// Roll back when the canary's success rate (non-5xx / all, percent)
    /// is below this.
    pub min_success_rate: f64,
    /// Roll back when the canary's p99 latency is above this.
    pub max_p99: Duration,
    /// Requests the canary must have served before a step is judged.
    pub min_requests: u64,
    /// Intervals in a row without enough requests before rolling back.
    pub max_waits: u32,
}

/// What to do after an interval.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough requests yet: wait another interval (same baseline).
    Wait,
    /// Roll back to 100% stable, for this reason.
    RollBack(String),
    /// Healthy: set the canary's weight to this and analyse again.
    Advance(u8),
    /// Healthy at 100 (or the step reaches 100): promote.
    Promote,
    /// Healthy at `--max-weight` (< 100): stop there, leave promote to the
    /// operator.
    Hold,
}

impl Decision {
    /// One word, for the step history.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Wait => "wait",
            Self::RollBack(_) => "roll-back",
            Self::Advance(_) => "advance",
            Self::Promote => "promote",
            Self::Hold => "hold",
        }
    }
}

/// The decision after an interval at `weight`, given what the canary
/// served since the weight was set (`canary`) and how many intervals in a
/// row already lacked requests (`waits`).
pub fn decide(policy: &Policy, weight: u8, canary: &Stats, waits: u32) -> Decision {
    if canary.requests < policy.min_requests {
        if waits + 1 >= policy.max_waits {
            return Decision::RollBack(format!(
                "the canary served only {} requests at {weight}% in {} intervals of {}s \
                 (--min-requests {}): not enough traffic to judge it",
                canary.requests,
                waits + 1,
                policy.interval.as_secs_f64(),
                policy.min_requests
            ));
        }
        return Decision::Wait;
    }
    let success = canary.success_rate.unwrap_or(0.0);
    if success < policy.min_success_rate {
        return Decision::RollBack(format!(
            "the canary's success rate {success:.2}% is below {}% ({} of {} requests failed with 5xx at {weight}%)",
            policy.min_success_rate, canary.errors, canary.requests
        ));
    }
    let max_p99_ms = policy.max_p99.as_secs_f64() * 1000.0;
    if let Some(p99) = canary.p99_ms {
        if p99 > max_p99_ms {
            return Decision::RollBack(format!(
                "the canary's p99 latency {p99:.1}ms is above {max_p99_ms:.1}ms ({} requests at {weight}%)",
                canary.requests
            ));
        }
    }
    if weight >= policy.max_weight {
        return if policy.max_weight >= 100 {
            Decision::Promote
        } else {
            Decision::Hold
        };
    }
    let next = weight.saturating_add(policy.step).min(policy.max_weight);
    if next >= 100 {
        Decision::Promote
    } else {
        Decision::Advance(next)
    }
}

/// One analysis in the rollout's history (`-o json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Canary weight during the window.
    pub weight: u8,
    /// Seconds of traffic analysed.
    pub window_seconds: f64,
    /// The canary's figures.
    pub canary: Stats,
    /// The stable side's figures (for comparison).
    pub stable: Stats,
    /// `wait`, `advance`, `promote`, `hold`, `roll-back`.
    pub decision: String,
    /// The weight set next, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_weight: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            step: 10,
            interval: Duration::from_secs(60),
            max_weight: 100,
            min_success_rate: 99.0,
            max_p99: Duration::from_millis(500),
            min_requests: 20,
            max_waits: 3,
        }
    }

    fn stats(requests: u64, errors: u64, p99_ms: f64) -> Stats {
        Stats {
            requests,
            errors,
            success_rate: (requests > 0)
                .then(|| 100.0 * (requests - errors) as f64 / requests as f64),
            rps: None,
            p50_ms: Some(p99_ms / 2.0),
            p99_ms: Some(p99_ms),
        }
    }

    #[test]
    fn healthy_steps_advance_then_promote() {
        let p = policy();
        assert_eq!(
            decide(&p, 10, &stats(100, 0, 20.0), 0),
            Decision::Advance(20)
        );
        assert_eq!(
            decide(&p, 80, &stats(100, 1, 20.0), 0),
            Decision::Advance(90)
        );
        assert_eq!(decide(&p, 90, &stats(100, 0, 20.0), 0), Decision::Promote);
        let p = Policy {
            step: 30,
            ..policy()
        };
        assert_eq!(decide(&p, 80, &stats(100, 0, 20.0), 0), Decision::Promote);
    }

    #[test]
    fn max_weight_below_100_holds() {
        let p = Policy {
            max_weight: 50,
            ..policy()
        };
        assert_eq!(
            decide(&p, 40, &stats(100, 0, 20.0), 0),
            Decision::Advance(50)
        );
        assert_eq!(
            decide(&p, 45, &stats(100, 0, 20.0), 0),
            Decision::Advance(50)
        );
        assert_eq!(decide(&p, 50, &stats(100, 0, 20.0), 0), Decision::Hold);
    }

    #[test]
    fn failures_roll_back_with_the_figures() {
        let p = policy();
        // 98% < 99%.
        let Decision::RollBack(why) = decide(&p, 10, &stats(100, 2, 20.0), 0) else {
            panic!()
        };
        assert!(
            why.contains("98.00%") && why.contains("99%") && why.contains("2 of 100"),
            "{why}"
        );
        // Exactly the threshold holds.
        assert_eq!(
            decide(&p, 10, &stats(100, 1, 20.0), 0),
            Decision::Advance(20)
        );
        let Decision::RollBack(why) = decide(&p, 30, &stats(100, 0, 750.0), 0) else {
            panic!()
        };
        assert!(why.contains("750.0ms") && why.contains("500.0ms"), "{why}");
        // Exactly the latency threshold holds.
        assert_eq!(
            decide(&p, 30, &stats(100, 0, 500.0), 0),
            Decision::Advance(40)
        );
    }

    #[test]
    fn too_few_requests_wait_then_roll_back() {
        let p = policy();
        // All 5xx but under --min-requests: not judged yet.
        assert_eq!(decide(&p, 10, &stats(19, 19, 1.0), 0), Decision::Wait);
        assert_eq!(decide(&p, 10, &stats(0, 0, 1.0), 1), Decision::Wait);
        let Decision::RollBack(why) = decide(&p, 10, &stats(3, 0, 1.0), 2) else {
            panic!()
        };
        assert!(
            why.contains("only 3 requests") && why.contains("--min-requests 20"),
            "{why}"
        );
    }

    #[test]
    fn no_latency_figures_do_not_fail_the_step() {
        let p = policy();
        let s = Stats {
            p99_ms: None,
            ..stats(50, 0, 0.0)
        };
        assert_eq!(decide(&p, 10, &s, 0), Decision::Advance(20));
    }
}
