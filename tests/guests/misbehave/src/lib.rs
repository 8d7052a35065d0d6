//! `misbehave`: a test-only hook whose `mode` setting picks how it behaves,
//! well or badly, so the engine's guards can be tested.

use std::hint::black_box;
use std::time::Duration;

use serde::Deserialize;
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription, settings_error};

/// This build's version mark, sent as `x-version` (echo) or as the reason
/// (deny without `mark`). Tests make new versions of the component by
/// patching these bytes in the `.wasm`: same length, different content.
static VERSION: [u8; 16] = *b"wasmhooks-ver-00";

fn version() -> &'static str {
    std::str::from_utf8(black_box(&VERSION)).unwrap_or("?")
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// One delivery of the payload to `url`, headers `x-mark`, `x-call-id`
    /// and `x-version`, after `delay_ms` if set, `headers` more distinct
    /// ones if set, and `authorization` as its `Authorization` if set.
    Echo,
    /// Spins forever.
    Loop,
    /// Spins for `delay_ms` (wall clock), then skips, or with `body_bytes`
    /// returns one delivery to `url` with a body that long (which the host
    /// copies out of its memory in one go).
    Busy,
    /// Allocates and touches memory without bound.
    Alloc,
    /// Panics, which traps.
    Trap,
    /// Returns `Err("refused on purpose")`.
    Error,
    /// Denies with `mark` (else the version mark) as the reason, no deliveries.
    Deny,
    /// Sleeps for an hour.
    Sleep,
    /// Denies with the number of events this instance has handled (so "1"
    /// on every event in a fresh instance per event); traps on the
    /// `trap_at`-th one if set, and prints `print_bytes` to stdout on each
    /// if set. For instance reuse.
    Count,
    /// Denies with the time `setup` read from the clock (nanoseconds since
    /// the epoch): the same on every event when fresh instances start from
    /// the state `setup` left at load, different when `setup` runs in each.
    Stamp,
}

/// Events this instance handled (Count mode).
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[derive(Deserialize)]
struct Settings {
    mode: Mode,
    url: Option<String>,
    mark: Option<String>,
    delay_ms: Option<u64>,
    init_error: Option<String>,
    trap_at: Option<u32>,
    print_bytes: Option<usize>,
    headers: Option<usize>,
    body_bytes: Option<usize>,
    /// The `Authorization` header of an echo's delivery.
    authorization: Option<String>,
    /// Printed to stdout by `setup`.
    setup_print: Option<String>,
    #[serde(default = "wasmhooks_sdk::all_methods")]
    methods: Vec<String>,
    #[serde(
        default = "wasmhooks_sdk::both_phases",
        deserialize_with = "wasmhooks_sdk::deserialize_phases"
    )]
    phases: Vec<Phase>,
}

struct Misbehave {
    mode: Mode,
    url: String,
    mark: String,
    delay: Option<Duration>,
    trap_at: Option<u32>,
    print_bytes: usize,
    headers: usize,
    body_bytes: usize,
    authorization: Option<String>,
    /// What `setup` read from the clock (Stamp mode).
    stamp: u128,
}

impl Hook for Misbehave {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        if let Some(err) = s.init_error {
            return Err(err);
        }
        if let Some(line) = &s.setup_print {
            println!("{line}");
        }
        let url = match (s.mode, s.url) {
            (_, Some(url)) => url,
            (Mode::Echo, None) => return Err(settings_error("mode \"echo\" needs `url`")),
            (_, None) => String::new(),
        };
        let hook = Misbehave {
            mode: s.mode,
            url,
            mark: s.mark.unwrap_or_default(),
            delay: s.delay_ms.map(Duration::from_millis),
            trap_at: s.trap_at,
            print_bytes: s.print_bytes.unwrap_or(0),
            headers: s.headers.unwrap_or(0),
            body_bytes: s.body_bytes.unwrap_or(0),
            authorization: s.authorization,
            stamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        };
        Ok((hook, Subscription::new(s.methods, s.phases)))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        match self.mode {
            Mode::Echo => {
                if let Some(delay) = self.delay {
                    std::thread::sleep(delay);
                }
                let mut delivery = event
                    .forward_to(&self.url)
                    .with_header("x-mark", self.mark.as_str())
                    .with_header("x-call-id", event.call_id.as_str())
                    .with_header("x-version", version());
                for i in 0..self.headers {
                    delivery = delivery.with_header(format!("x-bomb-{i}"), "1");
                }
                if let Some(authorization) = &self.authorization {
                    delivery = delivery.with_header("authorization", authorization.as_str());
                }
                Ok(Outcome::deliver(vec![delivery]))
            }
            Mode::Loop => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Mode::Busy => {
                let until = std::time::Instant::now() + self.delay.unwrap_or_default();
                let mut n = 0u64;
                while std::time::Instant::now() < until {
                    n = black_box(n.wrapping_add(1));
                }
                Ok(match self.body_bytes {
                    0 => Outcome::skip(),
                    n => Outcome::deliver(vec![wasmhooks_sdk::Delivery::new(
                        self.url.as_str(),
                        vec![b'x'; n],
                    )]),
                })
            }
            Mode::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    black_box(&mut hoard);
                }
            }
            Mode::Trap => panic!("misbehave: trap on purpose"),
            Mode::Error => Err("refused on purpose".to_string()),
            Mode::Deny if self.mark.is_empty() => Ok(Outcome::deny(version())),
            Mode::Deny => Ok(Outcome::deny(self.mark.as_str())),
            Mode::Sleep => {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(Outcome::skip())
            }
            Mode::Count => {
                let n = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if self.trap_at == Some(n) {
                    panic!("misbehave: trap on event {n} of this instance");
                }
                if self.print_bytes > 0 {
                    println!("{}", "x".repeat(self.print_bytes - 1));
                }
                Ok(Outcome::deny(n.to_string()))
            }
            Mode::Stamp => Ok(Outcome::deny(self.stamp.to_string())),
        }
    }
}

wasmhooks_sdk::hook!(Misbehave);
