//! Settings: the engine's [`Config`] and each hook's `NAME.toml` ([`HookConfig`]).

use crate::error::SettingsError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The engine's settings. Every field has a default; a TOML or JSON file with
/// an unknown key is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder holding the hooks: `NAME.wasm`, each with an optional `NAME.toml`.
    pub hooks_dir: PathBuf,
    /// Watch the hooks folder and hot-reload hooks as their files change.
    /// With `watch` on, the folder may also be missing at start.
    pub watch: bool,
    /// A hook file written in place is loaded once its writer closes it, or
    /// once it has been quiet this long (ms), whichever comes first.
    pub settle_ms: u64,
    /// How often the whole folder is rescanned in case a file event was
    /// missed (ms).
    pub rescan_ms: u64,
    /// Folder for compiled hooks, keyed by content hash and engine
    /// fingerprint, so a restart does not recompile. `None` turns it off.
    pub cache_dir: Option<PathBuf>,
    /// Folder for the durable queue (`wasmhooks.db`, SQLite): accepted post
    /// events and pending deliveries survive a crash or restart there. One
    /// engine at a time may use a folder. `None` keeps the queue in memory:
    /// then a crash loses what was pending.
    pub state_dir: Option<PathBuf>,
    /// Which queue holds accepted events and deliveries: `"sqlite"` (the
    /// default: `wasmhooks.db` in `state_dir`, or in memory without one),
    /// `"memory"` (SQLite in memory: a crash loses what was pending) or
    /// `{ nats = { url = "nats://…" } }` (NATS JetStream, shared by several
    /// engines).
    pub queue: QueueConfig,
    /// How long an accepted event is recognised when it is sent again (a
    /// client retrying after a timeout), in seconds: the same method, call
    /// id and phase within this window is answered as the first one was,
    /// with no second set of deliveries. 0 accepts every copy.
    pub dedup_window_secs: u64,
    /// Wait for the disk on every commit (SQLite `synchronous = FULL`), so an
    /// accepted event survives a power loss too; `false` survives a crash of
    /// the process only, and commits faster.
    pub fsync: bool,
    /// How long `post()` waits for the hooks to finish (ms), so that their
    /// deliveries are committed in one write before it returns. Slower
    /// hooks get the event journaled instead (one more write), and finish
    /// in the background. 0 journals every event.
    pub post_inline_ms: u64,
    /// Limits for hooks whose `NAME.toml` does not set its own.
    pub limits: Limits,
    /// How many WASM calls may run at once. Sizes the instance pool; more
    /// calls wait for a free slot rather than fail.
    pub max_concurrent_calls: u32,
    /// Warm instances kept across all hooks that opt into `[reuse]`, on top
    /// of `max_concurrent_calls` in the instance pool. When they are all
    /// taken, a reusing hook runs fresh instances instead.
    pub max_warm_instances: u32,
    /// Methods (globs) whose post event `result` is replaced by
    /// `"* obfuscated *"` before any hook sees it, because it is a secret
    /// (`token.create` returns the new token in clear).
    pub redact_results: Vec<String>,
    /// Most deliveries one hook may ask for on one event. A hook asking
    /// for more fails on that event (`CallError::BadOutcome`), logged and
    /// counted, and nothing of its outcome is sent.
    pub max_deliveries_per_event: usize,
    /// Largest body one delivery may have, in bytes. Larger is a bad
    /// outcome, like too many deliveries.
    pub max_body_bytes: usize,
    /// Most headers one delivery may have; more is a bad outcome.
    pub max_headers_per_delivery: usize,
    /// Most bytes of header names and values one delivery may have; more
    /// is a bad outcome.
    pub max_header_bytes: usize,
    /// How deliveries are sent.
    pub delivery: DeliveryConfig,
    /// Limits on the HTTP API's clients.
    pub http: HttpConfig,
    /// Event sources the engine reads by itself, such as XO's event stream.
    pub sources: SourcesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hooks_dir: PathBuf::from("hooks"),
            watch: true,
            settle_ms: 2_000,
            rescan_ms: 30_000,
            cache_dir: default_cache_dir(),
            state_dir: default_state_dir(),
            queue: QueueConfig::Sqlite,
            dedup_window_secs: 6 * 3600,
            fsync: true,
            post_inline_ms: 20,
            limits: Limits::default(),
            max_concurrent_calls: 128,
            max_warm_instances: 16,
            redact_results: vec!["token.create".into()],
            max_deliveries_per_event: 32,
            max_body_bytes: 1024 * 1024,
            max_headers_per_delivery: 64,
            max_header_bytes: 16 * 1024,
            delivery: DeliveryConfig::default(),
            http: HttpConfig::default(),
            sources: SourcesConfig::default(),
        }
    }
}

