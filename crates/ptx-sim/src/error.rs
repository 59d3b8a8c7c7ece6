//! The interpreter's one error type. Every variant names its culprit (module and line, kernel,
//! thread and block, address) in fields a caller can match on, and `Display` writes them as one
//! line: the same text whichever layer prints it.

use std::fmt;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call into the interpreter failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The PTX text is malformed, or uses something the interpreter does not support (an
    /// opcode, a modifier, a directive). Found when the module is loaded, never at launch.
    Ptx {
        /// The module name given to [`Device::load_module`](crate::Device::load_module).
        module: String,
        /// 1-based line in the module text.
        line: u32,
        /// The `.entry` being decoded, when the problem is inside one.
        kernel: Option<String>,
        /// What is wrong, naming the offending word.
        message: String,
    },
    /// A launch refused before any thread ran: argument count or sizes, block or grid shape,
    /// `.reqntid`/`.maxntid`, too much shared memory.
    Launch {
        /// The kernel's `.entry` name.
        kernel: String,
        /// What does not match.
        message: String,
    },
    /// A check failed while the kernel ran (out-of-bounds, misaligned or uninitialised access,
    /// shared-memory race, deadlock, bad warp collective, hang). Boxed: launches return this
    /// through every instruction's `Result`, which stays small that way.
    Fault(Box<Fault>),
    /// A host-side call (free, copy, memset) named memory that is not a live allocation.
    Memory {
        /// The device address the call was given.
        address: u64,
        /// What was attempted and where the address lies relative to the allocations.
        message: String,
    },
    /// A module or function handle that this device did not hand out.
    UnknownHandle {
        /// `"module"` or `"function"`.
        what: &'static str,
        /// The handle's index.
        id: usize,
    },
    /// The module has no `.entry` of that name.
    NoEntry {
        /// The module's name.
        module: String,
        /// The name asked for.
        entry: String,
        /// The entries the module does have.
        available: Vec<String>,
    },
}

/// Where and how a running kernel went wrong (see [`Error::Fault`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The kernel's `.entry` name.
    pub kernel: String,
    /// The module the kernel came from.
    pub module: String,
    /// 1-based line of the faulting instruction, and its source text; `None` for a fault that
    /// belongs to no single instruction (a hung block).
    pub line: Option<(u32, String)>,
    /// `%tid` of the faulting thread, when one thread is to blame.
    pub thread: Option<(u32, u32, u32)>,
    /// `%ctaid` of the block.
    pub block: (u32, u32, u32),
    /// The address (global) or offset (shared, local, param) involved, for memory faults.
    pub address: Option<u64>,
    /// What happened.
    pub message: String,
}

impl Error {
    /// True for errors about the device and its handles rather than about a kernel (bad host
    /// pointers, unknown handles, missing entries): a driver would report these as device errors.
    pub fn is_host_side(&self) -> bool {
        matches!(
            self,
            Error::Memory { .. } | Error::UnknownHandle { .. } | Error::NoEntry { .. }
        )
    }

    pub(crate) fn ptx(module: &str, line: u32, kernel: Option<&str>, message: String) -> Error {
        Error::Ptx {
            module: module.to_string(),
            line,
            kernel: kernel.map(str::to_string),
            message,
        }
    }

    pub(crate) fn launch(kernel: &str, message: String) -> Error {
        Error::Launch {
            kernel: kernel.to_string(),
            message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Ptx {
                module,
                line,
                kernel,
                message,
            } => {
                write!(f, "{module}:{line}: ")?;
                if let Some(k) = kernel {
                    write!(f, "kernel `{k}`: ")?;
                }
                f.write_str(message)
            }
            Error::Launch { kernel, message } => write!(f, "kernel `{kernel}`: {message}"),
            Error::Fault(x) => x.fmt(f),
            Error::Memory { message, .. } => f.write_str(message),
            Error::UnknownHandle { what, id } => write!(f, "unknown {what} id {id}"),
            Error::NoEntry {
                module,
                entry,
                available,
            } => write!(
                f,
                "module {module} has no .entry `{entry}` (it has: {})",
                available.join(", ")
            ),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel `{}`", self.kernel)?;
        match &self.line {
            Some((line, src)) => write!(f, " ({}:{line} `{src}`), ", self.module)?,
            None => f.write_str(": ")?,
        }
        if let Some(t) = self.thread {
            write!(f, "thread {t:?} ")?;
        }
        write!(f, "block {:?}: {}", self.block, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Fault> for Error {
    fn from(f: Fault) -> Error {
        Error::Fault(Box::new(f))
    }
}
