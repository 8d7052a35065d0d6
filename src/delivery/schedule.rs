//! How an attempt's response is classified, and when the next try is.

use crate::config::DeliveryConfig;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// 2xx.
    Delivered(StatusCode),
    /// Worth trying again: connect error, timeout, 408, 429 or 5xx.
    Retry {
        reason: String,
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
    },
    /// Not worth trying again: 410 Gone, other 3xx/4xx, a refused address,
    /// a signature that cannot be made, or a request that can't be built.
    Permanent {
        reason: String,
        status: Option<StatusCode>,
    },
}

/// The wait before the next try, after `attempts` tries: the schedule's
/// delay with jitter, or the receiver's `Retry-After` (capped) if that is
/// longer. `None` once the schedule is spent.
pub(crate) fn retry_delay(
    config: &DeliveryConfig,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled_ms = *config
        .retry_schedule_ms
        .get(attempts.checked_sub(1)? as usize)?;
    let jitter = config.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    let scheduled = Duration::from_millis((scheduled_ms as f64 * factor) as u64);
    let cap = Duration::from_millis(config.max_retry_after_ms);
    Some(scheduled.max(retry_after.map(|r| r.min(cap)).unwrap_or_default()))
}

/// Why a delivery went to dead letters after its schedule was spent.
pub(crate) fn gave_up(attempts: u32, last: &str) -> String {
    format!("gave up after {attempts} attempts; last: {last}")
}

/// Sorts a response into delivered, retry or permanent failure.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered(status);
    }
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if retryable {
        return Attempt::Retry {
            reason: format!("receiver answered {status}"),
            status: Some(status),
            retry_after: retry_after(headers),
        };
    }
    let reason = if status == StatusCode::GONE {
        "receiver answered 410 Gone: it wants no more deliveries".to_owned()
    } else if status.is_redirection() {
        format!("receiver answered {status}; redirects are not followed, use the final URL")
    } else {
        format!("receiver answered {status}, which is not retried")
    };
    Attempt::Permanent {
        reason,
        status: Some(status),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn classifies_statuses() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::OK, &h),
            Attempt::Delivered(_)
        ));
        for retried in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::REQUEST_TIMEOUT,
        ] {
            assert!(matches!(classify(retried, &h), Attempt::Retry { .. }));
        }
        for permanent in [StatusCode::GONE, StatusCode::BAD_REQUEST, StatusCode::FOUND] {
            assert!(matches!(classify(permanent, &h), Attempt::Permanent { .. }));
        }
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        match classify(StatusCode::TOO_MANY_REQUESTS, &h) {
            Attempt::Retry { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_schedule_ends() {
        let config = DeliveryConfig {
            retry_schedule_ms: vec![100, 200],
            jitter: 0.0,
            ..DeliveryConfig::default()
        };
        assert_eq!(
            retry_delay(&config, 1, None),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            retry_delay(&config, 2, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1)),
            "Retry-After wins when longer"
        );
        assert_eq!(retry_delay(&config, 3, None), None);
    }
}
