//! What is kept of each attempt ([`AttemptRecord`]): when, how long, how it
//! ended, and what the receiver answered, bounded, with nothing that may
//! hold a secret.
//!
//! Of a response, only the headers in [`KEPT_HEADERS`] (none that carries
//! credentials) and the first [`BODY_KEPT`] bytes of the body are kept. Of
//! the request, what operators see ([`shown_headers`]) has the values of
//! credential headers (`Authorization`, `Cookie`, the signing headers…)
//! replaced: the delivery itself keeps them only to send it.

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most bytes of a response body kept in an attempt's record.
pub(crate) const BODY_KEPT: usize = 4096;

/// Longest wait for a response body's first [`BODY_KEPT`] bytes, once its
/// status is known: a receiver that answers then stalls holds its slot no
/// longer than this.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// Most bytes kept of one response header's value.
const HEADER_KEPT: usize = 256;

/// The response headers an attempt's record keeps: those that explain an
/// answer (its type, a wait asked for, a redirect, the receiver's own
/// request id and rate limits). None of them carries credentials.
pub(crate) const KEPT_HEADERS: [&str; 12] = [
    "content-type",
    "content-length",
    "date",
    "location",
    "retry-after",
    "server",
    "x-request-id",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// The receiver took it (2xx).
    Delivered,
    /// It failed and was tried again later.
    Retry,
    /// It failed for good: the delivery became a dead letter.
    Dead,
}

impl AttemptOutcome {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        }
    }
}

/// One attempt of a delivery, as kept in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    /// When it began (Unix ms).
    pub at_ms: u64,
    /// How long it took, the body's first bytes read included (ms).
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The receiver's status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The response's headers among those kept (`content-type`,
    /// `retry-after`, `location`, `x-request-id`, rate limits…), as
    /// `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The response body's first 4 KiB, as text (bytes that are not UTF-8
    /// replaced; the request's credentials, if echoed, redacted), if it
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Whether the body was longer than what is kept, or could not be read
    /// in full within a second.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// Which engine made it: `host/pid`.
    pub engine: String,
}

/// What a receiver answered, as kept: its status is in the attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The [`KEPT_HEADERS`] it sent.
    pub headers: Vec<(String, String)>,
    /// The body's first bytes, as text.
    pub body: String,
    /// More was sent than kept, or it did not come in time.
    pub truncated: bool,
}

impl Answer {
    /// The kept headers of `response`, and its body's first [`BODY_KEPT`]
    /// bytes, read within [`BODY_WAIT`]; any of `secrets` (the request's
    /// credentials) that the receiver echoed is replaced by `[redacted]`.
    pub(crate) async fn read(response: &mut reqwest::Response, secrets: &[&str]) -> Answer {
        let headers = kept_headers(response.headers(), secrets);
        // A little past what is kept, so that a credential across the cut
        // is still found whole, and redacted before the cut.
        let room = BODY_KEPT + SECRET_SLACK;
        let mut body = Vec::new();
        let read = async {
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) if body.len() + chunk.len() > room => {
                        let left = room - body.len();
                        body.extend_from_slice(&chunk[..left]);
                        // The connection is not reused unless the rest is
                        // read: reading no more is cheaper.
                        return true;
                    }
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => return false,
                    Err(_) => return true,
                }
            }
        };
        let cut_short = tokio::time::timeout(BODY_WAIT, read).await.unwrap_or(true);
        let text = redact(&String::from_utf8_lossy(&body), secrets);
        let kept = cut(&text, BODY_KEPT);
        Answer {
            headers,
            truncated: cut_short || kept.len() < text.len(),
            body: kept.to_owned(),
        }
    }
}

/// Bytes read past [`BODY_KEPT`] to find a credential across the cut.
const SECRET_SLACK: usize = 1024;

/// `text` with each of `secrets` in it replaced by `[redacted]`.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        // Short values ("1", "yes") are not credentials worth hiding, and
        // would blank out unrelated text.
        if secret.len() >= 8 && text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
    }
    text
}

/// The headers of `headers` among [`KEPT_HEADERS`], `secrets` redacted,
/// then each value cut to 256 bytes.
fn kept_headers(headers: &HeaderMap, secrets: &[&str]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| KEPT_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = redact(&String::from_utf8_lossy(value.as_bytes()), secrets);
            (
                name.as_str().to_owned(),
                cut(&value, HEADER_KEPT).to_owned(),
            )
        })
        .collect()
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What stands in for a credential's value wherever a delivery's request
/// headers are shown.
pub(crate) const REDACTED: &str = "[redacted]";

