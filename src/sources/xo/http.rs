//! Talking to XO's REST API: its routes, and what its answers mean.

use crate::sources::SourceError;
use futures::StreamExt;
use serde_json::Value;

/// Where XO lists a collection: its REST route, the type lower-cased and
/// plural (`VM` → `vms`, `VM-snapshot` → `vm-snapshots`, `task` → `tasks`).
pub(super) fn list_path(collection: &str) -> String {
    format!("{}s", collection.to_ascii_lowercase())
}

/// `fields`, with `id` (without which a change cannot be told apart).
pub(super) fn with_id(fields: &[String]) -> Vec<String> {
    let mut all = fields.to_vec();
    if !all.iter().any(|f| f == "id") {
        all.insert(0, "id".into());
    }
    all
}

/// What XO's answer `status` to `what` means: its refusal of the token
/// (401, 403), or another failure, with what XO said.
pub(super) fn refusal(status: reqwest::StatusCode, what: &str, text: &str) -> SourceError {
    let said = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.to_owned());
    let said = crate::util::truncate(&said, 300).to_owned();
    if matches!(status.as_u16(), 401 | 403) {
        SourceError::Refused {
            status: status.as_u16(),
            said,
        }
    } else {
        SourceError::Http {
            what: what.to_owned(),
            status: status.as_u16(),
            said,
        }
    }
}

/// The body, up to `max` bytes.
pub(super) async fn read_limited(
    response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| SourceError::Stream {
            reason: error_chain(&e),
        })?;
        if bytes.len() + chunk.len() > max {
            return Err(SourceError::Protocol {
                reason: format!("a listing larger than {max} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// An error with its causes, for the log.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `url` without a user name or password, to show.
pub(crate) fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_listed_where_xo_lists_them() {
        assert_eq!(list_path("VM"), "vms");
        assert_eq!(list_path("VM-snapshot"), "vm-snapshots");
        assert_eq!(list_path("task"), "tasks");
        assert_eq!(with_id(&["power_state".into()]), ["id", "power_state"]);
        assert_eq!(with_id(&["id".into(), "x".into()]), ["id", "x"]);
    }

    #[test]
    fn a_url_is_shown_without_credentials() {
        assert_eq!(
            shown("https://u:p@xo.example.org/"),
            "https://xo.example.org/"
        );
        assert_eq!(shown("https://xo.example.org"), "https://xo.example.org");
    }
}
