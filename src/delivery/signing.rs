//! Signing deliveries per Standard Webhooks (<https://www.standardwebhooks.com>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`. A
//! `whsec_` secret signs it with HMAC-SHA256 (`v1,<base64>`), a `whsk_` key
//! with ed25519 (`v1a,<base64>`). With several secrets (rotation), each one
//! signs and `webhook-signature` lists them all, space-separated. The
//! timestamp is taken at each attempt, so a retry hours later still passes
//! a receiver's freshness check.

use super::KeyError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One parsed signing secret. Never printed.
enum Key {
    Hmac(Vec<u8>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A hook's signing secrets.
pub(crate) struct Signer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets, redacted)", self.keys.len())
    }
}

impl Signer {
    /// Parses secrets: `whsec_` + base64 (HMAC key), or `whsk_` + base64 of
    /// an ed25519 secret key (32-byte seed, or 64-byte seed and public key).
    /// Errors name the secret's position, never its value.
    pub(crate) fn parse(secrets: &[&str]) -> Result<Signer, KeyError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| parse_key(i + 1, secret))
            .collect::<Result<_, _>>()?;
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value for one attempt.
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut content = Vec::with_capacity(id.len() + body.len() + 24);
        content.extend_from_slice(id.as_bytes());
        content.extend_from_slice(format!(".{timestamp}.").as_bytes());
        content.extend_from_slice(body);
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| match key {
                Key::Hmac(secret) => {
                    let mut mac =
                        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
                    mac.update(&content);
                    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
                }
                Key::Ed25519(key) => {
                    format!("v1a,{}", STANDARD.encode(key.sign(&content).to_bytes()))
                }
            })
            .collect();
        signatures.join(" ")
    }
}

/// The `index`th secret (from 1, for messages) as a key.
fn parse_key(index: usize, secret: &str) -> Result<Key, KeyError> {
    let decode = |b64: &str| {
        STANDARD
            .decode(b64.trim())
            .map_err(|_| KeyError::Base64(index))
    };
    if let Some(b64) = secret.strip_prefix("whsec_") {
        let bytes = decode(b64)?;
        if bytes.len() < 24 || bytes.len() > 64 {
            return Err(KeyError::HmacLength {
                index,
                len: bytes.len(),
            });
        }
        Ok(Key::Hmac(bytes))
    } else if let Some(b64) = secret.strip_prefix("whsk_") {
        let bytes = decode(b64)?;
        let seed: [u8; 32] = match bytes.len() {
            32 | 64 => bytes[..32].try_into().expect("checked length"),
            len => return Err(KeyError::Ed25519Length { index, len }),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if bytes.len() == 64 && key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(KeyError::Mismatch(index));
        }
        Ok(Key::Ed25519(Box::new(key)))
    } else {
        Err(KeyError::Prefix(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_spec_example() {
        // The example in the Standard Webhooks specification.
        let signer = Signer::parse(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
        let signature = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn refuses_bad_secrets_without_echoing_them() {
        for bad in ["plain", "whsec_!!!", "whsec_c2hvcnQ=", "whsk_c2hvcnQ="] {
            let e = Signer::parse(&[bad]).unwrap_err();
            assert!(!e.to_string().contains(bad), "{e}");
        }
    }
}
