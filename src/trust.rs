//! Who may ship a hook: ed25519 key pairs, the detached signature of a
//! hook's module (`NAME.sig` beside `NAME.wasm`), and checking it against
//! the keys an engine trusts (`[trust]` in its settings).
//!
//! A signature covers the module's bytes, through their SHA-256, and
//! nothing else: `NAME.toml` is the operator's, like the engine's own
//! settings. So a module signed once by its author can be served by any
//! operator, under any name and settings, and a module changed by one byte
//! is refused.
//!
//! Each of the three is one line of text, so that a key fits in a TOML
//! string and a signature in an HTTP header:
//!
//! ```text
//! wasmhooks-ed25519-public <base64 of the 32-byte key>
//! wasmhooks-ed25519-secret <base64 of the 32-byte seed>
//! wasmhooks-ed25519-signature <key id> <base64 of the 64-byte signature>
//! ```
//!
//! The key id is the first 16 hex digits of the SHA-256 of the public key:
//! it says which key signed, so a refusal can name it.
//!
//! ```
//! use wasmhooks::trust::{SecretKey, verify};
//!
//! let author = SecretKey::generate()?;
//! let module = b"\0asm...";
//! let signature = author.sign(module).to_string();
//! let trusted = [author.public()];
//! assert_eq!(verify(&trusted, module, Some(&signature))?, author.public().id());
//! assert!(verify(&trusted, b"\0asm..!", Some(&signature)).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const PUBLIC: &str = "wasmhooks-ed25519-public";
const SECRET: &str = "wasmhooks-ed25519-secret";
const SIGNATURE: &str = "wasmhooks-ed25519-signature";
/// What is signed: this, then the module's SHA-256. The prefix keeps a
/// hook signature from being taken for anything else signed by the same
/// key (a delivery's, say).
const DOMAIN: &[u8] = b"wasmhooks hook module v1\n";

/// Why a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The hook has no signature, and the engine runs only signed hooks.
    #[error(
        "it is not signed, and this engine runs only hooks signed by a key in `[trust]`: its \
         author signs it (`wasmhooks sign --key AUTHOR.key NAME.wasm`), and NAME.sig goes \
         beside it (for `POST /v1/simulate`, its line goes in the `Wasmhooks-Signature` header)"
    )]
    Unsigned,
    /// A key or a signature that is not in its format.
    #[error("not a {what}: {reason}")]
    Malformed {
        /// What was expected: `public key`, `secret key` or `signature`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A public key that anyone can sign for (a small-order point).
    #[error("a weak public key (a small-order point, which any signature matches): refused")]
    WeakKey,
    /// Signed by a key the engine does not trust.
    #[error(
        "signed by key {key_id}, which is not in `[trust]`: if you trust its author, add \
         their public key there (check its id with them); if not, this is not a hook to run"
    )]
    NotTrusted {
        /// The key that signed.
        key_id: String,
    },
    /// The signature does not match the module: it changed after it was
    /// signed (or the signature was made for another module).
    #[error(
        "its signature by key {key_id} does not match it: the module is not the one that key \
         signed (it changed since, or was tampered with, or NAME.sig is another module's); \
         get the module and its NAME.sig from the author again"
    )]
    Mismatch {
        /// The key the signature names.
        key_id: String,
    },
}

/// An author's public key: what an engine trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Its id: the first 16 hex digits of its SHA-256.
    pub fn id(&self) -> String {
        key_id(&self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC} {}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl FromStr for PublicKey {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<PublicKey, TrustError> {
        let bytes: [u8; 32] = decode("public key", PUBLIC, text.trim())?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| TrustError::Malformed {
                what: "public key",
                reason: "not a point of the curve".into(),
            })?;
        if key.is_weak() {
            return Err(TrustError::WeakKey);
        }
        Ok(PublicKey(key))
    }
}

/// An author's secret key: what signs hooks. Kept off the engine.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// A new key, from the operating system's random source.
    pub fn generate() -> std::io::Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(std::io::Error::other)?;
        Ok(SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Its public half, for the engines' `[trust]`.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Its text, for `NAME.key`: the secret itself (not a `Display`, so
    /// that no log or format prints it by accident).
    pub fn export(&self) -> String {
        format!("{SECRET} {}", STANDARD.encode(self.0.to_bytes()))
    }

    /// The signature of a hook's module, to write to `NAME.sig`.
    pub fn sign(&self, module: &[u8]) -> Signature {
        Signature {
            key_id: self.public().id(),
            signature: self.0.sign(&message(module)),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(of {})", self.public().id())
    }
}

impl FromStr for SecretKey {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<SecretKey, TrustError> {
        let seed: [u8; 32] = decode("secret key", SECRET, text.trim())?;
        Ok(SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }
}

/// A hook module's signature: which key, and its ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    key_id: String,
    signature: ed25519_dalek::Signature,
}

impl Signature {
    /// The id of the key that made it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SIGNATURE} {} {}",
            self.key_id,
            STANDARD.encode(self.signature.to_bytes())
        )
    }
}

