//! `wasmhooks serve`: the engine and its HTTP API, until a stop signal.

use crate::cli::{ServeArgs, load_config, set_hooks, set_queue};
use crate::demo;
use crate::systemd;
use anyhow::{Context, Result, bail};
use wasmhooks::Engine;

pub(crate) async fn serve(args: ServeArgs) -> Result<()> {
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
    set_hooks(&mut config, args.hooks);
    if args.no_watch {
        config.watch = false;
    }
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
    systemd::reload_on_hangup(engine.clone()).context("cannot handle SIGHUP")?;
    systemd::watchdog(engine.clone());
    systemd::ready(&engine);
    let grace = std::time::Duration::from_secs(args.grace);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            stop_signal().await;
            systemd::stopping();
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
