//! Logging, and traces when asked for: the one place the command sets up
//! `tracing`.
//!
//! Logs go to stderr, filtered by `--log`. With `serve --otlp-endpoint`,
//! the engine's spans (target [`wasmhooks::trace::TARGET`]) also become
//! OpenTelemetry spans, batched on a thread of their own and exported over
//! OTLP/HTTP (protobuf). The exporter reads the standard variables for what
//! the flags do not set: `OTEL_EXPORTER_OTLP_HEADERS` (an API key),
//! `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip`, for a collector across a
//! network: it costs CPU, see BENCHMARKS.md), `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! and the batch's `OTEL_BSP_*`.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;
use wasmhooks::trace::TARGET;

/// Where and how much to trace (`serve`'s `--otlp-endpoint` and `--trace-sample`).
pub(crate) struct Tracing {
    /// The collector's OTLP/HTTP traces URL.
    pub(crate) endpoint: url::Url,
    /// The share of traces recorded that no caller started.
    pub(crate) sample: f64,
}

/// Exports what is left of the traces when dropped (at exit).
pub(crate) struct Flush(Option<SdkTracerProvider>);

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last traces may not have been exported: {e}");
        }
    }
}

/// Sets up logging, and traces if `tracing` says where to send them.
pub(crate) fn init(log: &str, tracing: Option<&Tracing>) -> Result<Flush> {
    // The engine's spans are for traces, not for log lines.
    let filter = EnvFilter::try_new(format!("{log},{TARGET}=off"))
        .or_else(|_| EnvFilter::try_new(format!("info,{TARGET}=off")))
        .expect("a fixed filter");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let Some(tracing) = tracing else {
        // The log alone, filtered once for the whole subscriber: a span of
        // the engine's costs a check of its callsite's cached interest.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .init();
        return Ok(Flush(None));
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let provider = provider(tracing)?;
    let spans = layer(&provider).with_filter(spans_only());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(spans)
        .init();
    tracing::info!(
        endpoint = %shown(&tracing.endpoint),
        sample = tracing.sample,
        "exporting traces over OTLP/HTTP"
    );
    Ok(Flush(Some(provider)))
}

/// The engine's spans, at their level: a higher one would raise the
/// subscriber's level hint, and with it the `log` crate's maximum level, so
/// that every `log::trace!` of a dependency would be built and filtered.
pub(crate) fn spans_only() -> Targets {
    Targets::new().with_target(TARGET, tracing::Level::INFO)
}

/// The exporter, batching on a thread of its own. Built outside the async
/// runtime: its HTTP client is a blocking one.
pub(crate) fn provider(tracing: &Tracing) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(tracing.endpoint.as_str())
        .build()
        .with_context(|| format!("--otlp-endpoint {}", shown(&tracing.endpoint)))?;
    // A caller's `traceparent` decides for its trace (the XO plugin's
    // sampling, say); the ratio decides for the traces the engine starts.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(tracing.sample)));
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read too (an
    // engine of several, named by `service.instance.id`, say).
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("wasmhooks");
    }
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

/// The layer that turns the engine's spans into `provider`'s, to filter to
/// [`TARGET`].
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("wasmhooks"))
        // What each span says is in its name and fields; the rest is cost.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // The engine reads each span's context itself; nothing it runs
        // reads OpenTelemetry's current context.
        .with_context_activation(false)
}

/// `--otlp-endpoint`, or none if it is empty (tracing off, say in an
/// environment file).
#[derive(Clone)]
pub(crate) struct Endpoint(pub(crate) Option<url::Url>);

/// `--otlp-endpoint`: an http(s) URL; a bare `http://HOST:PORT` gets the
/// standard path `/v1/traces`.
pub(crate) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if text.trim().is_empty() {
        return Ok(Endpoint(None));
    }
    let mut url = url::Url::parse(text).map_err(|e| {
        format!("{text:?} is not a URL ({e}); give e.g. http://127.0.0.1:4318/v1/traces")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{text:?}: OTLP is exported over http or https (gRPC is not supported)"
        ));
    }
    if url.path() == "/" {
        url.set_path("/v1/traces");
    }
    Ok(Endpoint(Some(url)))
}

/// The endpoint as logged: no credentials, no query.
fn shown(url: &url::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// `--trace-sample`: a ratio from 0 to 1.
pub(crate) fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "{text:?} is not a ratio from 0 to 1 (e.g. 0.1 records one trace in ten)"
        )),
    }
}
