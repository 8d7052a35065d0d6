//! The operator console: one page at `GET /`, compiled into the binary.
//!
//! Its HTML, CSS and JavaScript live in `console/` and are put together
//! once, with the script and style inline, so the page is one request,
//! works offline and fetches nothing but the API's own routes (listed in
//! the OpenAPI document). The Content-Security-Policy allows exactly that
//! script and style (by hash) and connections to this origin: what a hook
//! or receiver wrote (reasons, URLs, errors) is shown as text, never run.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const HTML: &str = include_str!("console/index.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// The page, and its Content-Security-Policy.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let hash = |text: &str| {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    };
    let page = HTML
        .replace("/*CONSOLE_CSS*/", CSS)
        .replace("/*CONSOLE_JS*/", JS);
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        hash(JS),
        hash(CSS)
    );
    (page, csp)
});

/// The operator console: hooks, deliveries, receivers and recent activity.
/// Open without the token; it asks for the token and sends it on its own
/// requests.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The console's page", content_type = "text/html; charset=utf-8", body = String))
)]
pub(super) async fn page() -> Response {
    let (page, csp) = &*PAGE;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_has_its_script_and_style_inline() {
        let (page, csp) = &*super::PAGE;
        assert!(!page.contains("/*CONSOLE_"), "every placeholder replaced");
        assert!(page.contains(super::JS) && page.contains(super::CSS));
        assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe"));
    }
}
