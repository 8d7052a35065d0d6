//! The second ABI: a hook that is a WASI command (a `wasm32-wasip1` core
//! module with `_start`, or a `wasi:cli/command` component). It reads the
//! event as JSON on stdin, finds its settings (JSON) in the environment
//! variable [`SETTINGS_ENV`], and writes the outcome as JSON on stdout.
//! Its subscription comes from its `NAME.toml`. The JSON shapes are the
//! `hook` world's records (see `docs/writing-hooks.md`).

use super::{RawDelivery, RawOutcome, SandboxError};
use crate::event::Event;
use serde::Deserialize;

/// The environment variable that holds a command hook's settings as JSON.
pub(crate) const SETTINGS_ENV: &str = "WASMHOOKS_SETTINGS";

/// Whether `bytes` is a core WebAssembly module (not a component).
pub(crate) fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[4..8] == [1, 0, 0, 0]
}

/// Turns a `wasm32-wasip1` command module into a `wasi:cli/command`
/// component, with the preview1 command adapter.
pub(crate) fn componentize(bytes: &[u8]) -> Result<Vec<u8>, SandboxError> {
    if !exports_start(bytes)? {
        return Err(SandboxError::NoStart);
    }
    // wit-component panics on some malformed modules (a truncated code
    // section): that is a bad file, not a reason to take a thread down.
    let encoded = std::panic::catch_unwind(|| {
        wit_component::ComponentEncoder::default()
            .module(bytes)
            .and_then(|e| {
                e.adapter(
                    "wasi_snapshot_preview1",
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
                )
            })
            .and_then(|e| e.validate(true).encode())
    });
    match encoded {
        Ok(encoded) => encoded.map_err(SandboxError::Adapt),
        Err(_) => Err(SandboxError::Malformed),
    }
}

/// Whether a core module exports a function named `_start`.
fn exports_start(bytes: &[u8]) -> Result<bool, SandboxError> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::ExportSection(exports) =
            payload.map_err(SandboxError::Corrupt)?
        {
            for export in exports {
                let export = export.map_err(SandboxError::Corrupt)?;
                if export.name == "_start" && export.kind == wasmparser::ExternalKind::Func {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The event as a command hook reads it on stdin. The payload is embedded
/// as JSON, not as a string of JSON as in the WIT record.
pub(crate) fn input(event: &Event) -> Vec<u8> {
    use serde_json::value::RawValue;
    // An accepted event's payload is valid JSON; `null` is only a fallback.
    let payload: Box<RawValue> = serde_json::from_str(event.payload())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
    serde_json::to_vec(&serde_json::json!({
        "call_id": event.call_id(),
        "phase": event.phase().to_string(),
        "method": event.method(),
        "timestamp_ms": event.timestamp_ms(),
        "payload": payload,
    }))
    .expect("an event serializes")
}

/// What a command hook writes on stdout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    #[serde(default)]
    deliveries: Vec<OutputDelivery>,
    #[serde(default)]
    deny: Option<String>,
    /// The hook failed: the same as `handle` returning an error.
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputDelivery {
    url: String,
    #[serde(default)]
    headers: Headers,
    /// A string is sent as is; any other JSON value is sent serialized.
    #[serde(default)]
    body: Option<serde_json::Value>,
}

/// `[["name", "value"], …]` as in the WIT record, or `{"name": "value"}`.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Headers {
    #[default]
    None,
    Pairs(Vec<(String, String)>),
    Map(serde_json::Map<String, serde_json::Value>),
}

/// Why a command hook's stdout is not an outcome, or the error it wrote.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    /// Not JSON of the outcome's shape.
    #[error(
        "its stdout is not an outcome ({0}); expected JSON like \
         {{\"deliveries\": [{{\"url\": \"https://…\", \"body\": …}}], \"deny\": null}}"
    )]
    Shape(#[source] serde_json::Error),
    /// A header given in a map whose value is not a string.
    #[error("header `{name}`: expected a string, got {got}")]
    Header {
        name: String,
        got: serde_json::Value,
    },
    /// The hook reported a failure (`"error"`), as `handle` returning an error.
    #[error("{0}")]
    Failed(String),
}

