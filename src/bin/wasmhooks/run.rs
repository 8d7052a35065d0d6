//! `wasmhooks run`: one hook on one event, nothing sent.

use crate::cli::{RunArgs, load_config, load_hook_settings};
use anyhow::{Context, Result};
use wasmhooks::Event;

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let config = load_config(args.config.as_deref())?;
    let bytes = std::fs::read(&args.event)
        .with_context(|| format!("cannot read event file {}", args.event.display()))?;
    let event =
        Event::from_json(&bytes).with_context(|| format!("event file {}", args.event.display()))?;
    let settings = args
        .settings
        .as_deref()
        .map(load_hook_settings)
        .transpose()?;
    let result = wasmhooks::dry_run(&config, &args.hook, settings, &event).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