/// Event sources the engine reads by itself (see [`crate::sources`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Xen Orchestra's event stream (`GET /rest/v0/events`): changes to
    /// XO's objects, whoever made them, as observed events. Needs no XO
    /// plugin.
    pub xo: Option<XoSourceConfig>,
}

/// `[sources.xo]`: XO's event stream as a source of observed events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XoSourceConfig {
    /// XO's base URL, e.g. `https://xo.example.org` (its REST API is under
    /// `/rest/v0`).
    pub url: String,
    /// An XO authentication token (XO's user page, or `xo-cli
    /// token.create`), sent as XO's `authenticationToken` cookie. Or
    /// `env:NAME` / `file:PATH` (absolute) to read it from there at start.
    /// Never logged.
    pub token: SecretString,
    /// The collections to watch (XO's object types: `VM`, `host`, `SR`,
    /// `pool`, `alarm`, `task`, …), each with the fields whose changes
    /// count (`["*"]`: all of them; `id` is always read). By default `VM`
    /// and `host` power state and name, every `alarm`, and `task` status.
    #[serde(default = "default_collections")]
    pub collections: std::collections::BTreeMap<String, Vec<String>>,
    /// Objects whose last state is kept, to tell what changed (the least
    /// recently changed go first; a change to one no longer kept has no
    /// `previous`).
    #[serde(default = "default_max_objects")]
    pub max_objects: usize,
    /// Observed events waiting for the engine to accept them; past this,
    /// the stream is read again from scratch (a `resync`), so none is
    /// silently lost and a slow hook never holds the stream.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// The longest pause between reconnection attempts (ms); they start at
    /// a quarter of a second and double.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A stream silent this long (XO pings every 30 s) is taken for dead
    /// and opened again (ms).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A PEM file with the certificate authority of XO's HTTPS certificate,
    /// if it is not one the system trusts (XO's self-signed default).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from XO. Only for a test bed: anyone on the
    /// path could read the token.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

/// A secret setting: read as a string, never printed or written back.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The secret, to use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString(s)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

