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
    for path in [&secret, &public] {
        if path.exists() {
            bail!(
                "{} exists: an existing key is never replaced (losing it strands every hook it \
                 signed); pick another name",
                path.display()
            );
        }
    }
    // Each written whole under a temporary name, then linked to its own
    // (which fails if it appeared meanwhile): never a partial key file.
    let secret_temp = write_temp(&secret, &format!("{}\n", key.export()), 0o600)?;
    let public_temp = write_temp(&public, &format!("{}\n", key.public()), 0o644)
        .inspect_err(|_| drop(std::fs::remove_file(&secret_temp)))?;
    let linked = std::fs::hard_link(&secret_temp, &secret)
        .with_context(|| format!("cannot create {}", secret.display()))
        .and_then(|()| {
            std::fs::hard_link(&public_temp, &public)
                .with_context(|| format!("cannot create {}", public.display()))
                .inspect_err(|_| drop(std::fs::remove_file(&secret)))
        });
    let _ = std::fs::remove_file(&secret_temp);
    let _ = std::fs::remove_file(&public_temp);
    linked?;
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
        // A signature of anything else would replace the module's own.
        if wasm.extension().is_none_or(|e| e != "wasm") || !module.starts_with(b"\0asm") {
            bail!(
                "{} is not a hook module (NAME.wasm, WebAssembly): sign the .wasm",
                wasm.display()
            );
        }
        let signature = key.sign(&module);
        let path = signature_path(wasm);
        let temp = write_temp(&path, &format!("{signature}\n"), 0o644)?;
        std::fs::rename(&temp, &path)
            .with_context(|| format!("cannot write {}", path.display()))
            .inspect_err(|_| drop(std::fs::remove_file(&temp)))?;
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
                .map(|k| Ok(format!("file:{}", std::path::absolute(k)?.display())))
                .collect::<std::io::Result<_>>()?,
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

/// Writes `text` to a new hidden file beside `path` (which the engine's
/// watcher ignores), synced, with these permissions; returns its path.
fn write_temp(path: &Path, text: &str, mode: u32) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{:016x}", fastrand::u64(..)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))
        .inspect_err(|_| drop(std::fs::remove_file(&temp)))?;
    Ok(temp)
}
