//! `languages`: the same hook in each language, against the Rust one.

use crate::guests;
use crate::measure::*;
use crate::setup::*;
use std::time::Duration;
use wasmhooks::{Engine, Event};

/// Per-event cost of the same hook in each language, with a fresh instance
/// per event and with `[reuse]` (components only), against the Rust example
/// in the same run. Pre events go through
/// `engine.pre`; post events through `engine.post` (which also commits to an
/// in-memory outbox). The `deny` examples veto a protected VM; `slack` and
/// `forward` each queue one delivery to a local sink; `filter` skips a
/// successful operation.
pub(crate) async fn languages() {
    let sink = Sink::start().await;
    let deny = "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n".to_owned();
    let deny_command = format!(
        "{deny}[subscription]\nmethods = [\"vm.delete\", \"vm.stop\"]\nphases = [\"pre\"]\n"
    );
    let to_sink = format!(
        "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{}\"\n",
        sink.url
    );
    let forward_rust = format!("{to_sink}methods = [\"vm.*\"]\nphases = [\"post\"]\n");
    let filter_zig = format!("{to_sink}[subscription]\nmethods = [\"*\"]\nphases = [\"post\"]\n");
    println!(
        "languages: CPU per event (all threads; the same hook in Rust = 1x; target: fresh <= 5x reused)"
    );
    type Build = fn() -> std::path::PathBuf;
    let cases: [(&str, &str, Build, &str, &str); 10] = [
        (
            "deny",
            "Rust",
            || guests::wasm("deny"),
            &deny,
            "vm.delete.pre",
        ),
        (
            "deny",
            "JavaScript (QuickJS)",
            || guests::example("js", &["jco"]),
            &deny,
            "vm.delete.pre",
        ),
        (
            "deny",
            "AssemblyScript (cmd)",
            || guests::example("assemblyscript", &["asc"]),
            &deny_command,
            "vm.delete.pre",
        ),
        (
            "slack",
            "Rust",
            || guests::wasm("slack"),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "slack",
            "Python",
            || guests::example("python", &["componentize-py"]),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "slack",
            "Go",
            || guests::example("go", &["go", "wit-bindgen", "wasm-tools"]),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "forward",
            "Rust",
            || guests::wasm("forward"),
            &forward_rust,
            "vm.start.post",
        ),
        (
            "forward",
            "C",
            || guests::example("c", &["clang", "wit-bindgen", "wasm-tools"]),
            &to_sink,
            "vm.start.post",
        ),
        (
            "filter",
            "Rust",
            || guests::wasm("filter"),
            &to_sink,
            "vm.start.post",
        ),
        (
            "filter",
            "Zig (cmd)",
            || guests::example("zig", &["zig"]),
            &filter_zig,
            "vm.start.post",
        ),
    ];
    println!(
        "  {:<8} {:<22} {:>10} {:>8} {:>11} {:>14}  {:>7}  {:>15}",
        "hook", "language", "fresh", "vs Rust", "reused", "fresh/reused", "size", "faults f / r"
    );
    let mut rust = Duration::ZERO;
    for (hook, lang, wasm, toml, event) in cases {
        let wasm = wasm();
        let event = Event::from_json(&fixture(event)).unwrap();
        let n = if lang == "Rust" { 2_000 } else { 200 };
        // Reuse is for components; a WASI command runs once per instance,
        // and the engine refuses it for Go (see `built_by_go`).
        let modes: &[bool] = if toml.contains("[subscription]") || lang == "Go" {
            &[false]
        } else {
            &[false, true]
        };
        let mut per = [None, None];
        for &reuse in modes {
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy(&wasm, dir.path().join(format!("{hook}.wasm"))).unwrap();
            let toml = if reuse {
                format!("{toml}[reuse]\nevents = 100000\n")
            } else {
                toml.to_owned()
            };
            std::fs::write(dir.path().join(format!("{hook}.toml")), toml).unwrap();
            let engine = Engine::new(bench_config(dir.path())).await.unwrap();
            assert!(
                engine.hooks()[0].last_error.is_none(),
                "{lang} {hook}: {:?}",
                engine.hooks()[0].last_error
            );
            per[reuse as usize] = Some(
                per_iter(n, 5, async || {
                    if event.phase() == wasmhooks::Phase::Pre {
                        engine.pre(event.clone()).await.unwrap();
                    } else {
                        engine.post(event.clone()).await.unwrap();
                    }
                })
                .await,
            );
            let status = &engine.hooks()[0];
            assert_eq!(
                status.errors, 0,
                "{lang} {hook} (reuse: {reuse}) failed on its events: {:?}",
                status.last_error
            );
            engine.drain().await;
        }
        let (fresh, reused) = (per[0].unwrap().cpu, per[1].map(|p| p.cpu));
        // Page faults per event: a fresh instance maps in, on first touch,
        // the memory the pool did not keep resident from the last one.
        let faults = format!(
            "{:.0} / {}",
            per[0].unwrap().faults,
            per[1].map_or("-".to_owned(), |p| format!("{:.0}", p.faults))
        );
        if lang == "Rust" {
            rust = fresh;
        }
        let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        let reused = reused
            .map(|r| {
                format!(
                    "{:>8.1} µs {:>13.1}x",
                    micros(r),
                    fresh.as_secs_f64() / r.as_secs_f64()
                )
            })
            .unwrap_or_else(|| format!("{:>11} {:>14}", "-", "-"));
        println!(
            "  {hook:<8} {lang:<22} {:>7.1} µs {:>7.1}x {reused}  {size:>5.2} MB  {faults:>15}",
            micros(fresh),
            fresh.as_secs_f64() / rust.as_secs_f64()
        );
    }
}
