//! Lines in the engine's log, under the hook's name.

use crate::Level;

/// Writes `message` at `level`.
pub fn write(level: Level, message: impl AsRef<str>) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::log(level, message.as_ref());
    // Native builds (unit tests) have no host: print instead.
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {}", message.as_ref());
}

/// Detail for debugging a hook.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message);
}

/// Normal operation.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message);
}

/// Something odd the operator may want to know.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message);
}

/// Something failed.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message);
}
