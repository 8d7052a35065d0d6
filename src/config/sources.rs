//! `[sources]`: event sources the engine reads by itself.

use super::{Secrets, SettingsError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Event sources the engine reads by itself (see [`crate::sources`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Xen Orchestra's event stream (`GET /rest/v0/events`): changes to
    /// XO's objects, whoever made them, as observed events. Needs no XO
    /// plugin.
    pub xo: Option<XoSourceConfig>,
    /// The engine's own alerts (a receiver's circuit opened, a dead
    /// letter, a hook that failed to load, a source that lost its
    /// orchestrator) as system events, for hooks subscribed to them.
    pub system: SystemSourceConfig,
}

/// `[sources.system]`: the engine's own alerts as system events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemSourceConfig {
    /// Whether the engine emits them at all (it costs nothing while no
    /// hook subscribes to the `system` phase).
    pub enabled: bool,
    /// The summary window, in seconds: the first alert about a receiver,
    /// hook or source goes out at once, and those that follow within the
    /// window go out as one summary with their count at its end (1 to
    /// 3600).
    pub window_secs: u64,
}

impl Default for SystemSourceConfig {
    fn default() -> Self {
        SystemSourceConfig {
            enabled: true,
            window_secs: 60,
        }
    }
}

impl SystemSourceConfig {
    /// Checks the window.
    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=3600).contains(&self.window_secs) {
            return Err(SettingsError::field(
                "sources.system.window_secs",
                format!("{} is not between 1 and 3600", self.window_secs),
            ));
        }
        Ok(())
    }
}

/// `[sources.xo]`: XO's event stream as a source of observed events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XoSourceConfig {
    /// XO's base URL, e.g. `https://xo.example.org` (its REST API is under
    /// `/rest/v0`).
    pub url: String,
    /// An XO authentication token (XO's user page, or `xo-cli
    /// token.create`), sent as XO's `authenticationToken` cookie. Or
    /// `env:NAME` / `file:PATH` (absolute) to read it from there at start.
    /// Never logged.
    pub token: SecretString,
    /// The collections to watch (XO's object types: `VM`, `host`, `SR`,
    /// `pool`, `alarm`, `task`, …), each with the fields whose changes
    /// count (`["*"]`: all of them; `id` is always read). By default `VM`
    /// and `host` power state and name, every `alarm`, and `task` status.
    #[serde(default = "default_collections")]
    pub collections: std::collections::BTreeMap<String, Vec<String>>,
    /// Objects whose last state is kept, to tell what changed (the least
    /// recently changed go first; a change to one no longer kept has no
    /// `previous`).
    #[serde(default = "default_max_objects")]
    pub max_objects: usize,
    /// Observed events waiting for the engine to accept them; past this,
    /// the stream is read again from scratch (a `resync`), so none is
    /// silently lost and a slow hook never holds the stream.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// The longest pause between reconnection attempts (ms); they start at
    /// a quarter of a second and double.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A stream silent this long (XO pings every 30 s) is taken for dead
    /// and opened again (ms).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A PEM file with the certificate authority of XO's HTTPS certificate,
    /// if it is not one the system trusts (XO's self-signed default).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from XO. Only for a test bed: anyone on the
    /// path could read the token.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

/// A secret setting: read as a string, never printed or written back.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The secret, to use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString(s)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

fn default_collections() -> std::collections::BTreeMap<String, Vec<String>> {
    let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect();
    [
        ("VM", fields(&["power_state", "name_label"])),
        ("host", fields(&["power_state", "name_label", "enabled"])),
        ("alarm", fields(&["*"])),
        ("task", fields(&["status", "properties", "start", "end"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn default_max_objects() -> usize {
    100_000
}

fn default_max_pending() -> usize {
    10_000
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    90_000
}

impl XoSourceConfig {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let f = |name: &str| format!("sources.xo.{name}");
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(SettingsError::field(
                    &f("url"),
                    format!(
                        "{:?} is not an http(s) URL such as https://xo.example.org",
                        self.url
                    ),
                ));
            }
        }
        if self.token.expose().trim().is_empty() {
            return Err(SettingsError::field(
                &f("token"),
                "is empty: give an XO authentication token, or env:NAME / file:PATH",
            ));
        }
        if self.collections.is_empty() {
            return Err(SettingsError::field(
                &f("collections"),
                "is empty: name at least one, e.g. VM = [\"power_state\"]",
            ));
        }
        for (name, fields) in &self.collections {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(SettingsError::field(
                    &f("collections"),
                    format!("{name:?} is not an XO collection name (letters, digits and -)"),
                ));
            }
            if fields.is_empty() || fields.iter().any(|x| x.is_empty() || x.contains(',')) {
                return Err(SettingsError::field(
                    &format!("sources.xo.collections.{name}"),
                    "lists the fields to watch: at least one, no empty name or comma, or [\"*\"]",
                ));
            }
        }
        for (name, value, least) in [
            ("max_objects", self.max_objects as u64, 1),
            ("max_pending", self.max_pending as u64, 1),
            ("reconnect_max_ms", self.reconnect_max_ms, 250),
            ("idle_timeout_ms", self.idle_timeout_ms, 1_000),
        ] {
            if value < least {
                return Err(SettingsError::field(
                    &f(name),
                    format!("{value} is less than {least}"),
                ));
            }
        }
        Ok(())
    }

    /// The token, with an `env:` or `file:` reference read.
    pub fn resolve_token(&self) -> Result<String, SettingsError> {
        Secrets::One(self.token.expose().to_owned())
            .resolve(Path::new("/"))
            .map(|mut t| t.remove(0))
    }
}
