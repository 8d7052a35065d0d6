//! Tracing on, for the rows that measure what it costs: the command's own
//! OTLP exporter (src/bin/wasmhooks/telemetry.rs, every span sampled)
//! sending to a collector in this process that takes each batch and
//! answers 200, behind a filter the rows switch on and off. The process's
//! CPU counts the exporter's thread (encoding, gzip, HTTP) and the
//! collector's reads too.

#[allow(dead_code)] // the bench uses the exporter, not the command line
#[path = "../../src/bin/wasmhooks/telemetry.rs"]
mod telemetry;

use std::sync::OnceLock;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, reload};

pub(crate) struct Traced {
    filter: reload::Handle<Targets, Registry>,
}

static TRACED: OnceLock<Option<Traced>> = OnceLock::new();

impl Traced {
    /// The switch, set up once (off); `None` if this process logs
    /// (`WASMHOOKS_LOG`), which took the one global subscriber.
    pub(crate) async fn get() -> Option<&'static Traced> {
        if let Some(traced) = TRACED.get() {
            return traced.as_ref();
        }
        let collector = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(|_: bytes::Bytes| async { axum::http::StatusCode::OK }),
        );
        let base = crate::serve::serve_app(collector).await;
        let endpoint = url::Url::parse(&format!("{base}/v1/traces")).unwrap();
        // Built on a thread of its own: its HTTP client is a blocking one.
        let provider = std::thread::spawn(move || {
            telemetry::provider(&telemetry::Tracing {
                endpoint,
                sample: 1.0,
            })
            .unwrap()
        })
        .join()
        .unwrap();
        let (filter, handle) = reload::Layer::new(Targets::new());
        let installed = tracing_subscriber::registry()
            .with(telemetry::layer(&provider).with_filter(filter))
            .try_init();
        // The provider lives as long as the process: its spans go out
        // until the end.
        std::mem::forget(provider);
        let traced = installed.ok().map(|()| Traced { filter: handle });
        TRACED.get_or_init(|| traced).as_ref()
    }

    /// Exports the engine's spans from now on (`true`), or none (`false`).
    pub(crate) fn set(&self, on: bool) {
        let targets = match on {
            true => telemetry::spans_only(),
            false => Targets::new(),
        };
        self.filter.reload(targets).unwrap();
    }
}