fn default_collections() -> std::collections::BTreeMap<String, Vec<String>> {
    let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect();
    [
        ("VM", fields(&["power_state", "name_label"])),
        ("host", fields(&["power_state", "name_label", "enabled"])),
        ("alarm", fields(&["*"])),
        ("task", fields(&["status", "properties", "start", "end"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn default_max_objects() -> usize {
    100_000
}

fn default_max_pending() -> usize {
    10_000
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    90_000
}

impl XoSourceConfig {
    fn validate(&self) -> Result<(), SettingsError> {
        let f = |name: &str| format!("sources.xo.{name}");
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(SettingsError::field(
                    &f("url"),
                    format!(
                        "{:?} is not an http(s) URL such as https://xo.example.org",
                        self.url
                    ),
                ));
            }
        }
        if self.token.expose().trim().is_empty() {
            return Err(SettingsError::field(
                &f("token"),
                "is empty: give an XO authentication token, or env:NAME / file:PATH",
            ));
        }
        if self.collections.is_empty() {
            return Err(SettingsError::field(
                &f("collections"),
                "is empty: name at least one, e.g. VM = [\"power_state\"]",
            ));
        }
        for (name, fields) in &self.collections {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(SettingsError::field(
                    &f("collections"),
                    format!("{name:?} is not an XO collection name (letters, digits and -)"),
                ));
            }
            if fields.is_empty() || fields.iter().any(|x| x.is_empty() || x.contains(',')) {
                return Err(SettingsError::field(
                    &format!("sources.xo.collections.{name}"),
                    "lists the fields to watch: at least one, no empty name or comma, or [\"*\"]",
                ));
            }
        }
        for (name, value, least) in [
            ("max_objects", self.max_objects as u64, 1),
            ("max_pending", self.max_pending as u64, 1),
            ("reconnect_max_ms", self.reconnect_max_ms, 250),
            ("idle_timeout_ms", self.idle_timeout_ms, 1_000),
        ] {
            if value < least {
                return Err(SettingsError::field(
                    &f(name),
                    format!("{value} is less than {least}"),
                ));
            }
        }
        Ok(())
    }

    /// The token, with an `env:` or `file:` reference read.
    pub fn resolve_token(&self) -> Result<String, SettingsError> {
        Secrets::One(self.token.expose().to_owned())
            .resolve(Path::new("/"))
            .map(|mut t| t.remove(0))
    }
}

/// Limits on the HTTP API's clients ([`crate::server::serve`] and
/// [`crate::server::router`]), so that slow or idle clients cannot hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections served at once. Past this, a few more
    /// ([`crate::server::OVERFLOW_CONNECTIONS`]) get one short answer and are
    /// closed: `/healthz` as usual, anything else 503 with `Retry-After`;
    /// connections beyond those are closed at once.
    pub max_connections: usize,
    /// How long a client has to send a request's line and headers (ms),
    /// from when its connection opens or its previous answer was sent: also
    /// how long an idle keep-alive connection is kept. Then it is closed.
    pub header_timeout_ms: u64,
    /// How long a client has to send a request's body once its headers are
    /// in (ms). Then it gets 408 and the connection is closed.
    pub body_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 512,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

/// Which queue backend an engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// SQLite: `wasmhooks.db` in `state_dir` (in memory if that is `None`).
    #[default]
    Sqlite,
    /// SQLite in memory, whatever `state_dir` says.
    Memory,
    /// NATS JetStream, which several engines can share: `queue = { nats =
    /// { url = "nats://127.0.0.1:4222" } }`. `state_dir` is not used for
    /// the queue then.
    Nats(NatsConfig),
}

/// A queue on NATS JetStream (see the README, "Several engines").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The servers, comma-separated (`nats://a:4222,nats://b:4222`). A user
    /// and password, or a token, may be in a URL (`nats://user:pass@host`).
    pub url: String,
    /// Copies JetStream keeps of each stream: 1, or 3 (or 5) on a cluster,
    /// so that an accepted event survives losing a node. Applies when the
    /// streams are created; an existing stream keeps its own.
    pub replicas: usize,
    /// Prefix of the streams (`PREFIX_DELIVERIES`…) and subjects
    /// (`PREFIX.d.…`), so that several deployments can share one NATS
    /// account: letters, digits and `_` only.
    pub prefix: String,
    /// How long an engine's claim on a delivery lasts without being renewed
    /// (ms): an engine that dies mid-attempt loses its claims after this
    /// (plus `delivery.timeout_ms` for a delivery it was sending as it
    /// queued it), and another engine sends them. A live engine renews its
    /// claims every third of it.
    pub ack_wait_ms: u64,
    /// A NATS credentials file (`.creds`: a user JWT and its key), if the
    /// server wants one.
    pub credentials: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            prefix: "WASMHOOKS".into(),
            ack_wait_ms: 30_000,
            credentials: None,
        }
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.url.trim().is_empty() {
            return Err(SettingsError::field("queue.nats.url", "is empty"));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(SettingsError::field(
                "queue.nats.replicas",
                format!("{} is not between 1 and 5", self.replicas),
            ));
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(SettingsError::field(
                "queue.nats.prefix",
                format!("{:?} must be letters, digits and _ only", self.prefix),
            ));
        }
        if self.ack_wait_ms < 1_000 {
            return Err(SettingsError::field(
                "queue.nats.ack_wait_ms",
                format!("{} is less than a second", self.ack_wait_ms),
            ));
        }
        Ok(())
    }
}

/// Longest dedup window: a week.
const MAX_DEDUP_WINDOW_SECS: u64 = 7 * 86_400;

impl Config {
    /// Checks the settings that no type can: called once, by [`crate::Engine::new`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let QueueConfig::Nats(nats) = &self.queue {
            nats.validate()?;
        }
        if let Some(xo) = &self.sources.xo {
            xo.validate()?;
        }
        if self.dedup_window_secs > MAX_DEDUP_WINDOW_SECS {
            return Err(SettingsError::field(
                "dedup_window_secs",
                format!(
                    "{} is more than a week ({MAX_DEDUP_WINDOW_SECS})",
                    self.dedup_window_secs
                ),
            ));
        }
        let d = &self.delivery;
        for (field, value) in [
            ("delivery.concurrency", d.concurrency),
            (
                "delivery.per_receiver_concurrency",
                d.per_receiver_concurrency,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::field(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            ("http.max_connections", self.http.max_connections as u64),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
        ] {
            if value == 0 {
                return Err(SettingsError::field(field, "must be at least 1"));
            }
        }
        if d.per_receiver_concurrency > d.concurrency {
            return Err(SettingsError::field(
                "delivery.per_receiver_concurrency",
                format!(
                    "{} is more than delivery.concurrency = {}: one receiver could then take \
                     every slot",
                    d.per_receiver_concurrency, d.concurrency
                ),
            ));
        }
        Ok(())
    }
}

