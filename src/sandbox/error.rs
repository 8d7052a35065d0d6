//! Why the sandbox could not set up, compile or link a hook.

use std::path::PathBuf;

/// What a core module hook must be.
const CORE_HINT: &str = "a core module hook must be a WASI preview1 command \
                         (wasm32-wasip1, exporting `_start`)";

/// What to do about a file cut short.
const TRUNCATED_HINT: &str = "the file is truncated or corrupt (write hooks to a temporary \
                              file and rename it into place)";

/// The sandbox could not set up the runtime, or compile or link a hook.
/// The caller adds which hook and file.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the engine's configuration or the linker's imports.
    #[error("cannot set up the WebAssembly runtime: {0:#}")]
    Setup(#[source] wasmtime::Error),
    /// The bytes do not start with the WebAssembly header.
    #[error(
        "not WebAssembly: the file does not start with the `\\0asm` header \
         (an empty or truncated file, or not a .wasm?)"
    )]
    NotWasm,
    /// A core module that is not a command.
    #[error(
        "this core module does not export `_start`; {CORE_HINT}: build it as an \
         executable, not a library or reactor"
    )]
    NoStart,
    /// A core module that cannot be parsed.
    #[error("{0}; {TRUNCATED_HINT}")]
    Corrupt(#[source] wasmparser::BinaryReaderError),
    /// A core module so malformed that the adapter gave up on it.
    #[error("this core module is malformed: {TRUNCATED_HINT}; {CORE_HINT}")]
    Malformed,
    /// A core module the preview1 adapter could not wrap.
    #[error("{0:#}; {CORE_HINT}")]
    Adapt(#[source] anyhow::Error),
    /// wasmtime could not compile the component.
    #[error("{0:#}{hint}", hint = truncated_hint(.0))]
    Compile(#[source] wasmtime::Error),
    /// The compiling thread died.
    #[error("the compiler thread failed: {0}")]
    CompilerThread(#[source] tokio::task::JoinError),
    /// The component imports what the engine does not provide.
    #[error("{0:#}; a hook may import only WASI and the `hook` world's `log` (see wit/hook.wit)")]
    Imports(#[source] wasmtime::Error),
    /// The component is neither a `hook` world nor a WASI command.
    #[error(
        "{0:#}; a hook must be a component exporting `setup` and `handle` of the \
         wasmhooks:hook `hook` world (0.4.0, 0.3.0 or 0.2.0; see wit/hook.wit), or a WASI \
         command (a wasm32-wasip1 module with `_start`, or a component exporting \
         wasi:cli/run) that reads the event on stdin (see docs/writing-hooks.md)"
    )]
    NotAHook(#[source] wasmtime::Error),
    /// Pre-initialising needs a component of the `hook` world.
    #[error("not a component of the `hook` world")]
    NotHookWorld,
}

/// A hint when a compile error looks like a file cut short. (A core module
/// never gets here: it is run as a WASI command.)
fn truncated_hint(error: &wasmtime::Error) -> &'static str {
    let message = format!("{error:#}");
    if message.contains("unexpected end") || message.contains("out of bounds") {
        "; the file is truncated (write hooks to a temporary file and rename it into place)"
    } else {
        ""
    }
}

/// The compiled-hook cache folder cannot be used; hooks are then compiled
/// at every start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    /// A file or folder could not be made, read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The folder or its key belongs to another user.
    #[error("{} belongs to another user (uid {uid})", path.display())]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The folder or its key is open to other users.
    #[error("{} is open to other users (mode {mode:o}); chmod it to 700 (600 for .key)", path.display())]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::files::ReadError,
    },
    /// The key file does not hold a key.
    #[error("{} is not a key; delete it", .0.display())]
    NotAKey(PathBuf),
    /// A compiled component could not be serialized.
    #[error("cannot serialize a compiled hook: {0:#}")]
    Serialize(#[source] wasmtime::Error),
}
