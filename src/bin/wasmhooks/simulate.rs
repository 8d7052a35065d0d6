//! `wasmhooks simulate`: a new version of a hook over the archive, as a
//! report (text, or JSON for CI).

use crate::cli::SimulateArgs;
use anyhow::{Context, Result};
use std::process::ExitCode;
use wasmhooks::simulate::{Examples, Simulation, SimulationReport};

pub(crate) async fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    let config = args.store.engine_config()?;
    let archive = wasmhooks::Archive::connect(&config).await?;
    let simulation = Simulation {
        settings: args.settings,
        live: args.live,
        from_ms: args.since,
        examples: args.examples,
        ..Simulation::new(&args.hook, std::time::Duration::ZERO)
    };
    let report = wasmhooks::simulate::simulate(&config, &archive, simulation)
        .await
        .with_context(|| format!("simulating {}", args.hook.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print(r: &SimulationReport) {
    let since = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.from_ms),
    );
    println!(
        "{} (version {}) against the live {} ({}), over {} archived events since {since}",
        r.hook,
        short(&r.version),
        r.live,
        match r.live_versions.as_slice() {
            [] => "no decision archived".to_owned(),
            versions => format!(
                "version {}",
                versions
                    .iter()
                    .map(|v| short(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        r.events,
    );
    if r.unreadable > 0 {
        println!(
            "  {} archived events could not be read (skipped)",
            r.unreadable
        );
    }
    println!(
        "  handed {} events (live: {}); denies {} pre events (live: {})",
        r.called, r.live_called, r.denied, r.live_denied
    );
    examples("newly denied", &r.newly_denied);
    examples("newly allowed", &r.newly_allowed);
    if r.failures.is_empty() {
        println!("  failures: none (live: {})", r.live_failures);
    } else {
        println!("  failures (live: {}):", r.live_failures);
        for f in &r.failures {
            println!("    {} {} on {}: {}", f.count, f.kind, f.method, f.message);
        }
    }
    let changed: Vec<_> = r.receivers.iter().filter(|c| c.live != c.new).collect();
    if changed.is_empty() {
        println!("  deliveries: unchanged for every receiver");
    } else {
        println!("  deliveries per receiver (live -> new):");
        for c in changed {
            let delta = c.new as i64 - c.live as i64;
            println!("    {}: {} -> {} ({delta:+})", c.receiver, c.live, c.new);
        }
    }
    println!(
        "  time per event: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.time.p50_ms, r.time.p99_ms, r.time.max_ms
    );
}

fn examples(what: &str, e: &Examples) {
    println!("  {what}: {}", e.count);
    for x in &e.examples {
        println!(
            "    {} {} object {} by {}: {}",
            x.method,
            x.call_id,
            x.object.as_deref().unwrap_or("-"),
            x.user.as_deref().unwrap_or("-"),
            x.reason.as_deref().unwrap_or("-"),
        );
    }
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}
