//! The command line: what each command takes, parsed apart from running it.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use wasmhooks::config::Config;

#[derive(Parser)]
#[command(
    name = "wasmhooks",
    version,
    about = "A WebAssembly-scriptable webhook engine"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log filter, e.g. `info`, `debug`, or `wasmhooks=debug,wasmhooks::guest=info`.
    #[arg(long, env = "WASMHOOKS_LOG", default_value = "info", global = true)]
    pub(crate) log: String,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Serve the HTTP ingest API with the hooks of a folder.
    Serve(ServeArgs),
    /// Dry-run one hook on one event: print its subscription and outcome as JSON; send nothing.
    Run(RunArgs),
    /// Load and set up every hook of a folder, print a table, exit non-zero if any fails.
    Check(CheckArgs),
    /// Run hooks' test cases (`NAME.test.toml` beside `NAME.wasm`): each an
    /// event and what the hook must do with it, run under the engine's
    /// sandbox and limits, sending nothing. Exits non-zero if a case fails.
    Test(TestArgs),
    /// Inspect or retry the queued deliveries in a state folder (the engine may be running).
    Deliveries(DeliveriesArgs),
    /// The archived events (`[archive]`): export them as JSON lines, for fixtures.
    Events(EventsArgs),
    /// Replay the archived events through a new version of a hook, in dry run (nothing is
    /// sent or stopped), and report what it would change against the live version: events
    /// newly denied or allowed, deliveries per receiver, failures, time per event.
    Simulate(SimulateArgs),
    /// Create a hook folder in a language of your choice that builds with `./build.sh`
    /// and runs on the sample event it comes with.
    New(NewArgs),
    /// A shared hooks bucket on NATS JetStream: publish a folder as the next set of hooks
    /// of every engine on it.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Make a key pair to sign hooks with: NAME.key (secret; keep it off the engines)
    /// and NAME.pub (for the engines' `[trust] keys`).
    Keygen(KeygenArgs),
    /// Sign hook modules: write NAME.sig beside each NAME.wasm, for engines with `[trust]`.
    Sign(SignArgs),
    /// Check hook modules' signatures (NAME.sig) as an engine with `[trust]` would; exits
    /// non-zero if any is refused.
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
pub(crate) enum HooksCommand {
    /// Publish a hooks folder (each NAME.wasm, with its NAME.toml and NAME.sig) as the
    /// bucket's next set: every engine started with `--hooks nats://…` switches to it,
    /// whole, or keeps its set and says why.
    Push(PushArgs),
    /// Which set each engine on the bucket serves, and the last it refused.
    Engines(BucketArgs),
}

#[derive(Args)]
pub(crate) struct BucketArgs {
    /// The bucket's NATS servers, `nats://HOST:PORT` (comma-separated for a cluster).
    /// Defaults to the settings file's `[hooks_bucket] url`.
    #[arg(long, env = "WASMHOOKS_BUCKET")]
    pub(crate) bucket: Option<String>,
    /// The engines' settings file, for its `[hooks_bucket]` (prefix, credentials).
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

impl BucketArgs {
    /// The bucket's settings: the file's, with `--bucket` applied.
    pub(crate) fn bucket(&self) -> Result<wasmhooks::config::BucketConfig> {
        let config = load_config(self.config.as_deref())?;
        let in_file = config.hooks_bucket.is_some();
        let mut bucket = config.hooks_bucket.unwrap_or_default();
        match &self.bucket {
            Some(url) => bucket.url = url.clone(),
            None if in_file => {}
            None => bail!(
                "which bucket? give --bucket nats://HOST:PORT, or --config with a [hooks_bucket]"
            ),
        }
        Ok(bucket)
    }
}

#[derive(Args)]
pub(crate) struct PushArgs {
    /// The hooks folder to publish.
    pub(crate) dir: PathBuf,
    /// Push without loading the folder here first (as `wasmhooks check` does, under the
    /// settings file's limits and `[trust]`): engines refuse a set that does not load.
    #[arg(long, env = "WASMHOOKS_NO_CHECK")]
    pub(crate) no_check: bool,
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
}

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// The key's name: the files NAME.key and NAME.pub.
    pub(crate) name: String,
    /// Where to write them (an existing key is never replaced).
    #[arg(long, env = "WASMHOOKS_KEY_DIR", default_value = ".")]
    pub(crate) dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct SignArgs {
    /// The secret key (NAME.key, from `wasmhooks keygen`).
    #[arg(long, env = "WASMHOOKS_SIGNING_KEY")]
    pub(crate) key: PathBuf,
    /// The hook modules (`.wasm`) to sign.
    #[arg(required = true)]
    pub(crate) hooks: Vec<PathBuf>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// A trusted public key (NAME.pub); repeat for several. Without it, the keys of
    /// `--config`'s `[trust]`.
    #[arg(long = "key", env = "WASMHOOKS_TRUSTED_KEYS", value_delimiter = ',')]
    pub(crate) keys: Vec<PathBuf>,
    /// The engine's settings file, for its `[trust] keys` (`--key` wins over it).
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The hook modules (`.wasm`) to check, each against NAME.sig beside it.
    #[arg(required = true)]
    pub(crate) hooks: Vec<PathBuf>,
}

#[derive(Args)]
pub(crate) struct NewArgs {
    /// The hook's language.
    #[arg(long, env = "WASMHOOKS_LANG", value_enum)]
    pub(crate) lang: crate::new::Lang,
    /// The hook's name: the folder, and `NAME.wasm` once built.
    pub(crate) name: String,
    /// Where to create the folder.
    #[arg(long, env = "WASMHOOKS_NEW_DIR", default_value = ".")]
    pub(crate) dir: PathBuf,
}

/// Where the engines keep their queue (and archive): for the commands
/// that read it while engines run.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The engine's state folder. Defaults to the settings file's `state_dir`, else
    /// `$XDG_STATE_HOME/wasmhooks` or `~/.local/state/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_STATE", global = true)]
    pub(crate) state: Option<PathBuf>,
    /// The engines' queue, if not SQLite in the state folder: `nats://HOST:PORT` (NATS
    /// JetStream; a comma-separated list for a cluster).
    #[arg(long, env = "WASMHOOKS_QUEUE", global = true)]
    pub(crate) queue: Option<String>,
    /// The engines' settings file, for its `queue` (e.g. a NATS prefix or credentials)
    /// and, for `simulate`, its limits.
    #[arg(long, env = "WASMHOOKS_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
}

