//! One error type for the whole library. Every variant carries the context a user needs to fix
//! the problem: the file, the tensor, the argument, and what was expected versus what was found.
//! The library never prints and never panics on bad input; the CLI turns these into one line
//! on stderr and exit code 2.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A required file is not there (config.json, model.safetensors, tokenizer.json ...).
    MissingFile { path: PathBuf, what: String },
    /// A JSON file did not parse or lacks a required field.
    Json { path: PathBuf, message: String },
    /// config.json names an architecture we do not implement.
    UnknownArchitecture {
        found: String,
        supported: Vec<&'static str>,
    },
    /// A weight file (safetensors / GGUF) is malformed: bad header, offsets past the end ...
    BadWeights { path: PathBuf, message: String },
    /// A tensor the model needs is not in the checkpoint.
    MissingTensor { name: String, path: PathBuf },
    /// A tensor has the wrong shape for the config.
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor's dtype is not one we can compute with.
    UnsupportedDtype { name: String, dtype: String },
    /// A caller-supplied argument is invalid (token id out of range, prompt too long ...).
    InvalidArgument(String),
    /// The tokenizer definition is invalid or uses an unsupported feature.
    Tokenizer(String),
    /// A device (CUDA driver, PTX interpreter) failed.
    Device(String),
    /// A PTX program failed to parse, or faulted while being interpreted.
    Ptx(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn json(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Error::Json {
            path: path.into(),
            message: message.to_string(),
        }
    }
    pub fn bad_weights(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Error::BadWeights {
            path: path.into(),
            message: message.to_string(),
        }
    }
    pub fn arg(message: impl fmt::Display) -> Self {
        Error::InvalidArgument(message.to_string())
    }

    /// A one-line hint the CLI prints under the error.
    pub fn hint(&self) -> &'static str {
        match self {
            Error::Io { .. } | Error::MissingFile { .. } => {
                "check the path: a model is a directory with config.json and *.safetensors, a .safetensors file with config.json beside it, or a .gguf file"
            }
            Error::Json { .. } => "the file is not valid JSON or lacks a required field",
            Error::UnknownArchitecture { .. } => "minfer implements the llama family only; see README.md",
            Error::BadWeights { .. } => "the weight file is truncated or corrupt: download it again",
            Error::MissingTensor { .. } | Error::ShapeMismatch { .. } => {
                "the checkpoint does not match its config.json"
            }
            Error::UnsupportedDtype { .. } => "convert the checkpoint to f32, f16 or bf16",
            Error::InvalidArgument(_) => "see `minfer help`",
            Error::Tokenizer(_) => "the tokenizer.json uses a feature minfer does not implement",
            Error::Device(_) => "try --device cpu",
            Error::Ptx(_) => "a kernel failed to parse or faulted under the PTX interpreter",
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
            Error::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            Error::Device(m) => write!(f, "device: {m}"),
            Error::Ptx(m) => write!(f, "ptx: {m}"),
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
