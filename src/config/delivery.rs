//! `[delivery]`: how deliveries are POSTed and retried.

use serde::{Deserialize, Serialize};

/// How deliveries are POSTed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Time to establish a connection, in ms.
    pub connect_timeout_ms: u64,
    /// Time for a whole request, response included, in ms.
    pub timeout_ms: u64,
    /// Most requests in flight at once, across all receivers.
    pub concurrency: usize,
    /// Most requests in flight at once to one receiver (host and port). Keep
    /// it well below `concurrency`, so a slow receiver cannot take every slot.
    pub per_receiver_concurrency: usize,
    /// Failed attempts in a row to one receiver that open its circuit: its
    /// deliveries pause, then one probe is sent; success resumes them.
    pub breaker_failures: u32,
    /// First pause of an open circuit, in ms; it doubles after each failed probe.
    pub breaker_cooldown_ms: u64,
    /// Longest pause of an open circuit, in ms.
    pub breaker_max_cooldown_ms: u64,
    /// Delay before each retry, in ms; the first attempt is immediate. The
    /// delivery fails for good once the list is spent. Each delay gets
    /// ±`jitter` of itself at random.
    pub retry_schedule_ms: Vec<u64>,
    /// Random spread applied to each delay, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
    /// Longest `Retry-After` honoured, in ms; longer values are capped.
    pub max_retry_after_ms: u64,
    /// Where every hook's deliveries may go beyond public addresses (added
    /// to each hook's own `allow_hosts`): hostnames, IPs and CIDRs.
    pub allow_hosts: Vec<String>,
    /// Longest a pre event's caller waits for a `wait` hook's deliveries to
    /// be delivered or fail for good, retries included, in ms. They are sent
    /// like every other delivery (same slots, breaker, schedule); one not
    /// through by then carries on in the background, and counts as the hook
    /// failing.
    pub wait_budget_ms: u64,
    /// Days a dead letter is kept (counted from when its delivery was
    /// queued) for inspection and `retry`; older ones are deleted, hourly.
    /// 0 keeps them until deleted by hand (`wasmhooks deliveries purge`).
    pub dead_letter_days: u32,
    /// Hours a delivered delivery is kept, with its attempts, after it was
    /// delivered: to see what the receiver answered, and to replay it. 0
    /// keeps none (a delivered delivery leaves the queue at once).
    pub history_hours: u32,
    /// Attempts kept per delivery, the latest: when each began, how long it
    /// took, the status, the response's first 4 KiB and a few of its
    /// headers. 0 keeps none, and response bodies are not read.
    pub history_attempts: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            concurrency: 64,
            per_receiver_concurrency: 8,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            breaker_max_cooldown_ms: 600_000,
            retry_schedule_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            jitter: 0.2,
            max_retry_after_ms: 3_600_000,
            allow_hosts: Vec::new(),
            wait_budget_ms: 15_000,
            dead_letter_days: 30,
            history_hours: 24,
            history_attempts: 10,
        }
    }
}
