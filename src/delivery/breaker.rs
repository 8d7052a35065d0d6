//! The circuit breaker: a receiver that keeps failing is paused, for a
//! cooldown that doubles while its probes fail; the one place that says
//! whether a receiver's circuit is closed, open or half open.

use crate::util::now_ms;
use serde::Serialize;
use std::time::Duration;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    /// Failed attempts in a row that open a receiver's circuit.
    pub failures: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

/// A receiver's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Circuit {
    /// Deliveries go out.
    Closed,
    /// Too many failures in a row: its deliveries wait until `open_until_ms`.
    Open,
    /// The pause is over: one probe at a time until one succeeds.
    HalfOpen,
}

/// One receiver's breaker state.
#[derive(Debug, Default)]
pub(crate) struct CircuitState {
    /// Failed attempts in a row (retryable failures only: a 4xx means it is up).
    failures: u32,
    /// While set and in the future, its circuit is open: nothing is sent.
    open_until: Option<u64>,
    /// The current pause; doubles each time a probe fails.
    cooldown_ms: u64,
}

impl CircuitState {
    /// Its circuit at `now`.
    pub(crate) fn circuit(&self, breaker: &Breaker, now: u64) -> Circuit {
        match self.open_until {
            Some(until) if until > now => Circuit::Open,
            _ if self.failures >= breaker.failures => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }

    /// Until when it is open, if it is at `now` (Unix ms).
    pub(crate) fn open_until(&self, now: u64) -> Option<u64> {
        self.open_until.filter(|&until| until > now)
    }

    /// Failed attempts in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a success or failure; opens the circuit after too many
    /// failures, and says so in the log. Returns whether the circuit opened
    /// (from closed: a failed probe keeps it open) or closed.
    pub(crate) fn record(&mut self, breaker: &Breaker, name: &str, up: bool) -> Option<Transition> {
        let now = now_ms();
        if up {
            let was_open = self.failures >= breaker.failures;
            if was_open {
                tracing::info!(receiver = name, "receiver is back; resuming its deliveries");
            }
            *self = CircuitState::default();
            return was_open.then_some(Transition::Closed);
        }
        self.failures += 1;
        if self.failures < breaker.failures || self.open_until(now).is_some() {
            return None;
        }
        // Open now, from closed (not a probe that failed: still open).
        let opened = self.open_until.is_none();
        self.cooldown_ms = if self.cooldown_ms == 0 {
            breaker.cooldown_ms
        } else {
            (self.cooldown_ms * 2).min(breaker.max_cooldown_ms)
        };
        self.open_until = Some(now + self.cooldown_ms);
        tracing::warn!(
            receiver = name,
            failures = self.failures,
            "receiver keeps failing; pausing its deliveries for {:?}",
            Duration::from_millis(self.cooldown_ms)
        );
        opened.then_some(Transition::Opened {
            failures: self.failures,
            cooldown_ms: self.cooldown_ms,
        })
    }
}

/// A change of a receiver's circuit, for an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// It opened after `failures` failed attempts in a row, for `cooldown_ms`.
    Opened { failures: u32, cooldown_ms: u64 },
    /// A delivery went through after it had opened.
    Closed,
}

/// What the metrics and the status API show of a receiver.
pub(crate) struct ReceiverView {
    pub name: String,
    pub in_flight: usize,
    pub circuit: Circuit,
    /// Until when it is open (Unix ms).
    pub open_until: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_open_the_circuit_then_a_success_closes_it() {
        let breaker = Breaker {
            failures: 2,
            cooldown_ms: 1_000,
            max_cooldown_ms: 3_000,
        };
        let mut c = CircuitState::default();
        let now = now_ms();
        assert_eq!(c.record(&breaker, "r", false), None);
        assert_eq!(c.circuit(&breaker, now), Circuit::Closed);
        assert_eq!(
            c.record(&breaker, "r", false),
            Some(Transition::Opened {
                failures: 2,
                cooldown_ms: 1_000
            })
        );
        assert_eq!(c.circuit(&breaker, now), Circuit::Open);
        assert!(c.open_until(now).is_some());
        // The pause over: half open, and a failed probe doubles the pause.
        assert_eq!(c.circuit(&breaker, now + 1_001), Circuit::HalfOpen);
        c.open_until = Some(now - 1);
        assert_eq!(
            c.record(&breaker, "r", false),
            None,
            "still open: no change"
        );
        assert_eq!(c.cooldown_ms, 2_000);
        c.open_until = Some(now - 1);
        c.record(&breaker, "r", false);
        assert_eq!(c.cooldown_ms, 3_000, "capped");
        assert_eq!(c.record(&breaker, "r", true), Some(Transition::Closed));
        assert_eq!(c.circuit(&breaker, now), Circuit::Closed);
        assert_eq!(c.record(&breaker, "r", true), None);
        assert_eq!(c.failures(), 0);
    }

    #[test]
    fn with_no_cooldown_only_the_first_failure_past_the_bound_opens_it() {
        let breaker = Breaker {
            failures: 1,
            cooldown_ms: 0,
            max_cooldown_ms: 0,
        };
        let mut c = CircuitState::default();
        assert!(matches!(
            c.record(&breaker, "r", false),
            Some(Transition::Opened { .. })
        ));
        for _ in 0..3 {
            assert_eq!(c.record(&breaker, "r", false), None, "still open");
        }
        assert_eq!(c.record(&breaker, "r", true), Some(Transition::Closed));
    }
}