impl FromStr for Signature {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Signature, TrustError> {
        let malformed = |reason: &str| TrustError::Malformed {
            what: "signature",
            reason: reason.into(),
        };
        let rest = text
            .trim()
            .strip_prefix(SIGNATURE)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| malformed(&format!("it does not start with `{SIGNATURE} `")))?;
        let (key_id, signature) = rest
            .split_once(' ')
            .ok_or_else(|| malformed("a key id and a signature, separated by a space"))?;
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the key id is not 16 hex digits"));
        }
        let bytes: [u8; 64] = STANDARD
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("the signature is not 64 bytes in base64"))?;
        Ok(Signature {
            key_id: key_id.to_ascii_lowercase(),
            signature: ed25519_dalek::Signature::from_bytes(&bytes),
        })
    }
}

/// Checks a module's signature (the text of its `NAME.sig`, `None` if it
/// has none) against the trusted keys; returns the id of the key that
/// signed it.
pub fn verify(
    trusted: &[PublicKey],
    module: &[u8],
    signature: Option<&str>,
) -> Result<String, TrustError> {
    let signature: Signature = signature.ok_or(TrustError::Unsigned)?.parse()?;
    // Every trusted key of that id (64 bits: two keys may share one).
    let mut keys = trusted
        .iter()
        .filter(|k| k.id() == signature.key_id)
        .peekable();
    if keys.peek().is_none() {
        return Err(TrustError::NotTrusted {
            key_id: signature.key_id,
        });
    }
    let message = message(module);
    // Strict: no malleable signature, no small-order component.
    if keys.any(|k| k.0.verify_strict(&message, &signature.signature).is_ok()) {
        Ok(signature.key_id)
    } else {
        Err(TrustError::Mismatch {
            key_id: signature.key_id,
        })
    }
}

/// Where a hook's signature is: `NAME.sig` beside `NAME.wasm`.
pub fn signature_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("sig")
}

fn message(module: &[u8]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(module));
    message
}

fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    Sha256::digest(key.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fixed-size bytes of `PREFIX BASE64`.
fn decode<const N: usize>(
    what: &'static str,
    prefix: &str,
    text: &str,
) -> Result<[u8; N], TrustError> {
    let malformed = |reason: String| TrustError::Malformed { what, reason };
    let encoded = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed(format!("it does not start with `{prefix} `")))?;
    STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(format!("not {N} bytes in base64 after `{prefix} `")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_signatures_survive_their_text() {
        let secret = SecretKey::generate().unwrap();
        let again: SecretKey = secret.export().parse().unwrap();
        assert_eq!(again.public(), secret.public());
        let public: PublicKey = secret.public().to_string().parse().unwrap();
        assert_eq!(public, secret.public());
        let signature = secret.sign(b"module");
        assert_eq!(
            signature.to_string().parse::<Signature>().unwrap(),
            signature
        );
        assert_eq!(signature.key_id(), public.id());
    }

    #[test]
    fn a_signature_holds_for_its_module_and_key_only() {
        let (alice, mallory) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let trusted = [alice.public()];
        let signed = alice.sign(b"module").to_string();
        assert_eq!(
            verify(&trusted, b"module", Some(&signed)),
            Ok(alice.public().id())
        );
        assert_eq!(
            verify(&trusted, b"modulE", Some(&signed)),
            Err(TrustError::Mismatch {
                key_id: alice.public().id()
            })
        );
        assert_eq!(verify(&trusted, b"module", None), Err(TrustError::Unsigned));
        let by_mallory = mallory.sign(b"module").to_string();
        assert_eq!(
            verify(&trusted, b"module", Some(&by_mallory)),
            Err(TrustError::NotTrusted {
                key_id: mallory.public().id()
            })
        );
        // Mallory's signature under Alice's key id.
        let forged = by_mallory.replace(&mallory.public().id(), &alice.public().id());
        assert!(matches!(
            verify(&trusted, b"module", Some(&forged)),
            Err(TrustError::Mismatch { .. })
        ));
        assert!(matches!(
            verify(&trusted, b"module", Some("ed25519 abc")),
            Err(TrustError::Malformed {
                what: "signature",
                ..
            })
        ));
    }

    #[test]
    fn a_weak_key_is_refused() {
        // The identity point: every signature with R = identity, s = 0 matches it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let text = format!("{PUBLIC} {}", STANDARD.encode(identity));
        assert_eq!(text.parse::<PublicKey>(), Err(TrustError::WeakKey));
    }
}
