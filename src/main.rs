//! The `wasmhooks` command: clap → Config → library.

mod demo;
mod scaffold;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmhooks::{Config, DeadLetters, DeliveryState, Engine, Event, HookConfig, HookState};

#[derive(Parser)]
#[command(
    name = "wasmhooks",
    version,
    about = "A WebAssembly-scriptable webhook engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info`, `debug`, or `wasmhooks=debug,wasmhooks::guest=info`.
    #[arg(long, env = "WASMHOOKS_LOG", default_value = "info", global = true)]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP ingest API with the hooks of a folder.
    Serve(ServeArgs),
    /// Dry-run one hook on one event: print its subscription and outcome as JSON; send nothing.
    Run(RunArgs),
    /// Load and set up every hook of a folder, print a table, exit non-zero if any fails.
    Check(CheckArgs),
    /// Inspect or retry the queued deliveries in a state folder (the engine may be running).
    Deliveries(DeliveriesArgs),
    /// Create a hook folder in a language of your choice that builds with `./build.sh`
    /// and runs on the sample event it comes with.
    New(NewArgs),
}

#[derive(Args)]
struct NewArgs {
    /// The hook's language.
    #[arg(long, env = "WASMHOOKS_LANG", value_enum)]
    lang: scaffold::Lang,
    /// The hook's name: the folder, and `NAME.wasm` once built.
    name: String,
    /// Where to create the folder.
    #[arg(long, env = "WASMHOOKS_NEW_DIR", default_value = ".")]
    dir: PathBuf,
}

