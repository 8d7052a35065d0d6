//! `[trust]`: the keys whose signatures a hook needs to be loaded.

use super::SettingsError;
use crate::files::{MAX_SECRET_BYTES, read_regular};
use crate::trust::PublicKey;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Run only signed hooks: every hook's module must carry a signature
/// (`NAME.sig`, written by `wasmhooks sign`) by one of these keys, or it
/// is refused at load, and the last good version of it keeps serving.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// The authors' public keys: each the line `wasmhooks keygen` writes
    /// to `NAME.pub` (`wasmhooks-ed25519-public …`), or `file:/PATH` of
    /// such a file (an absolute path). At least one.
    pub keys: Vec<String>,
}

impl TrustConfig {
    /// The keys, read and checked (as `Config::validate` does, and the
    /// engine where it loads hooks).
    pub fn public_keys(&self) -> Result<Vec<PublicKey>, SettingsError> {
        if self.keys.is_empty() {
            return Err(SettingsError::field(
                "trust.keys",
                "empty: list the public key of each author whose hooks this engine runs \
                 (`wasmhooks keygen` writes one), or remove `[trust]` to run unsigned hooks",
            ));
        }
        self.keys
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let field = format!("trust.keys[{i}]");
                let text = match entry.strip_prefix("file:") {
                    Some(path) if !Path::new(path).is_absolute() => {
                        return Err(SettingsError::field(
                            &field,
                            format!("file:{path}: give the key file's absolute path"),
                        ));
                    }
                    Some(path) => {
                        let bytes = read_regular(Path::new(path), MAX_SECRET_BYTES)
                            .map_err(|e| SettingsError::field(&field, format!("{path}: {e}")))?;
                        String::from_utf8(bytes).map_err(|_| {
                            SettingsError::field(&field, format!("{path}: it is not UTF-8 text"))
                        })?
                    }
                    None => entry.clone(),
                };
                text.parse().map_err(|e: crate::trust::TrustError| {
                    SettingsError::field(&field, e.to_string())
                })
            })
            .collect()
    }
}
