//! One HTTP attempt: route (the egress guard), sign, POST, classify. It is
//! stateless: concurrency limits, the breaker and retries live in the
//! workers, which call this for every delivery.

use super::error::RouteError;
use super::history::{Answer, redact, secrets_of};
use super::schedule::{self, Attempt};
use super::{Delivery, DeliveryPolicy};
use crate::config::DeliveryConfig;
use crate::config::SettingsError;
use crate::delivery::egress::{Egress, Guard, Refused};
use crate::util::now_ms;
use reqwest::Url;
use reqwest::header::HeaderValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where deliveries under one pair of policies go out.
struct Route {
    client: reqwest::Client,
    guard: Arc<Guard>,
}

/// Most routes kept; they come from hook files, so stay bounded.
const MAX_ROUTES: usize = 256;

/// Sends deliveries. One per engine; cheap to share.
pub(crate) struct Sender {
    config: DeliveryConfig,
    /// What every hook may reach (`delivery.allow_hosts`).
    global: Egress,
    /// One route per (queued, current) egress pair, built on first use: the
    /// guard lives in the client's resolver, and each client keeps its own
    /// connection pool.
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

impl Sender {
    pub(crate) fn new(config: &DeliveryConfig) -> Result<Sender, SettingsError> {
        let global = Egress::parse(&config.allow_hosts)
            .map_err(|e| SettingsError::field("delivery.allow_hosts", e.to_string()))?;
        let sender = Sender {
            config: config.clone(),
            global,
            routes: Mutex::default(),
        };
        // Fail now if a client cannot be built.
        sender
            .route(None, None)
            .map_err(|e| SettingsError::field("delivery", e.to_string()))?;
        Ok(sender)
    }

    pub(crate) fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The client for deliveries queued under `queued` (an `allow_hosts`
    /// key) and sent under `current`: its guard lets through only what both
    /// allow, each with `delivery.allow_hosts` added.
    fn route(
        &self,
        queued: Option<&str>,
        current: Option<&Egress>,
    ) -> Result<Arc<Route>, RouteError> {
        let key = format!(
            "{}|{}",
            queued.unwrap_or("*"),
            current.map_or("*".to_owned(), Egress::key)
        );
        if let Some(route) = self.routes.lock().unwrap().get(&key) {
            return Ok(route.clone());
        }
        let mut all = Vec::new();
        if let Some(queued) = queued {
            let entries: Vec<String> = queued
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            let queued = Egress::parse(&entries).map_err(RouteError::Queued)?;
            all.push(self.global.with(&queued));
        }
        if let Some(current) = current {
            all.push(self.global.with(current));
        }
        if all.is_empty() {
            all.push(self.global.clone());
        }
        let guard = Arc::new(Guard::new(all));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect for us, past the guard.
            .no_proxy()
            .dns_resolver(guard.resolver())
            .user_agent(concat!("wasmhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(RouteError::Client)?;
        let route = Arc::new(Route { client, guard });
        let mut routes = self.routes.lock().unwrap();
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        routes.insert(key, route.clone());
        Ok(route)
    }

    /// One POST of `delivery`, under the policy it was queued with and
    /// `current`, the hook's policy now (`None` if it is not loaded); with
    /// what the receiver answered, as kept in the delivery's history
    /// (unless `delivery.history_attempts` is 0). `traceparent`, the
    /// attempt's own trace context, is sent as such (replacing one the hook
    /// set).
    pub(crate) async fn attempt(
        &self,
        delivery: &Delivery,
        current: Option<&DeliveryPolicy>,
        traceparent: Option<&str>,
    ) -> (Attempt, Option<Answer>) {
        let mut answer = None;
        let attempt = self.post(delivery, current, traceparent, &mut answer).await;
        (attempt, answer)
    }

    async fn post(
        &self,
        delivery: &Delivery,
        current: Option<&DeliveryPolicy>,
        traceparent: Option<&str>,
        answer: &mut Option<Answer>,
    ) -> Attempt {
        let permanent = |reason: String| Attempt::Permanent {
            reason,
            status: None,
        };
        let route = match self.route(delivery.queued.allow.as_deref(), current.map(|p| &p.egress)) {
            Ok(route) => route,
            Err(e) => return permanent(e.to_string()),
        };
        if let Some(refused) = refused_literal(&route.guard, &delivery.url) {
            return permanent(format!("hook {}: {refused}", delivery.hook));
        }
        let mut headers = delivery.headers.clone();
        headers.insert("webhook-id", header_value(&delivery.id));
        // Never sent: the attempt's own context goes as `traceparent`.
        headers.remove(crate::trace::STORED);
        if let Some(traceparent) = traceparent {
            headers.insert(crate::trace::TRACEPARENT, header_value(traceparent));
        }
        match (current.map(|p| &p.signer), delivery.queued.signed) {
            (Some(Some(signer)), _) => {
                let timestamp = now_ms() / 1000;
                let signature = signer.sign(&delivery.id, timestamp, &delivery.body);
                headers.insert("webhook-timestamp", header_value(&timestamp.to_string()));
                headers.insert("webhook-signature", header_value(&signature));
            }
            (None, true) => {
                return permanent(format!(
                    "hook {} is not loaded, so its signing secret is unknown and this signed \
                     delivery cannot be signed; load the hook again, then retry this dead letter",
                    delivery.hook
                ));
            }
            (Some(None), true) => {
                return permanent(format!(
                    "hook {} was queued with a signing secret, but its current NAME.toml has \
                     none, and a signed delivery is never sent unsigned; give the hook its \
                     `secret` again, then retry this dead letter",
                    delivery.hook
                ));
            }
            (_, false) => {}
        }
        // What a receiver must not get stored by echoing it back.
        let secrets: Vec<String> = secrets_of(&headers, &delivery.url)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let request = route
            .client
            .post(delivery.url.clone())
            .headers(headers)
            .body(delivery.body.clone());
        match request.send().await {
            Ok(mut response) => {
                let attempt = schedule::classify(response.status(), response.headers());
                if self.config.history_attempts > 0 {
                    *answer = Some(Answer::read(&mut response, &secrets).await);
                }
                attempt
            }
            Err(e) if e.is_builder() => permanent(redact(
                &format!("request could not be built: {e}"),
                &secrets,
            )),
            Err(e) => match refused_in(&e) {
                Some(refused) => permanent(format!("hook {}: {refused}", delivery.hook)),
                None => Attempt::Retry {
                    reason: redact(&describe(&e), &secrets),
                    status: None,
                    retry_after: None,
                },
            },
        }
    }
}

/// A URL whose host is an IP address never reaches the resolver: check it here.
fn refused_literal(guard: &Guard, url: &Url) -> Option<Refused> {
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    guard.check(url.host_str().unwrap_or(""), ip).err()
}

/// The guard's refusal, if that is why the request failed.
fn refused_in(e: &reqwest::Error) -> Option<Refused> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = cause.source();
    }
    None
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .expect("ids, timestamps, base64 and trace contexts are valid header values")
}

/// A transport error with its cause, e.g. "connect error: Connection refused".
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
