//! Why a delivery, or a hook's delivery policy, was refused.

/// A delivery a hook asked for that cannot be sent as asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The URL does not parse.
    #[error("delivery URL {url:?} is not valid: {source}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    /// Not http or https.
    #[error("delivery URL {0} must be http or https")]
    Scheme(reqwest::Url),
    /// A header name that HTTP does not allow.
    #[error("delivery header name {0:?} is not valid")]
    HeaderName(String),
    /// A header the engine sets itself.
    #[error("delivery header {0:?} is set by the engine, not by hooks")]
    Reserved(String),
    /// A header value that HTTP does not allow.
    #[error("delivery header {0:?} has a value that is not valid")]
    HeaderValue(String),
    /// More headers than a request can carry.
    #[error("the delivery has more headers than an HTTP request can carry")]
    TooManyHeaders,
}

/// An `allow_hosts` entry that is not a host, an address or a network.
#[derive(Debug, Clone, thiserror::Error)]
#[error("entry {entry:?} is neither a hostname, an IP address nor a CIDR")]
pub(crate) struct EgressError {
    pub entry: String,
}

/// A signing secret that cannot be used. It never shows the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// Neither prefix.
    #[error("secret #{0}: must start with whsec_ (HMAC-SHA256) or whsk_ (ed25519)")]
    Prefix(usize),
    /// Not base64 after the prefix.
    #[error("secret #{0}: is not valid base64 after its prefix")]
    Base64(usize),
    /// An HMAC key too short or too long.
    #[error("secret #{index}: a whsec_ secret must hold 24 to 64 bytes, this one holds {len}")]
    HmacLength { index: usize, len: usize },
    /// An ed25519 key of the wrong size.
    #[error(
        "secret #{index}: a whsk_ key must hold 32 bytes (or 64: seed and public key), this one holds {len}"
    )]
    Ed25519Length { index: usize, len: usize },
    /// An ed25519 key whose halves disagree.
    #[error("secret #{0}: the public half of this whsk_ key does not match its seed")]
    Mismatch(usize),
}

/// The HTTP client for a delivery's policy could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    /// The `allow_hosts` stored with the delivery no longer parses.
    #[error("queued allow_hosts: {0}")]
    Queued(#[source] EgressError),
    /// reqwest refused the client.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}