impl StoreArgs {
    /// The engines' settings, with `--queue` and `--state` applied, checked.
    pub(crate) fn engine_config(&self) -> Result<Config> {
        let mut config = load_config(self.config.as_deref())?;
        if let Some(queue) = &self.queue {
            set_queue(&mut config, queue)?;
        }
        if let Some(state) = &self.state {
            config.state_dir = Some(state.clone());
        }
        config.validate().context("--config / WASMHOOKS_CONFIG")?;
        let nats = matches!(config.queue, wasmhooks::config::QueueConfig::Nats(_));
        if !nats && config.state_dir.is_none() {
            bail!("no state folder: pass --state DIR");
        }
        Ok(config)
    }
}

#[derive(Args)]
pub(crate) struct DeliveriesArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(subcommand)]
    pub(crate) command: DeliveriesCommand,
}

#[derive(Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(subcommand)]
    pub(crate) command: EventsCommand,
}

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Print the archived events (`[archive]` in the engine's settings), oldest first, one
    /// JSON object a line: the event as the hooks saw it (`event`, masked) and what each hook
    /// version decided (`hooks`). `jq -c .event` turns a line into a test fixture.
    Export {
        /// Those archived since then: a time ago (`7d`, `2h`) or an RFC 3339 time.
        #[arg(long, env = "WASMHOOKS_SINCE", default_value = "7d", value_parser = parse_time)]
        since: u64,
        /// Only those of these methods (globs, e.g. `vm.*`); repeat for more.
        #[arg(long)]
        method: Vec<String>,
        /// Only those of this phase.
        #[arg(long, value_parser = ["pre", "post", "observed"])]
        phase: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct SimulateArgs {
    /// The new version's `.wasm` file.
    pub(crate) hook: PathBuf,
    /// The new version's settings, a `NAME.toml` file. Defaults to the `.toml` beside the hook.
    #[arg(long, env = "WASMHOOKS_SETTINGS")]
    pub(crate) settings: Option<PathBuf>,
    /// The live hook to compare with, as the engine names it. Defaults to the file's name.
    #[arg(long = "as", env = "WASMHOOKS_AS")]
    pub(crate) live: Option<String>,
    /// Replay the events archived since then: a time ago (`30d`, `12h`) or an RFC 3339 time.
    #[arg(long, env = "WASMHOOKS_SINCE", default_value = "30d", value_parser = parse_time)]
    pub(crate) since: u64,
    /// Examples shown of each change (newly denied, newly allowed).
    #[arg(long, env = "WASMHOOKS_EXAMPLES", default_value_t = 10)]
    pub(crate) examples: usize,
    /// Print the report as JSON, for CI.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Subcommand)]
pub(crate) enum DeliveriesCommand {
    /// List queued deliveries, oldest first (pending by default).
    List {
        /// Only those that failed at least once and are waiting to be retried.
        #[arg(long, conflicts_with = "dead")]
        failed: bool,
        /// Only dead letters: deliveries that failed for good.
        #[arg(long, conflicts_with = "delivered")]
        dead: bool,
        /// Only delivered deliveries, kept `delivery.history_hours`.
        #[arg(long, conflicts_with = "failed")]
        delivered: bool,
        /// Most rows shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery (pending, dead, or delivered within
    /// `delivery.history_hours`) and its latest attempts: when, how long,
    /// the status, and what the receiver answered.
    Show {
        /// The delivery (its webhook-id, `msg_…`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send deliveries again (replay), each under its webhook-id, with a
    /// fresh retry schedule: one by id, every dead letter, or those a
    /// filter matches (`--dead`, `--failed` or `--delivered`, with
    /// `--hook`, `--receiver`, `--since`, `--until`). Nothing an engine is
    /// sending is taken. These flags have no environment variables: one
    /// left set would silently widen or narrow a later replay.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all_dead", "dead", "failed", "delivered"])))]
    #[command(group(clap::ArgGroup::new("filter").args(["dead", "failed", "delivered"])))]
    Retry {
        /// The delivery (its webhook-id, `msg_…`): a dead letter, a
        /// delivered one, or (SQLite only) a pending one that failed.
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
        /// The dead letters the other options match.
        #[arg(long)]
        dead: bool,
        /// The pending deliveries that failed at least once the other
        /// options match (SQLite only: on NATS any engine may hold one).
        #[arg(long)]
        failed: bool,
        /// The delivered deliveries (within `delivery.history_hours`) the
        /// other options match.
        #[arg(long)]
        delivered: bool,
        /// Only those this hook asked for.
        #[arg(long, requires = "filter")]
        hook: Option<String>,
        /// Only those to this receiver (`host:port`).
        #[arg(long, requires = "filter")]
        receiver: Option<String>,
        /// Only those queued since then: a time ago (`2h`, `30min`) or an
        /// RFC 3339 time (`2026-12-07T09:00:00Z`).
        #[arg(long, requires = "filter", value_parser = parse_time)]
        since: Option<u64>,
        /// Only those queued before then (same forms as --since).
        #[arg(long, requires = "filter", value_parser = parse_time)]
        until: Option<u64>,
        /// Only count them; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters whose delivery was queued more than N days ago
    /// (a running engine does this hourly for `delivery.dead_letter_days`).
    Purge {
        /// Age in days; 0 deletes every dead letter.
        #[arg(long, env = "WASMHOOKS_OLDER_THAN_DAYS")]
        older_than_days: u32,
    },
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Folder of hooks (`NAME.wasm`, each with an optional `NAME.toml`), or a shared
    /// hooks bucket on NATS JetStream, `nats://HOST:PORT` (see `wasmhooks hooks push`).
    #[arg(long, env = "WASMHOOKS_HOOKS", default_value = "hooks")]
    pub(crate) hooks: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "WASMHOOKS_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Engine settings file (TOML; see `Config` in the docs). `--hooks` overrides its `hooks_dir`.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Folder for compiled hooks, so restarts and reloads skip compiling.
    /// Defaults to `$XDG_CACHE_HOME/wasmhooks` or `~/.cache/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_CACHE")]
    pub(crate) cache: Option<PathBuf>,
    /// Folder for the durable queue (`wasmhooks.db`): accepted events and pending
    /// deliveries survive restarts there. Defaults to `$XDG_STATE_HOME/wasmhooks`
    /// or `~/.local/state/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_STATE")]
    pub(crate) state: Option<PathBuf>,
    /// Which queue holds accepted events and deliveries: `sqlite` (the default, in the
    /// state folder), `memory`, or `nats://HOST:PORT` (NATS JetStream, shared by several
    /// engines; a comma-separated list for a cluster). Overrides the settings file's `queue`
    /// (a NATS URL keeps its other NATS settings).
    #[arg(long, env = "WASMHOOKS_QUEUE")]
    pub(crate) queue: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on the API (all but /healthz).
    /// At least 16 characters; prefer the environment variable to the flag,
    /// which other users can see in the process list.
    #[arg(long, env = "WASMHOOKS_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Listen beyond loopback without a token, on a network you trust
    /// entirely: anyone who reaches the API can then read dead letters,
    /// post events and retry deliveries.
    #[arg(long, env = "WASMHOOKS_INSECURE_NO_TOKEN")]
    pub(crate) insecure_no_token: bool,
    /// On SIGTERM or SIGINT, how long to let requests, hook calls and
    /// delivery attempts in flight finish (and commit what they produced)
    /// before exiting, in seconds. A second signal exits at once.
    #[arg(long, env = "WASMHOOKS_GRACE", default_value_t = 10)]
    pub(crate) grace: u64,
    /// Do not hot-reload: load the hooks folder once at start.
    #[arg(long, env = "WASMHOOKS_NO_WATCH")]
    pub(crate) no_watch: bool,
    /// Also serve a demo receiver at /demo/receiver/… that prints what it gets, and
    /// replay the sample events to the engine every two seconds.
    #[arg(long, env = "WASMHOOKS_DEMO")]
    pub(crate) demo: bool,
    /// Export traces (one per event: ingest, each hook call, the commit,
    /// each delivery attempt) over OTLP/HTTP to this URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. Off unless set. Headers for the
    /// collector (an API key) come from OTEL_EXPORTER_OTLP_HEADERS. Empty:
    /// off.
    #[arg(long, env = "WASMHOOKS_OTLP_ENDPOINT", value_parser = crate::telemetry::parse_endpoint)]
    pub(crate) otlp_endpoint: Option<crate::telemetry::Endpoint>,
    /// With --otlp-endpoint, the share of traces recorded, from 0 to 1, for
    /// events whose caller sent no `traceparent`; a caller's decides for its
    /// own (the XO plugin's `traceSampleRatio`). Ignored without it.
    #[arg(long, env = "WASMHOOKS_TRACE_SAMPLE", default_value = "1", value_parser = crate::telemetry::parse_ratio)]
    pub(crate) trace_sample: f64,
}

impl ServeArgs {
    /// Where to send traces, if anywhere.
    pub(crate) fn tracing(&self) -> Option<crate::telemetry::Tracing> {
        let crate::telemetry::Endpoint(Some(endpoint)) = self.otlp_endpoint.clone()? else {
            return None;
        };
        Some(crate::telemetry::Tracing {
            endpoint,
            sample: self.trace_sample,
        })
    }
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The hook's `.wasm` file.
    pub(crate) hook: PathBuf,
    /// The event, a JSON file in the orchestrator's format.
    #[arg(long, env = "WASMHOOKS_EVENT")]
    pub(crate) event: PathBuf,
    /// The hook's settings, a `NAME.toml` file. Defaults to the `.toml` beside the hook.
    #[arg(long, env = "WASMHOOKS_SETTINGS")]
    pub(crate) settings: Option<PathBuf>,
    /// Engine settings file (TOML), for limits.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Test files (`NAME.test.toml`, or any `.toml` in a `NAME.tests/`
    /// folder), or folders holding them. Defaults to the current folder.
    pub(crate) paths: Vec<PathBuf>,
    /// Engine settings file (TOML), for limits.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Also write the results as JUnit XML to this file, for CI.
    #[arg(long, env = "WASMHOOKS_JUNIT")]
    pub(crate) junit: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Folder of hooks.
    pub(crate) dir: PathBuf,
    /// Engine settings file (TOML), for limits.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// The engine settings in `file` (TOML), or the defaults.
pub(crate) fn load_config(file: Option<&Path>) -> Result<Config> {
    let Some(file) = file else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", file.display()))
}

/// A hook's settings file (`NAME.toml`), read and checked.
pub(crate) fn load_hook_settings(file: &Path) -> Result<wasmhooks::config::HookConfig> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read settings file {}", file.display()))?;
    wasmhooks::config::HookConfig::from_toml(&text)
        .with_context(|| format!("settings file {} is not valid", file.display()))
}

/// Applies `--hooks`: a folder, or a hooks bucket's NATS URL (which keeps
/// the settings file's other `[hooks_bucket]` settings).
pub(crate) fn set_hooks(config: &mut Config, hooks: PathBuf) {
    let text = hooks.to_string_lossy();
    if text.starts_with("nats://") || text.starts_with("tls://") {
        let mut bucket = config.hooks_bucket.clone().unwrap_or_default();
        bucket.url = text.into_owned();
        config.hooks_bucket = Some(bucket);
    } else {
        config.hooks_dir = hooks;
    }
}

/// Applies `--queue`: `sqlite`, `memory` or a NATS URL.
pub(crate) fn set_queue(config: &mut Config, queue: &str) -> Result<()> {
    use wasmhooks::config::{NatsConfig, QueueConfig};
    config.queue = match queue {
        "sqlite" => QueueConfig::Sqlite,
        "memory" => QueueConfig::Memory,
        url if url.starts_with("nats://") || url.starts_with("tls://") => {
            let mut nats = match &config.queue {
                QueueConfig::Nats(nats) => nats.clone(),
                _ => NatsConfig::default(),
            };
            nats.url = url.to_owned();
            QueueConfig::Nats(nats)
        }
        other => {
            bail!("--queue / WASMHOOKS_QUEUE: {other:?} is not sqlite, memory or a nats:// URL")
        }
    };
    Ok(())
}

/// A time as Unix ms: a duration ago (`2h`), or an RFC 3339 time.
fn parse_time(text: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).ok_or("too long ago")?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!("{text:?} is neither a time ago (2h, 30min) nor an RFC 3339 time")
        })?,
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?
        .as_millis();
    Ok(ms as u64)
}