/// Reads a command hook's stdout: empty output skips the event.
pub(crate) fn output(stdout: &[u8]) -> Result<RawOutcome, OutputError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(RawOutcome {
            deliveries: Vec::new(),
            deny: None,
        });
    }
    let output: Output = serde_json::from_slice(stdout).map_err(OutputError::Shape)?;
    if let Some(error) = output.error {
        return Err(OutputError::Failed(error));
    }
    let deliveries = output
        .deliveries
        .into_iter()
        .map(|d| {
            let headers = match d.headers {
                Headers::None => Vec::new(),
                Headers::Pairs(pairs) => pairs,
                Headers::Map(map) => map
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => Ok((k, s)),
                        got => Err(OutputError::Header { name: k, got }),
                    })
                    .collect::<Result<_, _>>()?,
            };
            let body = match d.body {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::String(s)) => s.into_bytes(),
                Some(value) => serde_json::to_vec(&value).expect("a JSON value serializes"),
            };
            Ok(RawDelivery {
                url: d.url,
                headers,
                body,
            })
        })
        .collect::<Result<_, OutputError>>()?;
    Ok(RawOutcome {
        deliveries,
        deny: output.deny,
    })
}

use super::{COMMAND_OUTPUT_CAPACITY, Failure, HostState, Prepared, Sandbox};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

impl Sandbox {
    /// Runs a WASI command hook on one event: the event on stdin, the
    /// settings in the environment, the outcome read from stdout.
    pub(super) async fn run_command(
        &self,
        hook: &Prepared,
        pre: &CommandPre<HostState>,
        event: &Event,
    ) -> Result<RawOutcome, Failure> {
        self.call(hook, Some(input(event)), async |store, stdout| {
            let instance = pre.instantiate_async(&mut *store).await?;
            let status = match instance.wasi_cli_run().call_run(&mut *store).await {
                Ok(Ok(())) => 0,
                Ok(Err(())) => 1,
                Err(e) => match e.downcast_ref::<I32Exit>() {
                    Some(I32Exit(code)) => *code,
                    None => return Err(e),
                },
            };
            let out = stdout.contents();
            if status != 0 {
                return Ok(Err(format!("exited with status {status}")));
            }
            if out.len() >= COMMAND_OUTPUT_CAPACITY {
                return Ok(Err(format!(
                    "its stdout exceeded {} MiB",
                    COMMAND_OUTPUT_CAPACITY >> 20
                )));
            }
            Ok(output(&out).map_err(|e| e.to_string()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        assert!(output(b"").unwrap().deliveries.is_empty());
        let o = output(
            br#"{"deliveries":[{"url":"https://a.example/x","headers":{"x-k":"v"},"body":{"n":1}},
                 {"url":"https://b.example","headers":[["a","b"]],"body":"plain"}],"deny":"no"}"#,
        )
        .unwrap();
        assert_eq!(o.deny.as_deref(), Some("no"));
        assert_eq!(
            o.deliveries[0].headers,
            [("x-k".to_owned(), "v".to_owned())]
        );
        assert_eq!(o.deliveries[0].body, br#"{"n":1}"#);
        assert_eq!(o.deliveries[1].body, b"plain");
        assert!(matches!(output(br#"{"error":"bad"}"#), Err(OutputError::Failed(e)) if e == "bad"));
        assert!(matches!(
            output(br#"{"delivery":[]}"#),
            Err(OutputError::Shape(e)) if e.to_string().contains("unknown field")
        ));
        assert!(matches!(output(b"hello"), Err(OutputError::Shape(_))));
        assert!(
            output(b"hello")
                .unwrap_err()
                .to_string()
                .contains("not an outcome")
        );
    }
}