/// Whether a request header's value may be a credential: it is never
/// shown. Broad on purpose: hiding a harmless value costs little.
pub(crate) fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "cookie" | "set-cookie")
        || [
            "auth",
            "token",
            "secret",
            "key",
            "pass",
            "signature",
            "hmac",
            "session",
            "jwt",
            "credential",
            "bearer",
            "cert",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// The values of `headers` that [`is_secret`] names (whole, and past an
/// auth scheme such as `Bearer `), and the URL's password: what must not
/// come back in what a receiver answered.
pub(crate) fn secrets_of<'a>(headers: &'a HeaderMap, url: &'a reqwest::Url) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(name, _)| is_secret(name.as_str()))
        .filter_map(|(_, value)| value.to_str().ok())
        .flat_map(|value| {
            let credential = value.split_once(' ').map(|(_, rest)| rest.trim());
            std::iter::once(value).chain(credential)
        })
        .chain(url.password())
        .collect()
}

/// `url` as operators see it: its password, if any, replaced.
pub(crate) fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => ShownUrl(&parsed).to_string(),
        Err(_) => url.to_owned(),
    }
}

/// A URL shown (logged) without its password, formatted only if shown:
/// nothing is parsed or copied for a log line that is filtered out.
pub(crate) struct ShownUrl<'a>(pub &'a reqwest::Url);

impl std::fmt::Display for ShownUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.password().is_none() {
            return f.write_str(self.0.as_str());
        }
        let mut masked = self.0.clone();
        let _ = masked.set_password(Some(REDACTED));
        f.write_str(masked.as_str())
    }
}

/// Drops all but the latest `keep` attempts of `history` (oldest first).
pub(crate) fn keep_latest(history: &mut Vec<AttemptRecord>, keep: usize) {
    history.drain(..history.len().saturating_sub(keep));
}

/// A delivery's request headers as operators see them: credentials'
/// values replaced by `[redacted]`.
pub(crate) fn shown_headers(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        // The engine's own, never sent.
        .filter(|(name, _)| !name.eq_ignore_ascii_case(crate::trace::STORED))
        .map(|(name, value)| {
            let value = if is_secret(name) {
                REDACTED.to_owned()
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect()
}

/// Which engine this process is, in attempt records: `host/pid`.
pub(crate) fn engine_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname
    // writes at most that many bytes into it.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_owned()
    };
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown_and_their_headers_never_kept() {
        let pairs = vec![
            ("Authorization".to_owned(), "Bearer s3cr3t".to_owned()),
            ("x-api-key".to_owned(), "k".to_owned()),
            ("webhook-signature".to_owned(), "v1,x".to_owned()),
            ("cookie".to_owned(), "a=b".to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        let shown = shown_headers(&pairs);
        assert!(shown[..4].iter().all(|(_, v)| v == REDACTED));
        assert_eq!(shown[4].1, "application/json");
        for name in ["set-cookie", "authorization", "www-authenticate", "cookie"] {
            assert!(!KEPT_HEADERS.contains(&name), "{name}");
        }
    }

    #[test]
    fn credentials_echoed_back_are_redacted() {
        let token = "Bearer hunter2-t0ken";
        let text = format!("401: bad {token} for you");
        assert_eq!(redact(&text, &[token, "1"]), "401: bad [redacted] for you");
        assert_eq!(
            redact("1 and 1", &["1"]),
            "1 and 1",
            "short values are left"
        );
        let mut headers = HeaderMap::new();
        headers.insert("authorization", token.parse().unwrap());
        headers.insert("x-shopify-hmac-sha256", "c2lnbmF0dXJlcw==".parse().unwrap());
        headers.insert("x-mark", "visible-value".parse().unwrap());
        let url: reqwest::Url = "https://user:p4ssw0rd-long@example.com/".parse().unwrap();
        let mut secrets = secrets_of(&headers, &url);
        secrets.sort();
        assert_eq!(
            secrets,
            [token, "c2lnbmF0dXJlcw==", "hunter2-t0ken", "p4ssw0rd-long"]
        );
        assert!(!shown_url(url.as_str()).contains("p4ssw0rd"));
        assert_eq!(shown_url("http://a.test/x"), "http://a.test/x");
        assert!(!is_secret("webhook-id") && is_secret("webhook-signature"));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }
}
