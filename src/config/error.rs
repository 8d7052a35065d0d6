//! Why settings cannot be used.

/// Settings that were refused: the engine's config, a hook's `NAME.toml`,
/// or the API token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value out of range, or at odds with another.
    #[error("{field}: {reason}")]
    Field {
        /// The setting, e.g. `dedup_window_secs` or `delivery.allow_hosts`.
        field: String,
        /// What is wrong with it, and what would do.
        reason: String,
    },
    /// A TOML document that does not parse (any secret in it hidden).
    #[error("{0}")]
    Toml(String),
    /// A secret given as `env:NAME` or `file:PATH` that cannot be read.
    #[error("secret: {0}")]
    Secret(String),
    /// An API token too short, or with whitespace in it.
    #[error(
        "the API token must be at least {min} characters, without spaces \
         (e.g. the output of `openssl rand -hex 32`)"
    )]
    Token {
        /// The fewest characters a token may have.
        min: usize,
    },
}

impl SettingsError {
    pub(crate) fn field(field: &str, reason: impl Into<String>) -> SettingsError {
        SettingsError::Field {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
