//! `wasmhooks keygen`, `sign` and `verify`: an author's key pair, a hook
//! module's signature (`NAME.sig`), and checking it as an engine with
//! `[trust]` will.

use crate::cli::{KeygenArgs, SignArgs, VerifyArgs, load_config};
use anyhow::{Context, Result, bail};
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use wasmhooks::config::TrustConfig;
use wasmhooks::trust::{SecretKey, signature_path, verify};

pub(crate) fn keygen(args: KeygenArgs) -> Result<()> {
    let key = SecretKey::generate().context("cannot draw a random key")?;
    let (secret, public) = (
        args.dir.join(format!("{}.key", args.name)),
        args.dir.join(format!("{}.pub", args.name)),
    );
    // Never over an existing key: losing one strands every hook it signed.
    write_new(&secret, &format!("{key}\n"), 0o600)?;
    if let Err(e) = write_new(&public, &format!("{}\n", key.public()), 0o644) {
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    println!(
        "key {}: secret in {} (keep it off the engines), public in {} (for [trust] keys)",
        key.public().id(),
        secret.display(),
        public.display()
    );
    Ok(())
}

pub(crate) fn sign(args: SignArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the secret key {}", args.key.display()))?;
    let key: SecretKey = text
        .parse()
        .with_context(|| format!("{} is not a secret key", args.key.display()))?;
    for wasm in &args.hooks {
        let module =
            std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        let signature = key.sign(&module);
        let path = signature_path(wasm);
        replace(&path, &format!("{signature}\n"))?;
        println!(
            "signed {} with key {}: {}",
            wasm.display(),
            signature.key_id(),
            path.display()
        );
    }
    Ok(())
}

pub(crate) fn verify_hooks(args: VerifyArgs) -> Result<ExitCode> {
    let trust = if args.keys.is_empty() {
        let config = load_config(args.config.as_deref())?;
        match config.trust {
            Some(trust) => trust,
            None => bail!(
                "no key to check against: give --key AUTHOR.pub, or --config with the \
                 engine's settings and their [trust]"
            ),
        }
    } else {
        TrustConfig {
            keys: args
                .keys
                .iter()
                .map(|k| format!("file:{}", k.display()))
                .collect(),
        }
    };
    let keys = trust.public_keys().context("the trusted keys")?;
    let mut refused = 0;
    for wasm in &args.hooks {
        let module =
            std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        let path = signature_path(wasm);
        let signature = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        match verify(&keys, &module, signature.as_deref()) {
            Ok(key) => println!("ok      {} signed by key {key}", wasm.display()),
            Err(e) => {
                refused += 1;
                println!("REFUSED {}: {e}", wasm.display());
            }
        }
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes a file that must not exist yet, with these permissions.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces a file at once: written beside it under a hidden name (which
/// the engine's watcher ignores), then renamed over it, so an engine never
/// reads half a signature.
fn replace(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{:08x}", std::process::id()));
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("cannot write {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
}