/// `$XDG_STATE_HOME/wasmhooks`, else `$HOME/.local/state/wasmhooks`, else none.
pub fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("wasmhooks"))
}

/// `$XDG_CACHE_HOME/wasmhooks`, else `$HOME/.cache/wasmhooks`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("wasmhooks"))
}

/// Per-call limits: defaults, and the most a hook's `NAME.toml` may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time one event may take in a hook, `setup` included, in ms.
    pub deadline_ms: u64,
    /// Memory one hook instance may use, in MiB.
    pub memory_mib: u32,
    /// The largest `deadline_ms` a `NAME.toml` may set.
    pub max_deadline_ms: u64,
    /// The largest `memory_mib` a `NAME.toml` may set. Also sizes the pool's
    /// per-instance memory slots.
    pub max_memory_mib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 100,
            memory_mib: 64,
            max_deadline_ms: 10_000,
            max_memory_mib: 512,
        }
    }
}

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
        }
    }
}

/// What a pre event's verdict does when this hook fails (traps, times out or
/// returns an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The operation goes ahead (the default: a broken hook does not block the orchestrator).
    #[default]
    Allow,
    /// The operation is vetoed: for gate hooks that must say yes.
    Deny,
}

/// Whether a hook's vetoes stop the operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// A veto stops the operation (the default).
    #[default]
    Enforce,
    /// A veto (its `on_error` included) is counted, logged and shown in the
    /// verdict's `would_deny`, and the operation goes ahead: for trying a
    /// new gate on live traffic before enforcing it.
    Monitor,
}

/// A hook's `NAME.toml`: its settings, and what the operator decides for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Handed to the hook's `setup` as JSON text.
    #[serde(default)]
    pub settings: toml::Table,
    /// Wall-clock deadline per event, in ms. Defaults to the engine's.
    pub deadline_ms: Option<u64>,
    /// Memory cap, in MiB. Defaults to the engine's.
    pub memory_mib: Option<u32>,
    /// For pre events: send this hook's deliveries before the verdict returns,
    /// like the orchestrator's "wait for response" option. A delivery that
    /// fails for good then counts as a hook failure (see `on_error`).
    #[serde(default)]
    pub wait: bool,
    /// What a pre event's verdict does when this hook fails.
    #[serde(default)]
    pub on_error: OnError,
    /// `enforce` (the default) or `monitor`: whether this hook's vetoes stop
    /// the operation, or are only counted and reported as `would_deny`.
    #[serde(default)]
    pub mode: HookMode,
    /// Where this hook's deliveries may go beyond public addresses:
    /// hostnames (`cmdb.internal`, `*.corp.example`), IPs and CIDRs
    /// (`10.0.0.0/8`). Loopback, private, link-local and other non-public
    /// addresses are refused otherwise.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Signs this hook's deliveries per Standard Webhooks: a `whsec_…`
    /// secret (HMAC-SHA256) or a `whsk_…` key (ed25519), or a list of them
    /// while rotating (each one signs). Each may instead be `env:NAME` or
    /// `file:PATH`, read at load. Never logged.
    #[serde(default, skip_serializing)]
    pub secret: Secrets,
    /// For a WASI command hook only, which has no `setup` to say so: the
    /// events it wants. A component hook's `setup` returns its own.
    pub subscription: Option<SubscriptionConfig>,
    /// Serve events from warm instances instead of a fresh one per event
    /// (component hooks only). Faster for heavy runtimes (Python, JS), at
    /// the cost of isolation: state left by one event is seen by the next.
    pub reuse: Option<ReuseConfig>,
    /// Start every fresh instance from the state `setup` left at load (a
    /// snapshot made with wasmtime-wizer) instead of running `setup` before
    /// each event (component hooks only). Pays off when `setup` is costly;
    /// costs two more compiles when the hook loads, and freezes whatever
    /// `setup` read from a clock or random source. A hook that cannot be
    /// snapshotted is set up per event, and the log says why.
    #[serde(default)]
    pub preinitialize: bool,
}

