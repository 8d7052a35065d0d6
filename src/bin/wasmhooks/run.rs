//! `wasmhooks run`: one hook on one event, nothing sent.

use crate::cli::{RunArgs, load_config};
use anyhow::{Context, Result};
use wasmhooks::Event;
use wasmhooks::config::HookConfig;

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let config = load_config(args.config.as_deref())?;
    let bytes = std::fs::read(&args.event)
        .with_context(|| format!("cannot read event file {}", args.event.display()))?;
    let event =
        Event::from_json(&bytes).with_context(|| format!("event file {}", args.event.display()))?;
    let settings = match &args.settings {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read settings file {}", file.display()))?;
            Some(
                HookConfig::from_toml(&text)
                    .with_context(|| format!("settings file {} is not valid", file.display()))?,
            )
        }
    };
    let result = wasmhooks::dry_run(&config, &args.hook, settings, &event).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