#[derive(Args)]
struct DeliveriesArgs {
    /// The engine's state folder. Defaults to `$XDG_STATE_HOME/wasmhooks` or `~/.local/state/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_STATE", global = true)]
    state: Option<PathBuf>,
    /// The engines' queue, if not SQLite in the state folder: `nats://HOST:PORT` (NATS
    /// JetStream; a comma-separated list for a cluster).
    #[arg(long, env = "WASMHOOKS_QUEUE", global = true)]
    queue: Option<String>,
    /// The engines' settings file, for its `queue` (e.g. a NATS prefix or credentials).
    #[arg(long, env = "WASMHOOKS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: DeliveriesCommand,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List queued deliveries, oldest first (pending by default).
    List {
        /// Only those that failed at least once and are waiting to be retried.
        #[arg(long, conflicts_with = "dead")]
        failed: bool,
        /// Only dead letters: deliveries that failed for good.
        #[arg(long)]
        dead: bool,
        /// Most rows shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again, with a fresh retry schedule.
    Retry {
        /// The delivery (its webhook-id, `msg_…`).
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
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
struct ServeArgs {
    /// Folder of hooks (`NAME.wasm`, each with an optional `NAME.toml`).
    #[arg(long, env = "WASMHOOKS_HOOKS", default_value = "hooks")]
    hooks: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "WASMHOOKS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Engine settings file (TOML; see `Config` in the docs). `--hooks` overrides its `hooks_dir`.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    config: Option<PathBuf>,
    /// Folder for compiled hooks, so restarts and reloads skip compiling.
    /// Defaults to `$XDG_CACHE_HOME/wasmhooks` or `~/.cache/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_CACHE")]
    cache: Option<PathBuf>,
    /// Folder for the durable queue (`wasmhooks.db`): accepted events and pending
    /// deliveries survive restarts there. Defaults to `$XDG_STATE_HOME/wasmhooks`
    /// or `~/.local/state/wasmhooks`.
    #[arg(long, env = "WASMHOOKS_STATE")]
    state: Option<PathBuf>,
    /// Which queue holds accepted events and deliveries: `sqlite` (the default, in the
    /// state folder), `memory`, or `nats://HOST:PORT` (NATS JetStream, shared by several
    /// engines; a comma-separated list for a cluster). Overrides the settings file's `queue`
    /// (a NATS URL keeps its other NATS settings).
    #[arg(long, env = "WASMHOOKS_QUEUE")]
    queue: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on the API (all but /healthz).
    /// At least 16 characters; prefer the environment variable to the flag,
    /// which other users can see in the process list.
    #[arg(long, env = "WASMHOOKS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Listen beyond loopback without a token, on a network you trust
    /// entirely: anyone who reaches the API can then read dead letters,
    /// post events and retry deliveries.
    #[arg(long, env = "WASMHOOKS_INSECURE_NO_TOKEN")]
    insecure_no_token: bool,
    /// On SIGTERM or SIGINT, how long to let requests, hook calls and
    /// delivery attempts in flight finish (and commit what they produced)
    /// before exiting, in seconds. A second signal exits at once.
    #[arg(long, env = "WASMHOOKS_GRACE", default_value_t = 10)]
    grace: u64,
    /// Do not hot-reload: load the hooks folder once at start.
    #[arg(long, env = "WASMHOOKS_NO_WATCH")]
    no_watch: bool,
    /// Also serve a demo receiver at /demo/receiver/… that prints what it gets, and
    /// replay the sample events to the engine every two seconds.
    #[arg(long, env = "WASMHOOKS_DEMO")]
    demo: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The hook's `.wasm` file.
    hook: PathBuf,
    /// The event, a JSON file in the orchestrator's format.
    #[arg(long, env = "WASMHOOKS_EVENT")]
    event: PathBuf,
    /// The hook's settings, a `NAME.toml` file. Defaults to the `.toml` beside the hook.
    #[arg(long, env = "WASMHOOKS_SETTINGS")]
    settings: Option<PathBuf>,
    /// Engine settings file (TOML), for limits.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    /// Folder of hooks.
    dir: PathBuf,
    /// Engine settings file (TOML), for limits.
    #[arg(long, env = "WASMHOOKS_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run(args).await.map(|()| ExitCode::SUCCESS),
            Command::New(args) => new(args).map(|()| ExitCode::SUCCESS),
            Command::Check(args) => check(args).await,
            Command::Deliveries(args) => deliveries(args).await.map(|()| ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn load_config(file: Option<&Path>) -> Result<Config> {
    let Some(file) = file else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", file.display()))
}

async fn serve(args: ServeArgs) -> Result<()> {
    // Before anything starts: these are setup mistakes.
    if let Some(token) = &args.token {
        wasmhooks::server::check_token(token).context("--token / WASMHOOKS_TOKEN")?;
    } else if !args.listen.ip().is_loopback() && !args.insecure_no_token {
        bail!(
            "refusing to listen on {} without a token: anyone who can reach it could read \
             dead letters (their URLs often hold secrets), post events and retry deliveries. \
             Set WASMHOOKS_TOKEN (e.g. to the output of `openssl rand -hex 32`), listen on \
             127.0.0.1, or pass --insecure-no-token if the network is trusted",
            args.listen
        );
    }
    let mut config = load_config(args.config.as_deref())?;
    config.hooks_dir = args.hooks;
    config.watch = !args.no_watch;
    if let Some(cache) = args.cache {
        config.cache_dir = Some(cache);
    }
    if let Some(state) = args.state {
        config.state_dir = Some(state);
    }
    if let Some(queue) = &args.queue {
        set_queue(&mut config, queue)?;
    }
    let engine = Engine::new(config)
        .await
        .context("cannot start the engine")?;
    let mut app = wasmhooks::server::router(engine.clone());
    if let Some(token) = &args.token {
        app = wasmhooks::server::require_token(app, token)?;
    } else if !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without a token (--insecure-no-token): anyone who can reach it \
             may read dead letters, post events and retry deliveries",
            args.listen
        );
    }
    // The demo receiver stays open: it stands for a third-party system.
    if args.demo {
        app = app.merge(demo::receiver());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another wasmhooks running? pick another --listen)",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "listening on http://{addr}: the console at http://{addr}/, the API at /v1 \
         (POST /v1/events; all of it in GET /v1/openapi.json), GET /metrics, GET /healthz"
    );
    if args.demo {
        tokio::spawn(demo::send_samples(addr, args.token.clone()));
    }
    let grace = std::time::Duration::from_secs(args.grace);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            stop_signal().await;
            tracing::info!(
                "stopping: no new requests; finishing what is in flight (up to {grace:?}); \
                 a second signal stops at once"
            );
            stop.cancel();
            stop_signal().await;
            tracing::warn!(
                "second signal: stopping now; what was in flight is sent again at the next start"
            );
            std::process::exit(1);
        }
    });
    let started_stopping = async {
        stop.cancelled().await;
        std::time::Instant::now()
    };
    let http = engine.config().http.clone();
    let server = wasmhooks::server::serve(listener, app, &http, stop.clone().cancelled_owned());
    let mut stopping_since = None;
    tokio::select! {
        served = server => served.context("server failed")?,
        since = async {
            let since = started_stopping.await;
            tokio::time::sleep(grace).await;
            since
        } => {
            stopping_since = Some(since);
            tracing::warn!("requests still open after {grace:?}; closing them");
        }
    }
    let left =
        grace.saturating_sub(stopping_since.map_or(std::time::Duration::ZERO, |s| s.elapsed()));
    if engine.shutdown(left).await {
        tracing::info!("stopped: everything in flight finished and was recorded");
    } else {
        tracing::warn!(
            "stopped with work in flight after {grace:?}; it is sent again at the next start \
             (raise --grace to wait longer)"
        );
    }
    Ok(())
}

