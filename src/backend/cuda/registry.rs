//! The kernel registry: every kernels/*.ptx file, embedded with `include_str!`, loaded once per
//! backend into the driver, and every entry point resolved once into a named field.
//!
//! Named fields (not a name → id map) so that a typo in a kernel name is a compile error and a
//! launch costs no lookup. There is no global state: two backends (two models, or a real GPU
//! and the interpreter side by side) each hold their own registry.
//! This module does not launch anything; `backend.rs` does, after checking preconditions.

use super::driver::{FuncId, GpuDriver};
use crate::error::{Error, Result};

/// One PTX file and the entry points it must define.
pub struct KernelSource {
    pub file: &'static str,
    pub ptx: &'static str,
    pub entries: &'static [&'static str],
}

/// Every kernel file shipped with minfer, in the order they are loaded.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "embed.ptx",
        ptx: include_str!("../../../kernels/embed.ptx"),
        entries: &["embed_f32", "embed_bf16", "embed_f16"],
    },
    KernelSource {
        file: "rmsnorm.ptx",
        ptx: include_str!("../../../kernels/rmsnorm.ptx"),
        entries: &["rms_norm_f32", "add_rms_norm_f32", "head_rms_norm_f32"],
    },
    KernelSource {
        file: "rope.ptx",
        ptx: include_str!("../../../kernels/rope.ptx"),
        entries: &["rope_f32"],
    },
    KernelSource {
        file: "matvec.ptx",
        ptx: include_str!("../../../kernels/matvec.ptx"),
        entries: &["matvec_bf16", "matvec_f16", "matvec_f32"],
    },
    KernelSource {
        file: "gemm.ptx",
        ptx: include_str!("../../../kernels/gemm.ptx"),
        entries: &["gemm_bf16", "gemm_f16"],
    },
    KernelSource {
        file: "attention.ptx",
        ptx: include_str!("../../../kernels/attention.ptx"),
        entries: &["attn_split_f32", "attn_combine_f32", "attn_prefill_f32"],
    },
    KernelSource {
        file: "elementwise.ptx",
        ptx: include_str!("../../../kernels/elementwise.ptx"),
        entries: &["silu_mul_f32", "add_f32", "copy_f32"],
    },
    KernelSource {
        file: "gemma.ptx",
        ptx: include_str!("../../../kernels/gemma.ptx"),
        entries: &["gelu_tanh_mul_f32", "scale_f32"],
    },
    KernelSource {
        file: "kv_cache.ptx",
        ptx: include_str!("../../../kernels/kv_cache.ptx"),
        entries: &["kv_append_f32"],
    },
    KernelSource {
        file: "argmax.ptx",
        ptx: include_str!("../../../kernels/argmax.ptx"),
        entries: &["argmax_f32"],
    },
    KernelSource {
        file: "cast.ptx",
        ptx: include_str!("../../../kernels/cast.ptx"),
        entries: &["cast_f32_bf16", "cast_bf16_f32", "cast_f32_f16"],
    },
];

/// A resolved kernel: its driver handle and its entry name (for errors and profiles).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub func: FuncId,
    pub name: &'static str,
}

/// Every entry point, resolved.
#[derive(Clone, Debug)]
pub struct Kernels {
    pub embed_f32: Kernel,
    pub embed_bf16: Kernel,
    pub embed_f16: Kernel,
    pub rms_norm_f32: Kernel,
    pub add_rms_norm_f32: Kernel,
    pub head_rms_norm_f32: Kernel,
    pub rope_f32: Kernel,
    pub matvec_bf16: Kernel,
    pub matvec_f16: Kernel,
    pub matvec_f32: Kernel,
    pub gemm_bf16: Kernel,
    pub gemm_f16: Kernel,
    pub attn_split_f32: Kernel,
    pub attn_combine_f32: Kernel,
    pub attn_prefill_f32: Kernel,
    pub silu_mul_f32: Kernel,
    pub add_f32: Kernel,
    pub copy_f32: Kernel,
    pub gelu_tanh_mul_f32: Kernel,
    pub scale_f32: Kernel,
    pub kv_append_f32: Kernel,
    pub argmax_f32: Kernel,
    pub cast_f32_bf16: Kernel,
    pub cast_bf16_f32: Kernel,
    pub cast_f32_f16: Kernel,
}

