//! Errors as values: every failure names the file, tensor, shape or option involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("weights {path}: {message}")]
    Weights { path: PathBuf, message: String },

    #[error("input {what}: {message}")]
    Input { what: String, message: String },

    #[error("invalid option: {0}")]
    Option(String),

    #[error("cannot write {path}: {message}")]
    Output { path: PathBuf, message: String },

    #[error("CUDA: {0}")]
    Cuda(String),

    #[error("numerical failure: {0}")]
    Numeric(String),

    /// Work that finished only in part (a device failed in a multi-device run): what is missing and
    /// how to finish it.
    #[error("incomplete: {0}")]
    Incomplete(String),

    /// A library call made out of order or with parts that do not belong together (a backward before
    /// any forward, a step on a network without an optimizer): a bug in the caller, not a bad option.
    #[error("invalid state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Weights { path: path.into(), message: message.into() }
    }
    pub fn output(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
        Error::Output { path: path.into(), message: message.to_string() }
    }
    pub fn input(what: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Input { what: what.into(), message: message.into() }
    }
}

/// Writes one line to standard output. When the reader has gone (`cda-engine inspect x | head -1`)
/// the process ends quietly with status 0, as other command-line tools do, instead of panicking on
/// the broken pipe; any other write error ends it with status 1 and a message.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`print_line`]: a closed pipe is a clean exit, never a panic.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::error::print_line(format_args!($($arg)*))
    };
}
