//! The kernel registry: every kernels/*.ptx file, embedded with `include_str!`, loaded once per
//! backend into the driver, and every entry point resolved once into a named field.
//!
//! Named fields (not a name → id map) so that a typo in a kernel name is a compile error and a
//! launch costs no lookup. There is no global state: two backends (two models, or a real GPU
//! and the interpreter side by side) each hold their own registry.
//! This module does not launch anything; `backend.rs` does, after checking preconditions.

use super::driver::{FuncId, GpuDriver};
use crate::error::Result;

/// One PTX file and the entry points it must define.
pub struct KernelSource {
    pub file: &'static str,
    pub ptx: &'static str,
    pub entries: &'static [&'static str],
}

/// A resolved kernel: its driver handle and its entry name (for errors and profiles).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub func: FuncId,
    pub name: &'static str,
}

/// The registry is written once, as `file => [entries]`; this expands it into the list of
/// sources ([`SOURCES`]), a struct with one named field per entry ([`Kernels`]), and the loader
/// that fills it. Each kernel name is written exactly once, here.
macro_rules! registry {
    ($($file:literal => [$($entry:ident),+ $(,)?]),+ $(,)?) => {
        /// Every kernel file shipped with minfer, in the order they are loaded.
        pub const SOURCES: &[KernelSource] = &[$(
            KernelSource {
                file: $file,
                ptx: include_str!(concat!("../../../kernels/", $file)),
                entries: &[$(stringify!($entry)),+],
            },
        )+];

        /// Every entry point, resolved.
        #[derive(Clone, Debug)]
        pub struct Kernels {
            $($(pub $entry: Kernel,)+)+
        }

        impl Kernels {
            /// Load every module into `drv` and resolve every entry point.
            pub fn load<D: GpuDriver + ?Sized>(drv: &D) -> Result<Kernels> {
                $(
                    let module = drv.load_module($file, include_str!(concat!("../../../kernels/", $file)))?;
                    $(
                        let $entry = Kernel {
                            func: drv.function(module, stringify!($entry))?,
                            name: stringify!($entry),
                        };
                    )+
                )+
                Ok(Kernels { $($($entry,)+)+ })
            }
        }
    };
}

registry! {
    "embed.ptx" => [embed_f32, embed_bf16, embed_f16],
    "rmsnorm.ptx" => [rms_norm_f32, add_rms_norm_f32, head_rms_norm_f32],
    "rope.ptx" => [rope_f32],
    "matvec.ptx" => [matvec_bf16, matvec_f16, matvec_f32],
    "matvec_q.ptx" => [matvec_q8_0, matvec_q4_0, matvec_q4_1, matvec_q4_k, matvec_q6_k],
    "embed_q.ptx" => [embed_q8_0, embed_q4_0, embed_q4_1, embed_q4_k, embed_q6_k],
    "gemm.ptx" => [gemm_bf16, gemm_f16],
    "attention.ptx" => [attn_split_f32, attn_combine_f32, attn_prefill_f32],
    "elementwise.ptx" => [silu_mul_f32, add_f32, copy_f32, glu_silu_f32, split_cols_f32],
    "gemma.ptx" => [gelu_tanh_mul_f32, scale_f32, glu_gelu_tanh_f32],
    "kv_cache.ptx" => [kv_append_f32],
    "argmax.ptx" => [argmax_f32],
    "cast.ptx" => [cast_f32_bf16, cast_bf16_f32, cast_f32_f16],
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
}
