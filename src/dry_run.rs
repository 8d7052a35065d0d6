//! [`dry_run`]: one hook on one event, as `wasmhooks run` shows it; nothing
//! is queued or sent.

use crate::alerts::Alerts;
use crate::config::{Config, HookConfig};
use crate::delivery::new_uid;
use crate::error::Error;
use crate::event::Event;
use crate::hooks::{LiveHook, Registry, SettingsFrom};
use crate::run::Runner;
use crate::sandbox::{Sandbox, Subscription};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// What a dry run found: see [`dry_run`].
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The hook's name.
    pub hook: String,
    /// What `setup` returned.
    pub subscription: Subscription,
    /// Whether the event matches the subscription.
    pub matches: bool,
    /// What `handle` returned, if the event matched.
    pub outcome: Option<DryOutcome>,
}

/// A hook's outcome, as a dry run shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DryOutcome {
    /// The deliveries it asked for (not sent).
    pub deliveries: Vec<DryDelivery>,
    /// Its veto, for a pre event.
    pub deny: Option<String>,
}

/// One delivery a dry run would have sent.
#[derive(Debug, Clone, Serialize)]
pub struct DryDelivery {
    /// The receiver.
    pub url: String,
    /// The request headers.
    pub headers: Vec<(String, String)>,
    /// The body: parsed JSON when it is JSON, else text.
    pub body: serde_json::Value,
}

/// Loads one hook file with its settings in a sandbox of its own, with what runs it: a dry run's, or a simulation's.
pub(crate) async fn load_alone(
    config: &Config,
    wasm: &Path,
    settings: SettingsFrom,
) -> Result<(Runner, LiveHook), Error> {
    let sandbox = Arc::new(Sandbox::new(config)?);
    let registry = Registry::new(
        sandbox.clone(),
        config.limits.clone(),
        config.trusted_keys()?,
        Default::default(),
        Arc::new(Alerts::off()),
    );
    let hook = registry.load(wasm, settings).await?;
    Ok((Runner::new(sandbox, config, Default::default()), hook))
}

/// Loads one hook file with its `NAME.toml` (or `settings` if given), runs
/// `setup` and, if the event matches, `handle`. Sends nothing.
pub async fn dry_run(
    config: &Config,
    wasm: &Path,
    settings: Option<HookConfig>,
    event: &Event,
) -> Result<DryRun, Error> {
    let settings = settings.map_or(SettingsFrom::Beside, SettingsFrom::Given);
    let (runner, hook) = load_alone(config, wasm, settings).await?;
    let matches = hook.wants(event);
    let outcome = if matches {
        let decision = runner.run(&hook, event, &new_uid()).await?;
        Some(DryOutcome {
            deliveries: decision
                .deliveries
                .into_iter()
                .map(|d| DryDelivery {
                    url: d.url.to_string(),
                    headers: d
                        .headers
                        .iter()
                        .filter(|(k, _)| k.as_str() != crate::trace::STORED)
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: serde_json::from_slice(&d.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&d.body).into_owned())
                    }),
                })
                .collect(),
            deny: decision.deny,
        })
    } else {
        None
    };
    Ok(DryRun {
        hook: hook.name().to_owned(),
        subscription: hook.subscription.clone(),
        matches,
        outcome,
    })
}
