//! Traces end to end: `wasmhooks serve --otlp-endpoint` exports its spans to
//! a real OTLP/HTTP collector (tests/support/otlp_collector.py, decoding
//! with the OpenTelemetry project's own protobuf definitions), continues
//! the caller's `traceparent`, and gives each receiver the context of its
//! attempt's span. With tracing off, deliveries carry no trace context.

use crate::{Receiver, Serve, fixture_bytes, install, json_of, root};
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The caller's trace: its id, and the id of its span that called us.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// The collector, started on a port of its own; prints its endpoint, then
/// each span it receives as a JSON line.
struct Collector {
    child: tokio::process::Child,
    endpoint: String,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Collector {
    async fn start() -> Collector {
        let python = root().join(".toolchains/venv/bin/python");
        assert!(
            python.exists(),
            "the collector's Python (with opentelemetry-proto) is missing: run \
             scripts/install-guest-toolchains.sh"
        );
        let mut child = tokio::process::Command::new(python)
            .arg(root().join("tests/support/otlp_collector.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the collector starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = lines
            .next_line()
            .await
            .unwrap()
            .expect("the collector says where it listens");
        Collector {
            child,
            endpoint,
            lines,
        }
    }

    /// Every span it received, once it is stopped (its stdin closed).
    async fn spans(mut self) -> Vec<Value> {
        drop(self.child.stdin.take());
        let mut spans = Vec::new();
        while let Some(line) = self.lines.next_line().await.unwrap() {
            spans.push(serde_json::from_str(&line).unwrap());
        }
        let mut rest = String::new();
        self.lines
            .get_mut()
            .read_to_string(&mut rest)
            .await
            .unwrap();
        assert!(self.child.wait().await.unwrap().success());
        spans
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The pre and the post event of one call, sent with the caller's
/// `traceparent`: one trace, the caller's. The pre event runs two hooks, one
/// of which asks for a delivery its receiver answers 503, then 200; the post
/// event runs that one again. The spans nest (each event's ingest, under it
/// each hook call and the commit; each attempt under the hook call that
/// asked for it, the retry linked to the first try); each receiver got its
/// attempt's span as `traceparent`, and nothing of the engine's own; and
/// what is left is exported as the engine stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_from_the_caller_to_the_receivers() {
    let collector = Collector::start().await;
    // The pre event's delivery fails once; the post event's goes through.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let receiver = Receiver::with(move |r, _| {
        let pre = serde_json::from_slice::<Value>(&r.body).unwrap()["type"] == "pre";
        match pre && !failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            true => (StatusCode::SERVICE_UNAVAILABLE, vec![]),
            false => (StatusCode::OK, vec![]),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    install(
        &hooks,
        "echo",
        "misbehave",
        Some(&format!(
            "allow_hosts = [\"127.0.0.1\"]\n[settings]\nmode = \"echo\"\nurl = \"{}\"\n\
             methods = [\"vm.start\"]\n",
            receiver.url("/hook")
        )),
    );
    install(
        &hooks,
        "deny",
        "deny",
        Some("[settings]\nprotected = [\"not-this-vm\"]\nmethods = [\"vm.start\"]\n"),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[delivery]\nretry_schedule_ms = [50]\n").unwrap();
    let serve = Serve::start_with(
        &hooks,
        &dir.path().join("state"),
        &config,
        &["--otlp-endpoint", &collector.endpoint],
    );
    let base = format!("http://{}", serve.addr);
    let http = reqwest::Client::new();
    let send = |fixture: &str| {
        http.post(format!("{base}/v1/events"))
            .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
            .header("content-type", "application/json")
            .body(fixture_bytes(fixture))
    };
    let verdict = json_of(send("vm.start.pre")).await;
    assert_eq!(verdict["allowed"], true, "{verdict}");
    let accepted = send("vm.start.post").send().await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let versions: HashMap<String, String> = json_of(http.get(format!("{base}/v1/hooks")))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let name = h["name"].as_str().unwrap().to_owned();
            (name, h["hash"].as_str().unwrap().to_owned())
        })
        .collect();
    let got = receiver.wait_for(3).await;
    // Stopped by a signal, it finishes the attempt in flight and exports
    // the spans still in its batch.
    let status = tokio::task::spawn_blocking(move || serve.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let spans = collector.spans().await;
    let shown = || serde_json::to_string_pretty(&spans).unwrap();

    // One trace, the caller's, and the service is named.
    assert!(spans.iter().all(|s| s["trace_id"] == TRACE), "{}", shown());
    assert!(
        spans.iter().all(|s| s["service"] == "wasmhooks"),
        "{}",
        shown()
    );
    let ingest = |phase: &str| {
        let found = named(&spans, "ingest");
        let found: Vec<_> = found
            .into_iter()
            .filter(|s| attr(s, "wasmhooks.phase") == phase)
            .collect();
        assert_eq!(found.len(), 1, "one ingest span for {phase}: {}", shown());
        found[0]
    };
    let (pre, post) = (ingest("pre"), ingest("post"));
    for (span, hooks) in [(pre, 2), (post, 1)] {
        assert_eq!(span["parent_span_id"], CALLER, "{}", shown());
        assert_eq!(span["kind"], 2, "server"); // SPAN_KIND_SERVER
        assert_eq!(attr(span, "wasmhooks.method"), "vm.start");
        assert_eq!(attr(span, "wasmhooks.hooks"), hooks);
    }
    assert_eq!(attr(pre, "wasmhooks.allowed"), true);

    // Each hook call, under its event, with its version and outcome.
    let call = |event: &Value, name: &str| {
        let found: Vec<_> = named(&spans, "hook")
            .into_iter()
            .filter(|s| s["parent_span_id"] == event["span_id"])
            .filter(|s| attr(s, "wasmhooks.hook") == name)
            .collect();
        assert_eq!(found.len(), 1, "one {name} call: {}", shown());
        found[0]
    };
    assert_eq!(named(&spans, "hook").len(), 3, "{}", shown());
    for (event, name, outcome) in [
        (pre, "echo", "deliveries"),
        (pre, "deny", "nothing"),
        (post, "echo", "deliveries"),
    ] {
        let span = call(event, name);
        assert_eq!(
            attr(span, "wasmhooks.version"),
            &versions[name][..],
            "{name}"
        );
        assert_eq!(attr(span, "wasmhooks.outcome"), outcome, "{name}");
    }
    let commits = named(&spans, "commit");
    assert_eq!(commits.len(), 2, "{}", shown());
    for event in [pre, post] {
        let under = |s: &&&Value| s["parent_span_id"] == event["span_id"];
        let [commit] = commits.iter().filter(under).collect::<Vec<_>>()[..] else {
            panic!("one commit under each event: {}", shown());
        };
        assert_eq!(attr(commit, "wasmhooks.deliveries"), 1);
    }

    // Each attempt under the hook call that asked for it; the retry linked
    // to the first try; each receiver given its own attempt's span.
    let attempts_under = |event: &Value| {
        let parent = &call(event, "echo")["span_id"];
        let mut found: Vec<_> = named(&spans, "attempt")
            .into_iter()
            .filter(|s| &s["parent_span_id"] == parent)
            .collect();
        found.sort_by_key(|s| attr(s, "wasmhooks.retry").as_i64());
        found
    };
    let [first, retry] = attempts_under(pre)[..] else {
        panic!("two attempts of the pre event's delivery: {}", shown());
    };
    let [posted] = attempts_under(post)[..] else {
        panic!("one attempt of the post event's delivery: {}", shown());
    };
    assert_eq!(named(&spans, "attempt").len(), 3, "{}", shown());
    for (attempt, retries, status) in [(first, 0, 503), (retry, 1, 200), (posted, 0, 200)] {
        assert_eq!(attempt["kind"], 3, "client"); // SPAN_KIND_CLIENT
        assert_eq!(attr(attempt, "wasmhooks.retry"), retries);
        assert_eq!(attr(attempt, "http.response.status_code"), status);
        assert_eq!(attr(attempt, "server.address"), "127.0.0.1");
        assert_eq!(attr(attempt, "server.port"), receiver.addr.port());
        let sent = format!("00-{TRACE}-{}-01", attempt["span_id"].as_str().unwrap());
        let request = got
            .iter()
            .find(|r| r.header("traceparent") == sent)
            .unwrap_or_else(|| panic!("no request sent {sent}"));
        assert_eq!(
            request.header("webhook-id"),
            attr(attempt, "wasmhooks.delivery").as_str().unwrap()
        );
        assert!(request.headers.get("x-wasmhooks-traceparent").is_none());
    }
    assert_eq!(attr(first, "wasmhooks.outcome"), "retry");
    assert_eq!(first["status"], 2, "an error"); // STATUS_CODE_ERROR
    assert_eq!(attr(retry, "wasmhooks.outcome"), "delivered");
    assert_eq!(first["links"], Value::Array(vec![]));
    let link = serde_json::json!([{ "trace_id": TRACE, "span_id": first["span_id"] }]);
    assert_eq!(retry["links"], link, "the retry links to the first try");
}

/// `wasmhooks serve` with tracing off (an empty `--otlp-endpoint`, as an
/// environment file that lost its URL has it, beside a sample ratio left
/// over): it starts, and a delivery carries no trace context, whatever the
/// caller sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_deliveries_carry_no_trace_context() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "echo",
        "misbehave",
        Some(&format!(
            "allow_hosts = [\"127.0.0.1\"]\n[settings]\nmode = \"echo\"\nurl = \"{}\"\n",
            receiver.url("/hook")
        )),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let serve = Serve::start_with(
        dir.path(),
        &dir.path().join("state"),
        &config,
        &["--otlp-endpoint", "", "--trace-sample", "0.5"],
    );
    let accepted = reqwest::Client::new()
        .post(format!("http://{}/v1/events", serve.addr))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .header("content-type", "application/json")
        .body(fixture_bytes("vm.start.post"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let got = receiver.wait_for(1).await;
    assert!(got[0].headers.get("traceparent").is_none());
    assert!(got[0].headers.get("x-wasmhooks-traceparent").is_none());
}
