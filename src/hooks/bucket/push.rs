//! `wasmhooks hooks push`: a hooks folder, as the bucket's next set.

use super::{BucketError, Buckets, CURRENT, Manifest, SetHook, object_name};
use crate::config::BucketConfig;
use crate::files::{MAX_SIGNATURE_BYTES, MAX_TOML_BYTES, MAX_WASM_BYTES, read_regular};
use crate::hooks::{hook_files, hook_name};
use crate::trust::signature_path;
use crate::util::hex;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The new set's version: every engine on the bucket switches to it.
    pub version: u64,
    /// Its hooks.
    pub hooks: usize,
    /// Files uploaded (those the bucket did not hold already).
    pub uploaded: usize,
    /// Their bytes.
    pub uploaded_bytes: u64,
}

/// Publishes the hooks of `dir` (each `NAME.wasm`, with its `NAME.toml`
/// and `NAME.sig` if there) as the bucket's next set: files the bucket
/// lacks are uploaded first, then the set itself, in one write, so an
/// engine never sees half of it.
pub async fn push(config: &BucketConfig, dir: &Path) -> Result<Pushed, BucketError> {
    let read = |path: &Path, max| {
        read_regular(path, max).map_err(|e| BucketError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let optional = |path: &Path, max| match read_regular(path, max) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(BucketError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    };
    let wasms = hook_files(dir).map_err(|e| BucketError::Read {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    if wasms.is_empty() {
        return Err(BucketError::Empty {
            path: dir.to_owned(),
        });
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut hooks = BTreeMap::new();
    let mut keep = |bytes: Vec<u8>| {
        let digest = hex(&Sha256::digest(&bytes));
        files.insert(digest.clone(), bytes);
        digest
    };
    for wasm in &wasms {
        let toml_path = wasm.with_extension("toml");
        let toml = optional(&toml_path, MAX_TOML_BYTES)?;
        if let Some(text) = &toml {
            check_secrets(&toml_path, text)?;
        }
        let hook = SetHook {
            wasm: keep(read(wasm, MAX_WASM_BYTES)?),
            toml: toml.map(&mut keep),
            sig: optional(&signature_path(wasm), MAX_SIGNATURE_BYTES)?.map(&mut keep),
        };
        hooks.insert(hook_name(wasm), hook);
    }
    let buckets = Buckets::open(config).await?;
    let url = &buckets.url;
    let (mut uploaded, mut uploaded_bytes) = (0, 0);
    for (digest, bytes) in &files {
        let name = object_name(digest);
        // Kept already, unless what is kept under that name is not this
        // content (planted, or damaged): then it is replaced.
        let stored = format!("SHA-256={}", URL_SAFE.encode(Sha256::digest(bytes)));
        if let Ok(info) = buckets.files.info(&name).await
            && !info.deleted
            && info.digest.as_deref() == Some(stored.as_str())
        {
            continue;
        }
        buckets
            .files
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| BucketError::nats(url, format!("upload {name}"), e))?;
        uploaded += 1;
        uploaded_bytes += bytes.len() as u64;
    }
    let manifest = Manifest {
        hooks,
        pushed_at_ms: crate::util::now_ms(),
        pushed_by: crate::delivery::history::engine_name(),
    };
    let json = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let version = buckets
        .sets
        .put(CURRENT, json.into())
        .await
        .map_err(|e| BucketError::nats(url, "publish the set", e))?;
    Ok(Pushed {
        version,
        hooks: manifest.hooks.len(),
        uploaded,
        uploaded_bytes,
    })
}

/// A `NAME.toml` travels in the bucket, which whoever can read it can
/// read, and is read on each engine from its copy of the set: a secret in
/// it must be a reference, `env:NAME` or `file:/absolute/path`.
fn check_secrets(path: &Path, text: &[u8]) -> Result<(), BucketError> {
    let refuse = |reason: String| BucketError::Secret {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(text).map_err(|_| refuse("it is not UTF-8 text".into()))?;
    let config = crate::config::HookConfig::from_toml(text).map_err(|e| refuse(e.to_string()))?;
    for secret in config.secret.list() {
        match secret.strip_prefix("file:") {
            Some(file) if !Path::new(file).is_absolute() => {
                return Err(refuse(format!(
                    "secret `file:{file}` is relative: an engine would look for it in its copy \
                     of the set, which holds only the hook's files; give an absolute path"
                )));
            }
            Some(_) => {}
            None if secret.starts_with("env:") => {}
            None => {
                return Err(refuse(
                    "a secret written in NAME.toml would be readable by whoever can read the \
                     bucket: use `env:NAME` or `file:/absolute/path`, set on each engine"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}
