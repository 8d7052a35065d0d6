//! `POST /v1/simulate`: an uploaded version of a hook over the engine's
//! archive (see [`crate::simulate`]), one simulation at a time.

use super::error;
use super::openapi::ApiError;
use crate::engine::Engine;
use crate::error::Error;
use crate::simulate::{Simulation, SimulationReport, simulate as run_simulation};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};
use utoipa::IntoParams;

/// The header that carries an upload's signature (the line of its
/// `NAME.sig`), for an engine with `[trust]`.
const SIGNATURE_HEADER: &str = "wasmhooks-signature";

/// Largest `.wasm` `POST /v1/simulate` takes, in bytes.
pub(super) const MAX_HOOK_BYTES: usize = 64 * 1024 * 1024;

/// One simulation at a time: each keeps a core busy, and its upload is
/// in memory.
static RUNNING: Semaphore = Semaphore::const_new(1);

/// The simulation's turn, taken before its body is read (see
/// [`turn`]), held until it ends.
#[derive(Clone)]
pub(super) struct Running {
    _permit: Arc<SemaphorePermit<'static>>,
}

/// Why a simulation cannot run now.
pub(super) enum Refused {
    /// `[archive]` is not in the engine's settings.
    ArchiveOff,
    /// Another simulation runs.
    Busy,
}

impl Refused {
    pub(super) fn response(self) -> Response {
        match self {
            Refused::ArchiveOff => error(
                StatusCode::NOT_FOUND,
                "the archive is off: add `[archive]` to the engine's settings, and simulate \
                 once it has recorded events"
                    .into(),
            ),
            Refused::Busy => error(
                StatusCode::TOO_MANY_REQUESTS,
                "a simulation is running: try again when it ends".into(),
            ),
        }
    }
}

/// A simulation's turn, or why not, before its body is read: so an
/// upload is read only when it can run.
pub(super) fn turn(archive_on: bool) -> Result<Running, Refused> {
    if !archive_on {
        return Err(Refused::ArchiveOff);
    }
    RUNNING
        .try_acquire()
        .map(|permit| Running {
            _permit: Arc::new(permit),
        })
        .map_err(|_| Refused::Busy)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SimulateParams {
    /// The live hook to compare with (and whose `NAME.toml` the upload is
    /// set up with, if the hooks folder has one).
    #[serde(rename = "as")]
    #[param(
        rename = "as",
        pattern = "^[^./\\\\][^/\\\\]{0,199}$",
        example = "deny"
    )]
    live: String,
    /// Replay the events archived in the last this many hours (1 to 8784).
    #[param(minimum = 1, maximum = 8784, default = 720)]
    hours: Option<u64>,
    /// Examples kept of each change (0 to 100).
    #[param(minimum = 0, maximum = 100, default = 10)]
    examples: Option<usize>,
}

/// Replays the archived events (`[archive]`) through an uploaded version
/// of a hook, in dry run: nothing is sent and nothing is stopped. Reports
/// what it would change against the live hook `as`: events newly denied or
/// allowed (with examples), deliveries per receiver, failures per method,
/// and its time per event. The body is the `.wasm`, set up with the live
/// hook's `NAME.toml`. On an engine with `[trust]`, the upload must be
/// signed too: its `NAME.sig` line in the `Wasmhooks-Signature` header. One
/// simulation runs at a time.
#[utoipa::path(
    post,
    path = "/v1/simulate",
    tag = "hooks",
    params(
        SimulateParams,
        ("Wasmhooks-Signature" = Option<String>, Header, description = "The upload's signature, as `wasmhooks sign` writes it to `NAME.sig`: needed on an engine with `[trust]`, ignored otherwise"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The new version's `.wasm` (any content type is taken)"),
    responses(
        (status = 200, description = "What the new version would have done, against the live one", body = SimulationReport),
        (status = 400, description = "A parameter out of range, or a body that is not a hook, or (with `[trust]`) not signed by a trusted key: the error says which stage failed", body = ApiError),
        (status = 404, description = "The archive is off (`[archive]` is not in the engine's settings)", body = ApiError),
        (status = 413, description = "A body larger than 64 MiB", body = ApiError),
        (status = 429, description = "A simulation is running: try again when it ends", body = ApiError),
        (status = 500, description = "The archive could not be read", body = ApiError),
    )
)]
pub(super) async fn simulate(
    State(engine): State<Engine>,
    Extension(_turn): Extension<Running>,
    query: Result<Query<SimulateParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let hours = q.hours.unwrap_or(720);
    let examples = q.examples.unwrap_or(10);
    // A file name in the hooks folder: no path in it.
    let valid_name = (1..=200).contains(&q.live.chars().count())
        && !q.live.starts_with('.')
        && !q.live.contains(['/', '\\', '\0']);
    if !valid_name {
        return error(
            StatusCode::BAD_REQUEST,
            "as: a hook's name (its file's name without .wasm), not a path".into(),
        );
    }
    if !(1..=8784).contains(&hours) || examples > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "hours must be within 1..=8784 and examples within 0..=100".into(),
        );
    }
    let Some(archive) = engine.archive() else {
        return Refused::ArchiveOff.response();
    };
    let config = engine.config();
    let settings_file = config.hooks_dir.join(format!("{}.toml", q.live));
    let settings = tokio::fs::try_exists(&settings_file)
        .await
        .unwrap_or(false)
        .then_some(settings_file);
    // The registry loads hooks from files: the upload gets a folder of
    // its own, removed when done.
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes().to_vec());
    let upload = match Upload::write(&q.live, &body, signature.as_deref()).await {
        Ok(upload) => upload,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot keep the upload: {e}"),
            );
        }
    };
    let simulation = Simulation {
        wasm: upload.wasm.clone(),
        settings,
        live: Some(q.live),
        from_ms: crate::util::now_ms().saturating_sub(hours * 3_600_000),
        examples,
        // One call at a time: the engine's own events come first.
        parallel: 1,
    };
    // Uploads are not kept in the engine's cache of compiled hooks.
    let config = crate::config::Config {
        cache_dir: None,
        ..config.clone()
    };
    match run_simulation(&config, &archive, simulation).await {
        Ok(report) => Json(report).into_response(),
        Err(e @ Error::Load(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An uploaded `.wasm` in a folder of its own, removed when dropped.
struct Upload {
    dir: PathBuf,
    wasm: PathBuf,
}

impl Upload {
    /// The module, and its signature as `NAME.sig` beside it if given.
    async fn write(name: &str, bytes: &[u8], signature: Option<&[u8]>) -> std::io::Result<Upload> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "wasmhooks-simulate-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        // Its owner's alone; a name taken already is an error, not shared.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let upload = Upload {
            wasm: dir.join(format!("{name}.wasm")),
            dir,
        };
        tokio::fs::write(&upload.wasm, bytes).await?;
        if let Some(signature) = signature {
            tokio::fs::write(crate::trust::signature_path(&upload.wasm), signature).await?;
        }
        Ok(upload)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
