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

/// How many CUDA devices this build can use, or why none.
pub fn cuda_device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::cudarc_driver::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(no_cuda_feature())
    }
}

impl Device {
    /// Settle `Auto` and check that a requested GPU exists. Never returns `Auto`.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Device::Auto => Ok(match cuda_device_count() {
                Ok(n) if n > 0 => Device::Cuda(0),
                _ => Device::Cpu,
            }),
            Device::Cuda(i) => {
                let n = cuda_device_count()?;
                if i >= n {
                    return Err(Error::Device(format!(
                        "cuda:{i} requested, {n} CUDA device(s) present"
                    )));
                }
                Ok(Device::Cuda(i))
            }
            d => Ok(d),
        }
    }
}

/// The error for a CUDA device in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda_feature() -> Error {
    Error::Device(
        "minfer was built without the `cuda` feature (cargo build --features cuda)".into(),
    )
}

impl Device {
    /// Total memory of the device in bytes: `Some` for a GPU, `None` for the CPU and the
    /// interpreter (whose limit is host memory).
    pub fn total_memory(self) -> Result<Option<u64>> {
        match self.resolve()? {
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                use crate::backend::cuda::driver::GpuDriver;
                Ok(Some(
                    crate::backend::cuda::cudarc_driver::CudarcDriver::new(i)?.total_memory(),
                ))
            }
            _ => Ok(None),
        }
    }

    /// The memory-bandwidth ceiling of this device in GB/s, for "achieved GB/s as a fraction
    /// of ..." figures: on the CPU the read bandwidth with `threads` threads (0 = all cores); on
    /// a GPU the device-to-device copy bandwidth (bytes read plus bytes written) through
    /// minfer's copy kernel. The interpreter has no meaningful bandwidth: NaN.
    pub fn measure_bandwidth(self, threads: usize) -> Result<f64> {
        match self.resolve()? {
            Device::Cpu | Device::Auto => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::Device(format!("cannot start {threads} threads: {e}")))?;
                Ok(
                    pool.install(|| {
                        crate::backend::cpu::simd::measure_read_bandwidth(512 << 20, 3)
                    }),
                )
            }
            Device::Sim => Ok(f64::NAN),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let drv = crate::backend::cuda::cudarc_driver::CudarcDriver::new(i)?;
                let b = crate::backend::cuda::CudaBackend::new(drv)?;
                b.measure_copy_bandwidth(1 << 30, 10)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(no_cuda_feature()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoadOptions, Model};
    use std::path::Path;

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

    #[test]
    fn auto_never_fails_and_never_stays_auto() {
        // On a machine without a driver (CI) this is the CPU; with one, a GPU. Either way no
        // panic and no error.
        let d = Device::Auto.resolve();
        assert!(matches!(d, Ok(Device::Cpu) | Ok(Device::Cuda(0))), "{d:?}");
    }

    #[test]
    fn sim_device_runs_a_fixture_model() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama_gqa_untied");
        let opts = LoadOptions {
            max_batch: 4,
            device: Device::Sim,
            ..LoadOptions::default()
        };
        let mut m = Model::load(&dir, &opts).expect("load on sim");
        assert!(
            m.backend_name().contains("ptx interpreter"),
            "{}",
            m.backend_name()
        );
        let gen = crate::GenerateOptions {
            max_new_tokens: 2,
            ignore_eos: true,
            ..Default::default()
        };
        let mut n = 0;
        m.generate(&[1, 2, 3], &gen, |_| {
            n += 1;
            true
        })
        .expect("generate");
        assert_eq!(n, 2);
    }

    #[test]
    fn cuda_without_a_device_is_an_error_not_a_panic() {
        match cuda_device_count() {
            Ok(n) => assert!(Device::Cuda(n).resolve().is_err()),
            Err(_) => assert!(Device::Cuda(0).resolve().is_err()),
        }
    }
}
