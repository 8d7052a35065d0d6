//! Reading the files an operator puts in the hooks folder (hooks, their
//! `NAME.toml`, `file:` secrets) without trusting them: only regular files
//! (a symlink is followed), up to a size limit. A FIFO, a socket, a device
//! or a directory is refused without blocking on it, so a mistake in the
//! folder never wedges the engine. Callers run this on a blocking thread.

use std::io::Read;
use std::path::Path;

/// Largest `.wasm` read: a Python hook is about 20 MB.
pub(crate) const MAX_WASM_BYTES: u64 = 256 * 1024 * 1024;
/// Largest `NAME.toml` read.
pub(crate) const MAX_TOML_BYTES: u64 = 1024 * 1024;
/// Largest `NAME.sig` read: one line.
pub(crate) const MAX_SIGNATURE_BYTES: u64 = 4 * 1024;
/// Largest `file:` secret read.
pub(crate) const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Opening or reading it failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file.
    #[error("it is {0}, not a regular file; put the file itself there")]
    NotRegular(&'static str),
    /// Bigger than the limit.
    #[error("it is {size} bytes, more than the {max} allowed")]
    TooBig { size: u64, max: u64 },
}

impl ReadError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The content of `path` if it is a regular file of at most `max` bytes.
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading blocks until a writer comes, unless it is
    // opened non-blocking; on a regular file the flag changes nothing.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(|e| {
        // A socket cannot be opened at all: say what it is, not ENXIO.
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => ReadError::NotRegular(kind(&meta.file_type())),
            _ => ReadError::Io(e),
        }
    })?;
    // The type of what was opened, not of what the name pointed at before.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(&meta.file_type())));
    }
    if meta.len() > max {
        return Err(ReadError::TooBig {
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // It may grow while read: never past the limit.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooBig {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}
