//! Device selection: `--device auto|cpu|cuda[:N]|sim` on the command line, [`Device`] in the
//! library API.
//!
//! `auto` picks the first CUDA GPU when the build has the `cuda` feature and a driver with a
//! device is present, and the CPU otherwise; `cuda` without a driver is a clear error, never a
//! panic (the driver library is probed before any call into it). [`Device::measure_bandwidth`] gives
//! the memory ceiling of the chosen device. Building the backend for a device is
//! `backend::on_device`'s business; this module parses and decides.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The first CUDA GPU if one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (rayon + SIMD).
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
    /// The PTX interpreter: the GPU kernels and host code, run on the CPU (slow; for tests).
    Sim,
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "sim" => Ok(Device::Sim),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map(Device::Cuda).map_err(|_| {
                    Error::option(
                        "device",
                        s,
                        "the GPU ordinal must be a number, as in cuda:0",
                    )
                }),
                None => Err(Error::option(
                    "device",
                    s,
                    "expected auto, cpu, cuda, cuda:N or sim",
                )),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Sim => f.write_str("sim"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("auto".parse::<Device>().ok(), Some(Device::Auto));
        assert_eq!("CPU".parse::<Device>().ok(), Some(Device::Cpu));
        assert_eq!("cuda".parse::<Device>().ok(), Some(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>().ok(), Some(Device::Cuda(3)));
        assert_eq!("sim".parse::<Device>().ok(), Some(Device::Sim));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        for d in [Device::Auto, Device::Cpu, Device::Cuda(2), Device::Sim] {
            assert_eq!(d.to_string().parse::<Device>().ok(), Some(d));
        }
    }
}