impl Kernels {
    /// Load every module into `drv` and resolve every entry point.
    pub fn load<D: GpuDriver + ?Sized>(drv: &D) -> Result<Kernels> {
        let mut funcs: Vec<Kernel> = Vec::new();
        for src in SOURCES {
            let module = drv.load_module(src.file, src.ptx)?;
            for &entry in src.entries {
                funcs.push(Kernel {
                    func: drv.function(module, entry)?,
                    name: entry,
                });
            }
        }
        // A unit test checks that SOURCES and the fields below name the same kernels, so this
        // error means the two lists were edited apart.
        let get = |name: &'static str| -> Result<Kernel> {
            funcs
                .iter()
                .copied()
                .find(|k| k.name == name)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "kernel {name} is not listed in the registry's SOURCES"
                    ))
                })
        };
        Ok(Kernels {
            embed_f32: get("embed_f32")?,
            embed_bf16: get("embed_bf16")?,
            embed_f16: get("embed_f16")?,
            rms_norm_f32: get("rms_norm_f32")?,
            add_rms_norm_f32: get("add_rms_norm_f32")?,
            head_rms_norm_f32: get("head_rms_norm_f32")?,
            rope_f32: get("rope_f32")?,
            matvec_bf16: get("matvec_bf16")?,
            matvec_f16: get("matvec_f16")?,
            matvec_f32: get("matvec_f32")?,
            gemm_bf16: get("gemm_bf16")?,
            gemm_f16: get("gemm_f16")?,
            attn_split_f32: get("attn_split_f32")?,
            attn_combine_f32: get("attn_combine_f32")?,
            attn_prefill_f32: get("attn_prefill_f32")?,
            silu_mul_f32: get("silu_mul_f32")?,
            add_f32: get("add_f32")?,
            copy_f32: get("copy_f32")?,
            gelu_tanh_mul_f32: get("gelu_tanh_mul_f32")?,
            scale_f32: get("scale_f32")?,
            kv_append_f32: get("kv_append_f32")?,
            argmax_f32: get("argmax_f32")?,
            cast_f32_bf16: get("cast_f32_bf16")?,
            cast_bf16_f32: get("cast_bf16_f32")?,
            cast_f32_f16: get("cast_f32_f16")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `.entry` names actually written in a PTX text.
    fn entries_in(ptx: &str) -> Vec<String> {
        ptx.lines()
            .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
            .map(|rest| rest.split('(').next().unwrap_or("").trim().to_string())
            .collect()
    }

    #[test]
    fn sources_list_exactly_the_entries_of_each_file() {
        for src in SOURCES {
            let mut found = entries_in(src.ptx);
            let mut listed: Vec<String> = src.entries.iter().map(|s| s.to_string()).collect();
            found.sort();
            listed.sort();
            assert_eq!(found, listed, "{}", src.file);
        }
    }

    #[test]
    fn every_file_targets_ptx_8_0_sm_80() {
        for src in SOURCES {
            assert!(src.ptx.contains("\n.version 8.0\n"), "{}", src.file);
            assert!(src.ptx.contains("\n.target sm_80\n"), "{}", src.file);
            assert!(src.ptx.contains("\n.address_size 64\n"), "{}", src.file);
        }
    }

    #[test]
    fn every_kernel_in_the_files_has_a_field() {
        // Kernels holds only Kernel fields: one per listed entry, none missing, none extra.
        let n: usize = SOURCES.iter().map(|s| s.entries.len()).sum();
        assert_eq!(
            std::mem::size_of::<Kernels>(),
            n * std::mem::size_of::<Kernel>()
        );
    }
}
