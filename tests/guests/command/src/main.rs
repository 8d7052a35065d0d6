//! A WASI command hook (built for wasm32-wasip2, so a `wasi:cli/command`
//! component): reads the event on stdin and its settings from
//! `WASMHOOKS_SETTINGS`, and per the settings' `mode`:
//! - `echo` (default): one delivery to `url` whose body shows what it got;
//! - `exit`: writes to stderr and exits with status 3;
//! - `garbage`: writes something that is not an outcome.

use serde_json::{Value, json};
use std::io::{Read, Write};

fn main() {
    let settings: Value = std::env::var("WASMHOOKS_SETTINGS")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let event: Value = serde_json::from_str(&input).unwrap();
    let mut out = std::io::stdout();
    match settings["mode"].as_str().unwrap_or("echo") {
        "exit" => {
            eprintln!("command hook: giving up on {}", event["method"]);
            std::process::exit(3);
        }
        "garbage" => write!(out, "hello").unwrap(),
        _ => {
            let body = json!({
                "method": event["method"],
                "phase": event["phase"],
                "call_id": event["call_id"],
                "timestamp_ms": event["timestamp_ms"],
                "payload_method": event["payload"]["method"],
                "settings": settings,
                "args": std::env::args().collect::<Vec<_>>(),
                "env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>(),
            });
            let outcome = json!({
                "deliveries": [{
                    "url": settings["url"],
                    "headers": {"x-hook": "command"},
                    "body": body,
                }],
            });
            write!(out, "{outcome}").unwrap();
        }
    }
}
