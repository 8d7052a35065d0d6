//! A delivery's message: its state ([`Record`], JSON) then its body.

use super::super::codec::{header_map, header_pairs};
use super::*;
use crate::config::HISTORY_MAX_BYTES;
use crate::delivery::history::{keep_latest, shown_headers, shown_url};
use crate::delivery::receiver_of;

/// A delivery's state, stored before its body in its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) hook: String,
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) signed: bool,
    pub(super) allow: Option<String>,
    pub(super) attempts: u32,
    pub(super) created_ms: u64,
    pub(super) next_ms: u64,
    /// Being sent by the engine that queued it until then (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) held_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_status: Option<u16>,
    /// When it was delivered (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) done_ms: Option<u64>,
    /// Its latest attempts, oldest first. One this build cannot read (a
    /// newer build's) is left out rather than failing the whole record.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub(super) history: Vec<AttemptRecord>,
}

impl Record {
    pub(super) fn of(d: &Delivery, now: u64) -> Record {
        Record {
            id: d.id.clone(),
            hook: d.hook.to_string(),
            url: d.url.to_string(),
            headers: header_pairs(&d.headers),
            signed: d.queued.signed,
            allow: d.queued.allow.as_deref().map(str::to_owned),
            attempts: 0,
            created_ms: now,
            next_ms: now,
            held_until: None,
            last_error: None,
            last_status: None,
            done_ms: None,
            history: Vec::new(),
        }
    }

    pub(super) fn encode(&self, body: &[u8]) -> Bytes {
        let meta = serde_json::to_vec(self).expect("a record serializes");
        let mut out = Vec::with_capacity(4 + meta.len() + body.len());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(body);
        out.into()
    }

    pub(super) fn decode(payload: &Bytes) -> Option<(Record, Bytes)> {
        let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        let meta = payload.get(4..4 + len)?;
        let record = serde_json::from_slice(meta).ok()?;
        Some((record, payload.slice(4 + len..)))
    }

    pub(super) fn delivery(&self, body: Bytes) -> Option<Delivery> {
        let headers = header_map(self.headers.clone());
        Some(Delivery {
            id: self.id.clone(),
            hook: self.hook.as_str().into(),
            url: self.url.parse().ok()?,
            headers,
            body,
            queued: QueuedUnder {
                signed: self.signed,
                allow: self.allow.as_deref().map(Into::into),
            },
        })
    }

    pub(super) fn receiver(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| receiver_of(&u))
            .unwrap_or_default()
    }

    pub(super) fn info(&self, state: &'static str, body_bytes: usize) -> DeliveryInfo {
        DeliveryInfo {
            id: self.id.clone(),
            hook: self.hook.clone(),
            url: shown_url(&self.url),
            receiver: self.receiver(),
            state,
            attempts: self.attempts,
            created_ms: self.created_ms,
            next_ms: (state == "pending").then_some(self.next_ms),
            delivered_ms: self.done_ms,
            last_error: self.last_error.clone(),
            last_status: self.last_status,
            body_bytes,
        }
    }
}

/// The attempts of a record, each one this build cannot read left out.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AttemptRecord>, D::Error> {
    let values = Vec::<serde_json::Value>::deserialize(d)?;
    Ok(values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

impl Record {
    /// Keeps `attempt`, and the latest `keep` before it, within
    /// [`HISTORY_MAX_BYTES`] in all: the record travels in one message.
    /// The newest alone always fits: its body (4 KiB) and headers (12 of
    /// 256 bytes) are at most about 43 KiB even with every byte escaped.
    pub(super) fn keep(&mut self, attempt: &AttemptRecord, keep: usize) {
        if keep == 0 {
            return;
        }
        self.history.push(attempt.clone());
        keep_latest(&mut self.history, keep);
        while self.history.len() > 1
            && serde_json::to_vec(&self.history).map_or(0, |v| v.len()) > HISTORY_MAX_BYTES
        {
            self.history.remove(0);
        }
    }

    /// As operators inspect it, in `state`.
    pub(super) fn detail(self, state: &'static str, body_bytes: usize) -> DeliveryDetail {
        DeliveryDetail {
            delivery: self.info(state, body_bytes),
            headers: shown_headers(&self.headers),
            history: self.history,
        }
    }
}

/// A receiver's token in subjects and consumer names.
pub(super) fn token(receiver: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::util::hex(&Sha256::digest(receiver.as_bytes())[..8])
}