/// Resolves on SIGTERM (what systemd and Kubernetes send) or SIGINT (^C).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Applies `--queue`: `sqlite`, `memory` or a NATS URL.
fn set_queue(config: &mut Config, queue: &str) -> Result<()> {
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

async fn deliveries(args: DeliveriesArgs) -> Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(queue) = &args.queue {
        set_queue(&mut config, queue)?;
    }
    let admin = if let wasmhooks::QueueConfig::Nats(_) = &config.queue {
        config.validate().context("--config / WASMHOOKS_CONFIG")?;
        wasmhooks::DeliveryAdmin::connect(&config).await?
    } else {
        let Some(dir) = args.state.or_else(wasmhooks::config::default_state_dir) else {
            bail!("no state folder: pass --state DIR");
        };
        wasmhooks::DeliveryAdmin::open(&dir)?
    };
    match args.command {
        DeliveriesCommand::List {
            failed,
            dead,
            limit,
            json,
        } => {
            let filter = match (failed, dead) {
                (true, _) => DeliveryState::Failed,
                (_, true) => DeliveryState::Dead,
                _ => DeliveryState::Pending,
            };
            let rows = admin
                .list(wasmhooks::DeliveryQuery::new(filter, limit))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<36} {:<14} {:<7} {:>8} {:>9}  URL / LAST ERROR",
                "ID", "HOOK", "STATE", "ATTEMPTS", "AGE"
            );
            for d in &rows {
                let age = std::time::Duration::from_secs(d.age().as_secs());
                println!(
                    "{:<36} {:<14} {:<7} {:>8} {:>9}  {}",
                    d.id,
                    d.hook,
                    d.state,
                    d.attempts,
                    humantime::format_duration(age).to_string(),
                    d.url
                );
                if let Some(error) = &d.last_error {
                    println!("{:>78}{error}", "");
                }
            }
            if rows.is_empty() {
                println!("(none)");
            }
        }
        DeliveriesCommand::Retry { id, all_dead } => {
            let which = match id {
                Some(id) if !all_dead => DeadLetters::One(id),
                _ => DeadLetters::All,
            };
            let n = admin.retry(which.clone()).await?;
            if let (DeadLetters::One(id), 0) = (&which, n) {
                bail!(
                    "{id} is not a dead letter in this queue (see `wasmhooks deliveries list --dead`)"
                );
            }
            println!("{n} dead letters requeued; a running engine sends them within a second");
        }
        DeliveriesCommand::Purge { older_than_days } => {
            let age = std::time::Duration::from_secs(u64::from(older_than_days) * 86_400);
            let n = admin.purge_dead(age).await?;
            println!("{n} dead letters deleted");
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let config = load_config(args.config.as_deref())?;
    let bytes = std::fs::read(&args.event)
        .with_context(|| format!("cannot read event file {}", args.event.display()))?;
    let event =
        Event::from_json(&bytes).with_context(|| format!("event file {}", args.event.display()))?;
    let settings = match &args.settings {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read settings file {}", file.display()))?;
            Some(
                HookConfig::from_toml(&text)
                    .with_context(|| format!("settings file {} is not valid", file.display()))?,
            )
        }
    };
    let result = wasmhooks::dry_run(&config, &args.hook, settings, &event).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut config = load_config(args.config.as_deref())?;
    if !args.dir.is_dir() {
        bail!("{} is not a folder", args.dir.display());
    }
    config.hooks_dir = args.dir;
    config.watch = false;
    config.state_dir = None; // sends nothing, and must not lock a running engine's state
    let engine = Engine::new(config).await?;
    let hooks = engine.hooks();
    println!("{:<16} {:<7} {:<13} DETAIL", "HOOK", "STATE", "VERSION");
    for hook in &hooks {
        let version = hook.hash.as_deref().map(|h| &h[..12]).unwrap_or("-");
        let detail = match (&hook.last_error, &hook.subscription) {
            (Some(e), _) => format!("{} failed ({}): {}", e.stage, e.file.display(), e.reason),
            (None, Some(s)) => {
                let phases: Vec<String> = s.phases.iter().map(|p| p.to_string()).collect();
                let abi = match hook.abi {
                    Some(wasmhooks::Abi::Command) => " (WASI command)",
                    _ => "",
                };
                format!("{} [{}]{abi}", s.methods.join(", "), phases.join(", "))
            }
            (None, None) => String::new(),
        };
        let state = if hook.state == HookState::Live {
            "ok"
        } else {
            "FAILED"
        };
        println!("{:<16} {:<7} {:<13} {}", hook.name, state, version, detail);
    }
    let failed = hooks.iter().filter(|h| h.last_error.is_some()).count();
    if hooks.is_empty() {
        println!(
            "no hooks (*.wasm) in {}",
            engine.config().hooks_dir.display()
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} hooks failed to load", hooks.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn new(args: NewArgs) -> Result<()> {
    let dir = scaffold::new(args.lang, &args.name, &args.dir)?;
    println!(
        "created {dir}\nnext: cd {dir} && ./build.sh && wasmhooks run {name}.wasm --event event.json",
        dir = dir.display(),
        name = args.name
    );
    Ok(())
}
