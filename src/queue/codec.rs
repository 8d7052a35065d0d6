//! How both backends store a delivery's headers: as `[name, value]` pairs,
//! in order, a name given twice kept twice.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// The headers as pairs. Lossless: a value came from a hook's string, so
/// its bytes are UTF-8 (HTTP also allows bytes beyond ASCII in a value,
/// which `to_str` would refuse).
pub(super) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The pairs back as headers. A pair that no longer parses (not written by
/// this build) is skipped.
pub(super) fn header_map(pairs: Vec<(String, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            let _ = map.try_append(k, v);
        }
    }
    map
}
