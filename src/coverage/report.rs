//! A plugin's report: the entry points it knows, and which wait for a
//! verdict; checked before it is kept.

use super::{MAX_ENTRIES, MAX_REPORTER, MAX_TTL_SECS};
use serde::{Deserialize, Serialize};

/// What an orchestrator plugin guards: every entry point it knows, with
/// whether a call there waits for the verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CoverageReport {
    /// The plugin and its version, e.g. `xo-server-wasmhooks 0.1.0`.
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 128))]
    pub plugin: String,
    /// The orchestrator and its version, e.g. `xo-server 5.207.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 128))]
    pub orchestrator: Option<String>,
    /// Whether the plugin is loaded. An unloaded plugin guards nothing.
    pub loaded: bool,
    /// Whether a guarded call is refused when wasmhooks cannot be reached
    /// (`true`) or goes ahead (`false`).
    pub fail_closed: bool,
    /// How long the report holds: past this without a new one, what the
    /// plugin guards is unknown, and shown as such.
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 86400))]
    #[serde(deserialize_with = "whole_number")]
    pub ttl_secs: u64,
    /// Every entry point the plugin knows of, guarded or not.
    #[cfg_attr(feature = "server", schema(max_items = 5000))]
    pub entries: Vec<EntryPoint>,
}

/// One way into the orchestrator for one method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EntryPoint {
    /// Which way in: for Xen Orchestra `jsonrpc` (XO 5's web UI, xo-cli),
    /// `rest` (XO 6's web UI, REST scripts, XO's MCP server), `job` (XO's
    /// job executor), `xapi` (around XO).
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 32))]
    pub entry: String,
    /// The method its calls are events of (`vm.delete`), or `*` for every
    /// method.
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 256))]
    pub method: String,
    /// Where, for an entry point with routes: `DELETE /rest/v0/vms/:id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 512))]
    pub route: Option<String>,
    /// Whether a veto there stops the operation.
    pub guarded: bool,
    /// Why it is not guarded, or anything else the operator should know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(max_length = 1024))]
    pub note: Option<String>,
}

/// Why a coverage report was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    /// A field is missing, too long or out of range.
    #[error("coverage report of {reporter:?}: `{field}` {problem}")]
    Field {
        /// The reporter's name, as given.
        reporter: String,
        /// The field at fault, e.g. `entries[3].method`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A non-negative integer, also written as `30.0` (JSON does not tell them
/// apart, and the OpenAPI document's `integer` takes both).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        })
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number of seconds, got {n}"))
        })
}

/// Refuses a report whose fields are missing, too long or out of range.
pub(super) fn check(reporter: &str, r: &CoverageReport) -> Result<(), CoverageError> {
    let bad = |field: String, problem: String| CoverageError::Field {
        reporter: reporter.chars().take(MAX_REPORTER).collect(),
        field,
        problem,
    };
    if reporter.is_empty()
        || reporter.len() > MAX_REPORTER
        || !reporter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err(bad(
            "reporter".into(),
            format!("must be 1 to {MAX_REPORTER} of A-Z a-z 0-9 . _ : @ -, e.g. xo:myhost"),
        ));
    }
    // Characters, as the OpenAPI document's maxLength counts them.
    let text = |field: String, value: &str, max: usize, empty_ok: bool| {
        let n = value.chars().count();
        if (!empty_ok && n == 0) || n > max {
            Err(bad(
                field,
                format!(
                    "must be {}to {max} characters, got {n}",
                    if empty_ok { "" } else { "1 " }
                ),
            ))
        } else {
            Ok(())
        }
    };
    text("plugin".into(), &r.plugin, 128, false)?;
    if let Some(o) = &r.orchestrator {
        text("orchestrator".into(), o, 128, false)?;
    }
    if !(1..=MAX_TTL_SECS).contains(&r.ttl_secs) {
        return Err(bad(
            "ttl_secs".into(),
            format!("must be 1 to {MAX_TTL_SECS}, got {}", r.ttl_secs),
        ));
    }
    if r.entries.len() > MAX_ENTRIES {
        return Err(bad(
            "entries".into(),
            format!("lists at most {MAX_ENTRIES}, got {}", r.entries.len()),
        ));
    }
    for (i, e) in r.entries.iter().enumerate() {
        text(format!("entries[{i}].entry"), &e.entry, 32, false)?;
        text(format!("entries[{i}].method"), &e.method, 256, false)?;
        if let Some(route) = &e.route {
            text(format!("entries[{i}].route"), route, 512, false)?;
        }
        if let Some(note) = &e.note {
            text(format!("entries[{i}].note"), note, 1024, true)?;
        }
    }
    Ok(())
}
