//! One error type for the whole library. Every variant carries the context a user needs to fix
//! the problem: the file, the tensor, the argument, and what was expected versus what was found.
//! The library never prints and never panics on bad input; the CLI turns these into one line
//! on stderr and exit code 2.

use std::fmt;
use std::path::PathBuf;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
/// Everything that can go wrong, with the file, tensor or option at fault.
pub enum Error {
    /// A file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A required file is not there (config.json, model.safetensors, tokenizer.json ...).
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What the file is for.
        what: String,
    },
    /// A JSON file did not parse or lacks a required field.
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// config.json names an architecture we do not implement.
    UnknownArchitecture {
        /// The architecture named in the config.
        found: String,
        /// The architectures minfer implements.
        supported: Vec<&'static str>,
    },
    /// A weight file (safetensors / GGUF) is malformed: bad header, offsets past the end ...
    BadWeights {
        /// The weight file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    MissingTensor {
        /// The tensor.
        name: String,
        /// The checkpoint looked in.
        path: PathBuf,
    },
    /// A tensor has the wrong shape for the config.
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        got: Vec<usize>,
    },
    /// A tensor's dtype is not one we can compute with.
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// Its stored dtype.
        dtype: String,
    },
    /// A caller-supplied argument is invalid (token id out of range, prompt too long ...).
    InvalidArgument(String),
    /// An option (a field of `LoadOptions`, `GenerateOptions`, `SamplerConfig` ...) has a value
    /// minfer cannot use. `field` is the Rust field name, so a front end can map it to its own
    /// spelling (the CLI maps `context_len` to `--ctx`).
    InvalidOption {
        /// The option's field name, e.g. "temperature" or "context_len".
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// Why it is refused and what would be accepted.
        reason: String,
    },
    /// The tokenizer definition is invalid or uses an unsupported feature.
    Tokenizer(String),
    /// A device (CUDA driver, PTX interpreter) failed.
    Device(String),
    /// A PTX program failed to parse, or faulted while being interpreted.
    Ptx(String),
    /// A bug in minfer: code inside `op` panicked (on a thread-pool worker or the calling
    /// thread), and the panic was caught at the API boundary and turned into this error for the
    /// one call that hit it. The process, the thread pool and the model stay usable; the KV cache
    /// keeps what the last successful call left. Please report it with `message`.
    Internal {
        /// What was running: the op ("matmul mlp.down_proj", "rms_norm" ...), or the API call.
        op: String,
        /// The panic's message.
        message: String,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::Json`].
    pub fn json(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Error::Json {
            path: path.into(),
            message: message.to_string(),
        }
    }
    /// An [`Error::BadWeights`].
    pub fn bad_weights(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Error::BadWeights {
            path: path.into(),
            message: message.to_string(),
        }
    }
    /// An [`Error::InvalidArgument`].
    pub fn arg(message: impl fmt::Display) -> Self {
        Error::InvalidArgument(message.to_string())
    }
    /// An [`Error::InvalidOption`].
    pub fn option(
        field: &'static str,
        value: impl fmt::Display,
        reason: impl fmt::Display,
    ) -> Self {
        Error::InvalidOption {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::MissingFile { path, what } => write!(f, "{}: missing {what}", path.display()),
            Error::Json { path, message } => write!(f, "{}: {message}", path.display()),
            Error::UnknownArchitecture { found, supported } => write!(
                f,
                "unknown architecture {found:?}; supported: {}",
                supported.join(", ")
            ),
            Error::BadWeights { path, message } => write!(f, "{}: {message}", path.display()),
            Error::MissingTensor { name, path } => {
                write!(f, "tensor {name:?} not found in {}", path.display())
            }
            Error::ShapeMismatch {
                name,
                expected,
                got,
            } => {
                write!(
                    f,
                    "tensor {name:?}: expected shape {expected:?}, got {got:?}"
                )
            }
            Error::UnsupportedDtype { name, dtype } => {
                write!(f, "tensor {name:?}: unsupported dtype {dtype}")
            }
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::InvalidOption {
                field,
                value,
                reason,
            } => write!(f, "{field} = {value}: {reason}"),
            Error::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            Error::Device(m) => write!(f, "device: {m}"),
            Error::Ptx(m) => write!(f, "ptx: {m}"),
            Error::Internal { op, message } => write!(
                f,
                "internal error in {op}: {message} (a bug in minfer, please report it)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The payload a backend re-raises a worker's panic with, so that the API boundary can name the
/// op that panicked rather than the call around it.
pub(crate) struct OpPanic {
    pub(crate) op: String,
    pub(crate) message: String,
}

/// A panic payload's message (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(o) = p.downcast_ref::<OpPanic>() {
        o.message.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

impl Error {
    /// [`Error::Internal`] from a caught panic inside `op` (or the op an [`OpPanic`] names).
    pub(crate) fn from_panic(op: &str, p: Box<dyn std::any::Any + Send>) -> Error {
        match p.downcast::<OpPanic>() {
            Ok(o) => Error::Internal {
                op: o.op,
                message: o.message,
            },
            Err(p) => Error::Internal {
                op: op.to_string(),
                message: panic_message(&*p),
            },
        }
    }
}

/// Run `f`; a panic inside it (any thread whose panic rayon carries back) becomes
/// [`Error::Internal`] naming `op`. The API boundary: what the library computes, never a
/// caller's callback.
pub(crate) fn catch_panic<T>(op: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // AssertUnwindSafe: on a panic the caller gets an error and the state `f` touched is
    // either plain data (scratch buffers, KV rows past the cached prefix, which the next call
    // overwrites) or behind mutexes whose users recover from poisoning.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::from_panic(op, p)),
    }
}

/// **Not part of the API** (tests only): make the CPU backend panic inside a parallel op, to
/// check that the panic reaches the caller as [`Error::Internal`](crate::Error::Internal) and the
/// process lives on.
#[doc(hidden)]
pub mod fault {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CPU_OP_COUNTDOWN: AtomicUsize = AtomicUsize::new(0);

    /// Panic inside the `n`-th CPU op (counting from 1) run from now on, on a pool worker; 0
    /// disarms. Global to the process: use from a test binary of its own.
    pub fn panic_in_cpu_op(n: usize) {
        CPU_OP_COUNTDOWN.store(n, Ordering::SeqCst);
    }

    /// Counts one op; true for the op that should panic. One relaxed load when disarmed.
    pub(crate) fn tick() -> bool {
        if CPU_OP_COUNTDOWN.load(Ordering::Relaxed) == 0 {
            return false;
        }
        CPU_OP_COUNTDOWN
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|n| n == 1)
    }
}
