//! `wasmhooks deliveries`: list, retry and purge the queued deliveries.

use crate::cli::{DeliveriesArgs, DeliveriesCommand};
use anyhow::{Result, bail};
use wasmhooks::{DeliveryFilter, DeliveryState, Replay};

pub(crate) async fn deliveries(args: DeliveriesArgs) -> Result<()> {
    let config = args.store.engine_config()?;
    let admin = wasmhooks::DeliveryAdmin::connect(&config).await?;
    match args.command {
        DeliveriesCommand::List {
            failed,
            dead,
            delivered,
            limit,
            json,
        } => {
            let filter = match (failed, dead, delivered) {
                (true, _, _) => DeliveryState::Failed,
                (_, true, _) => DeliveryState::Dead,
                (_, _, true) => DeliveryState::Delivered,
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
                "{:<36} {:<14} {:<9} {:>8} {:>9}  URL / LAST ERROR",
                "ID", "HOOK", "STATE", "ATTEMPTS", "AGE"
            );
            for d in &rows {
                let age = std::time::Duration::from_secs(d.age().as_secs());
                println!(
                    "{:<36} {:<14} {:<9} {:>8} {:>9}  {}",
                    d.id,
                    d.hook,
                    d.state,
                    d.attempts,
                    humantime::format_duration(age).to_string(),
                    d.url
                );
                if let Some(error) = &d.last_error {
                    println!("{:>78}{}", "", printable(error));
                }
            }
            if rows.is_empty() {
                println!("(none)");
            }
        }
        DeliveriesCommand::Show { id, json } => {
            let Some(detail) = admin.get(&id).await? else {
                bail!(
                    "no delivery {id} in this queue: it may have been delivered more than \
                     delivery.history_hours ago, or purged (see `wasmhooks deliveries list`)"
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            show(&detail);
        }
        DeliveriesCommand::Retry {
            id,
            all_dead,
            dead,
            failed,
            delivered,
            hook,
            receiver,
            since,
            until,
            dry_run,
        } => {
            let which = match (id, all_dead) {
                (Some(id), _) => Replay::One(id),
                (None, true) => Replay::all_dead(),
                (None, false) => Replay::Matching(DeliveryFilter {
                    state: match (dead, failed, delivered) {
                        (_, true, _) => DeliveryState::Failed,
                        (_, _, true) => DeliveryState::Delivered,
                        _ => DeliveryState::Dead,
                    },
                    hook,
                    receiver,
                    from_ms: since,
                    to_ms: until,
                }),
            };
            let n = if dry_run {
                admin.count_retry(which.clone()).await?
            } else {
                admin.retry(which.clone()).await?
            };
            if let (Replay::One(id), 0) = (&which, n) {
                bail!(
                    "{id} cannot be sent again: it is not a dead letter, a delivered delivery \
                     within delivery.history_hours, or (SQLite) a pending one that failed (see \
                     `wasmhooks deliveries show {id}`)"
                );
            }
            let what = if n == 1 { "delivery" } else { "deliveries" };
            if dry_run {
                println!("{n} {what} would be sent again (nothing changed: --dry-run)");
            } else {
                println!("{n} {what} requeued; a running engine sends them within a second");
            }
        }
        DeliveriesCommand::Purge { older_than_days } => {
            let age = std::time::Duration::from_secs(u64::from(older_than_days) * 86_400);
            let n = admin.purge_dead(age).await?;
            println!("{n} dead letters deleted");
        }
    }
    Ok(())
}

/// One delivery and its attempts, as text. What receivers wrote is shown
/// with its control characters escaped: it never drives the terminal.
fn show(detail: &wasmhooks::DeliveryDetail) {
    let d = &detail.delivery;
    println!(
        "{}  {}  hook {}  {} attempts",
        d.id, d.state, d.hook, d.attempts
    );
    println!("POST {}  ({} bytes)", d.url, d.body_bytes);
    for (name, value) in &detail.headers {
        println!("  {name}: {}", printable(value));
    }
    if detail.history.is_empty() {
        println!("no attempt recorded");
    }
    for (n, a) in detail.history.iter().enumerate() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.at_ms);
        let status = a.status.map_or("-".to_owned(), |s| s.to_string());
        let outcome = a.outcome.as_str();
        println!(
            "\n#{} {}  {outcome}  status {status}  {} ms  by {}",
            n + 1,
            humantime::format_rfc3339_millis(at),
            a.duration_ms,
            a.engine
        );
        if let Some(error) = &a.error {
            println!("  error: {}", printable(error));
        }
        for (name, value) in &a.headers {
            println!("  {name}: {}", printable(value));
        }
        if let Some(body) = &a.body {
            let more = if a.body_truncated {
                " …(truncated)"
            } else {
                ""
            };
            println!("  body: {}{more}", printable(body));
        }
    }
}

/// `text` with control characters but line breaks and tabs escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}
