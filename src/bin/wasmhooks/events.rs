//! `wasmhooks events export`: the archive, as JSON lines.

use crate::cli::{EventsArgs, EventsCommand};
use anyhow::{Context, Result};
use futures::StreamExt;
use std::io::Write;
use wasmhooks::{Archive, ArchiveError};
use wildmatch::WildMatch;

pub(crate) async fn events(args: EventsArgs) -> Result<()> {
    let config = args.store.engine_config()?;
    let archive = Archive::connect(&config).await?;
    match args.command {
        EventsCommand::Export {
            since,
            method,
            phase,
        } => {
            let methods: Vec<_> = method.iter().map(|m| WildMatch::new(m)).collect();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let (mut written, mut unreadable) = (0u64, 0u64);
            let mut events = archive.events(since);
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e @ ArchiveError::Record { .. }) => {
                        eprintln!("warning: {e}; skipped");
                        unreadable += 1;
                        continue;
                    }
                    Err(e) => return Err(e).context("reading the archive"),
                };
                if !methods.is_empty() && !methods.iter().any(|m| m.matches(&event.method)) {
                    continue;
                }
                if phase
                    .as_deref()
                    .is_some_and(|p| p != event.phase.to_string())
                {
                    continue;
                }
                let line = serde_json::to_vec(&event)?;
                let wrote = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
                if let Err(e) = wrote {
                    // `| head`: the reader has what it wanted.
                    return quiet_on_broken_pipe(e);
                }
                written += 1;
            }
            if let Err(e) = out.flush() {
                return quiet_on_broken_pipe(e);
            }
            if written == 0 && unreadable == 0 {
                eprintln!(
                    "no archived event matches; is `[archive]` in the engine's settings (and \
                     --state or --queue where that engine keeps its queue)?"
                );
            }
            Ok(())
        }
    }
}

/// A closed pipe (`| head`) ends the export quietly; any other write error
/// is one.
fn quiet_on_broken_pipe(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("writing to standard output")
    }
}