/// `[reuse]` of a hook's `NAME.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseConfig {
    /// Events one instance serves before it is replaced (1..=100000). It is
    /// replaced sooner after a trap, a timeout or hitting the memory cap.
    pub events: u32,
    /// Warm instances kept for this hook (1..=16).
    #[serde(default = "one")]
    pub instances: u32,
    /// Seconds a warm instance may sit idle (1..=86400, default 60). Then it
    /// is dropped and its memory given back; the next event sets up a new one.
    #[serde(default = "a_minute")]
    pub idle_secs: u32,
}

fn one() -> u32 {
    1
}

fn a_minute() -> u32 {
    60
}

/// `[subscription]` of a WASI command hook's `NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Method globs, e.g. `["vm.*", "backupNg.runJob"]`.
    pub methods: Vec<String>,
    /// Phases wanted: `["pre"]`, `["post"]` or both.
    pub phases: Vec<crate::event::Phase>,
}

/// One signing secret, or several during a rotation.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Secrets {
    /// No signing.
    #[default]
    None,
    /// One secret.
    One(String),
    /// Several: each one signs every delivery.
    Many(Vec<String>),
}

impl Secrets {
    /// The secrets, in order, as written.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Secrets::None => vec![],
            Secrets::One(s) => vec![s],
            Secrets::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The secrets, with references read: `env:NAME` is the environment
    /// variable NAME, `file:PATH` the content of a file (trimmed; a relative
    /// PATH is in `dir`, the hooks folder). So `NAME.toml` need not hold a
    /// secret itself. Read when the hook loads.
    pub fn resolve(&self, dir: &Path) -> Result<Vec<String>, SettingsError> {
        self.list()
            .into_iter()
            .map(|secret| {
                if let Some(var) = secret.strip_prefix("env:") {
                    std::env::var(var).map_err(|_| {
                        SettingsError::Secret(format!(
                            "the environment variable {var} is not set (or not UTF-8)"
                        ))
                    })
                } else if let Some(file) = secret.strip_prefix("file:") {
                    let path = dir.join(file);
                    let unreadable = |why: String| {
                        SettingsError::Secret(format!("cannot read {}: {why}", path.display()))
                    };
                    let bytes = crate::files::read_regular(&path, crate::files::MAX_SECRET_BYTES)
                        .map_err(|e| unreadable(e.to_string()))?;
                    String::from_utf8(bytes)
                        .map(|text| text.trim().to_owned())
                        .map_err(|_| unreadable("it is not UTF-8 text".into()))
                } else {
                    Ok(secret.to_owned())
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} secrets, redacted]", self.list().len())
    }
}

/// Hides anything that looks like a signing secret (a TOML error quotes
/// the line at fault, which may hold one).
fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["whsec_", "whsk_"]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (i, prefix) = at;
        out.push_str(&rest[..i + prefix]);
        out.push('…');
        rest = &rest[i + prefix..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)))
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A hook's limits, resolved against the engine's defaults and maxima.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HookLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

impl HookConfig {
    /// Parses `NAME.toml` text.
    pub fn from_toml(text: &str) -> Result<HookConfig, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Toml(redact_secrets(&e.to_string())))
    }

    /// The settings as the JSON text `setup` receives.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.settings).expect("TOML values always convert to JSON")
    }

    /// Resolves limits, refusing values above the engine's maxima.
    pub(crate) fn limits(&self, engine: &Limits) -> Result<HookLimits, String> {
        let deadline_ms = self.deadline_ms.unwrap_or(engine.deadline_ms);
        if deadline_ms == 0 || deadline_ms > engine.max_deadline_ms {
            return Err(format!(
                "deadline_ms = {deadline_ms} is outside 1..={}",
                engine.max_deadline_ms
            ));
        }
        let memory_mib = self.memory_mib.unwrap_or(engine.memory_mib);
        if memory_mib == 0 || memory_mib > engine.max_memory_mib {
            return Err(format!(
                "memory_mib = {memory_mib} is outside 1..={}",
                engine.max_memory_mib
            ));
        }
        if let Some(r) = self.reuse
            && (!(1..=100_000).contains(&r.events)
                || !(1..=16).contains(&r.instances)
                || !(1..=86_400).contains(&r.idle_secs))
        {
            return Err(format!(
                "[reuse] events = {}, instances = {} and idle_secs = {} must be within \
                 1..=100000, 1..=16 and 1..=86400",
                r.events, r.instances, r.idle_secs
            ));
        }
        Ok(HookLimits {
            deadline: Duration::from_millis(deadline_ms),
            memory_bytes: memory_mib as usize * 1024 * 1024,
        })
    }
}
