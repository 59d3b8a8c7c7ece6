//! The commands that look at a model rather than chat with it: tokenize, logits, perplexity,
//! inspect, convert, bench.

use std::io::Read;
use std::path::Path;

use minfer::{LoadOptions, Model};
use serde_json::json;

use crate::args::{BenchArgs, ConvertArgs, InspectArgs, LogitsArgs, PerplexityArgs, TokenizeArgs};
use crate::options::{device, load_options, max_context};
use crate::run::{json_f64, prompt_ids};
use crate::{note, outln, CliError, Out, Res};

pub fn tokenize(a: &TokenizeArgs, out: &mut Out) -> Res {
    let text = a.text.as_deref().or(a.text_flag.as_deref()).unwrap_or("");
    let tok = minfer::load_tokenizer(&a.path)?;
    let (ids, pieces) = tok.encode_with_pieces(text, a.special)?;
    if a.json {
        outln!(out, "{}", json!({ "ids": ids, "pieces": pieces }));
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            outln!(out, "{id:>8}  {p:?}");
        }
        out.flush()?;
        note!("{} tokens", ids.len());
    }
    Ok(())
}

pub fn logits(a: &LogitsArgs, out: &mut Out) -> Res {
    let dump = a.activations;
    let lo = LoadOptions {
        all_logits: true,
        record_activations: dump,
        ..load_options(&a.load)?
    };
    let mut model = Model::load(&a.model, &lo)?;
    let ids = prompt_ids(&a.prompt, &model)?;
    let (argmax, last) = model.score(&ids)?;
    let acts = model.take_activations();
    if a.json {
        let mut v = json!({ "argmax": argmax, "logits": last });
        if dump {
            v["activations"] = acts.iter().map(activation_summary).collect();
        }
        outln!(out, "{v}");
        return Ok(());
    }
    if dump {
        outln!(
            out,
            "{:<4} {:<44} {:>5} {:>10} {:>10} {:>10} {:>10}  first values",
            "#",
            "op",
            "rows",
            "mean",
            "rms",
            "min",
            "max"
        );
        for (i, act) in acts.iter().enumerate() {
            let s = activation_summary(act);
            let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            let head: Vec<String> = act
                .values
                .iter()
                .take(4)
                .map(|x| format!("{x:.4}"))
                .collect();
            outln!(
                out,
                "{i:<4} {:<44} {:>5} {:>10.4} {:>10.4} {:>10.4} {:>10.4}  [{}]",
                act.op,
                act.rows,
                f("mean"),
                f("rms"),
                f("min"),
                f("max"),
                head.join(", ")
            );
        }
    }
    outln!(out, "argmax per position: {argmax:?}");
    let mut top: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    top.sort_by(|x, y| y.1.total_cmp(&x.1));
    outln!(out, "top logits at the last position:");
    for &(id, l) in top.iter().take(10) {
        let piece = model
            .tokenizer()
            .and_then(|t| t.id_to_piece(id as u32))
            .unwrap_or("");
        outln!(out, "  {id:>8}  {l:>10.4}  {piece:?}");
    }
    Ok(())
}

/// Summary statistics of one op's output, for `logits --activations`.
fn activation_summary(act: &minfer::backend::Activation) -> serde_json::Value {
    let v = &act.values;
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
    let min = v.iter().copied().fold(f32::INFINITY, f32::min);
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    json!({
        "op": act.op, "rows": act.rows, "len": v.len(),
        "mean": json_f64(mean), "rms": json_f64(rms), "min": json_f64(min as f64), "max": json_f64(max as f64),
        "first": v.iter().take(8).map(|&x| json_f64(x as f64)).collect::<Vec<_>>(),
    })
}

pub fn perplexity(a: &PerplexityArgs, out: &mut Out) -> Res {
    let file = a
        .file
        .as_deref()
        .or(a.file_flag.as_deref())
        .unwrap_or(Path::new(""));
    // The text first: a missing text file is named as such, before the model is opened.
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::msg(
            format!("text file {}: {e}", file.display()),
            "perplexity MODEL FILE scores the UTF-8 text in FILE: check that path",
        )
    })?;
    let mut lo = LoadOptions {
        all_logits: true,
        ..load_options(&a.load)?
    };
    // The longest context the model allows, up to 8192 tokens, unless --ctx says otherwise.
    if lo.context_len.is_none() {
        lo.context_len = Some(max_context(&a.model)?.min(8192));
    }
    let mut model = Model::load(&a.model, &lo)?;
    // With the special tokens the tokenizer adds (BOS for Gemma, nothing for SmolLM2): the
    // model is scored on text as it sees it in use.
    let ids = model.require_tokenizer()?.encode(&text, true)?;
    let p = model.perplexity(&ids)?;
    if a.json {
        let v = json!({
            "ppl": json_f64(p.ppl), "ppl_stderr": json_f64(p.ppl_stderr), "mean_nll": json_f64(p.mean_nll),
            "nll_stderr": json_f64(p.nll_stderr), "tokens_scored": p.count,
        });
        outln!(out, "{v}");
    } else {
        outln!(
            out,
            "perplexity {:.4} ± {:.4} over {} tokens (mean NLL {:.4} ± {:.4})",
            p.ppl,
            p.ppl_stderr,
            p.count,
            p.mean_nll,
            p.nll_stderr
        );
    }
    Ok(())
}

pub fn inspect(a: &InspectArgs, out: &mut Out) -> Res {
    let mut report = minfer::inspect::inspect(&a.model)?;
    report.gpu_memory_bytes = device(&a.device)?.total_memory()?;
    if a.json {
        outln!(out, "{}", report.to_json());
    } else {
        crate::out!(out, "{report}");
    }
    Ok(())
}

pub fn convert(a: &ConvertArgs) -> Res {
    if !is_gguf(&a.model) {
        return Err(CliError::msg(
            format!(
                "convert reads a .gguf file; {} is not one",
                a.model.display()
            ),
            "give the path of a .gguf file (a Hugging Face directory needs no conversion)",
        ));
    }
    let dtype = a.dtype.dtype();
    minfer::gguf_to_hf(&a.model, &a.out_dir, dtype)?;
    note!("wrote {} ({dtype})", a.out_dir.display());
    Ok(())
}

/// A .gguf file, by extension or by its magic.
fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

pub fn bench(a: &BenchArgs, out: &mut Out) -> Res {
    use minfer::bench;
    if let Some(gpus) = &a.predict {
        return bench_predict(a, gpus, out);
    }
    let opts = bench::BenchOptions {
        prompt_len: a.prompt_len,
        gen_len: a.gen_len,
        repeats: a.repeats,
    };
    let want_profile = a.profile || a.trace.is_some();
    let lo = LoadOptions {
        context_len: Some(a.load.ctx.unwrap_or(opts.prompt_len + opts.gen_len + 8)),
        ..load_options(&a.load)?
    };
    let path_str = a.model.as_str();
    let load = |profile: bool| -> Res<Model> {
        let lo = LoadOptions {
            profile,
            ..lo.clone()
        };
        match path_str.strip_prefix("synthetic:") {
            Some(preset) => Ok(Model::synthetic(preset, a.dtype.dtype(), &lo)?),
            None => {
                let path = Path::new(path_str);
                // Without --ctx the cache is sized for the run; say so if that is too long.
                if a.load.ctx.is_none() {
                    let max = max_context(path)?;
                    if lo.context_len.is_some_and(|n| n > max) {
                        return Err(CliError::msg(
                            format!(
                                "--prompt-len {} + --gen-len {} do not fit in this model's context of {max} tokens",
                                opts.prompt_len, opts.gen_len
                            ),
                            "use a shorter --prompt-len or --gen-len",
                        ));
                    }
                }
                Ok(Model::load(path, &lo)?)
            }
        }
    };
    let mut model = load(false)?;
    let threads = lo.threads;
    // The ceiling: the CPU's read bandwidth with the same thread count, or the GPU's copy
    // bandwidth; measured before and after the run, the better of the two kept.
    let device = lo.device;
    let bw_before = device.measure_bandwidth(threads)?;
    let r = bench::run(&mut model, &opts)?;
    let bw = bw_before.max(device.measure_bandwidth(threads)?);
    let frac = r.decode_gb_s / bw;
    if a.json {
        let v = json!({
            "model": path_str, "backend": model.backend_name(), "parameters": model.num_parameters(),
            "prompt_len": opts.prompt_len, "gen_len": opts.gen_len,
            "prefill_tok_s": json_f64(r.prefill_tok_s), "decode_tok_s": json_f64(r.decode_tok_s),
            "decode_gb_s": json_f64(r.decode_gb_s), "read_bandwidth_gb_s": json_f64(bw),
            "decode_fraction_of_bandwidth": json_f64(frac),
            "prefill_runs": r.prefill_runs, "decode_runs": r.decode_runs,
        });
        outln!(out, "{v}");
    } else {
        outln!(
            out,
            "model    {path_str}: {} parameters on {}",
            model.num_parameters(),
            model.backend_name()
        );
        outln!(
            out,
            "prefill  pp{:<5} {:>9.1} tok/s   (median of {}: {:?})",
            opts.prompt_len,
            r.prefill_tok_s,
            r.prefill_runs.len(),
            r.prefill_runs
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        outln!(
            out,
            "decode   tg{:<5} {:>9.1} tok/s   {:.2} GB/s = {:.0}% of the measured read bandwidth ({:.1} GB/s)",
            opts.gen_len,
            r.decode_tok_s,
            r.decode_gb_s,
            100.0 * frac,
            bw
        );
    }
    out.flush()?;
    if want_profile {
        drop(model);
        let mut model = load(true)?;
        let p = bench::profile(&mut model, opts.prompt_len, opts.gen_len.min(16))?;
        if a.profile {
            let peak = bench::measure_fma_peak_gflops(threads)?;
            note!(
                "\nprefill of {} tokens: {:.1} ms",
                opts.prompt_len,
                p.prefill_seconds * 1e3
            );
            print_profile(&p.prefill, p.prefill_seconds, bw, peak);
            note!(
                "\n{} decode steps: {:.2} ms/token",
                p.decode_steps,
                p.decode_seconds * 1e3 / p.decode_steps.max(1) as f64
            );
            print_profile(&p.decode, p.decode_seconds, bw, peak);
            note!(
                "limits measured now: read bandwidth {bw:.1} GB/s; f32 FMA peak {peak:.1} GFLOP/s"
            );
        }
        if let Some(file) = &a.trace {
            let json = bench::chrome_trace(&p.trace);
            std::fs::write(file, json.to_string()).map_err(|e| {
                CliError::msg(
                    format!("trace file {}: {e}", file.display()),
                    "--trace FILE must be a writable path",
                )
            })?;
            note!(
                "trace: {} events written to {} (open in ui.perfetto.dev or chrome://tracing)",
                p.trace.len(),
                file.display()
            );
        }
    }
    Ok(())
}

/// The per-op table on stderr: share of time, achieved GB/s and GFLOP/s, and the fraction of
/// the machine's limit for whichever of the two binds that op.
fn print_profile(rows: &[minfer::backend::OpProfile], wall: f64, bw_gb_s: f64, peak_gflops: f64) {
    let mut rows = rows.to_vec();
    rows.sort_by(|x, y| y.seconds.total_cmp(&x.seconds));
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut table = format!(
        "{:<34} {:>7} {:>10} {:>7} {:>9} {:>10} {:>8}\n",
        "op", "calls", "ms", "share", "GB/s", "GFLOP/s", "% limit"
    );
    for r in &rows {
        let gbs = r.bytes / r.seconds / 1e9;
        let gfs = r.flops / r.seconds / 1e9;
        let limit = (gbs / bw_gb_s).max(gfs / peak_gflops);
        table += &format!(
            "{:<34} {:>7} {:>10.2} {:>6.1}% {:>9.2} {:>10.2} {:>7.0}%\n",
            r.op,
            r.calls,
            r.seconds * 1e3,
            100.0 * r.seconds / total.max(1e-12),
            gbs,
            gfs,
            100.0 * limit
        );
    }
    table += &format!(
        "{:<34} {:>7} {:>10.2}   (wall {:.2} ms; the rest is sampling and glue)",
        "total",
        "",
        total * 1e3,
        wall * 1e3
    );
    // Backend-specific counters (the PTX interpreter's): one column per counter.
    if let Some(names) = rows
        .iter()
        .find(|r| !r.extra.is_empty())
        .map(|r| r.extra.iter().map(|e| e.0).collect::<Vec<_>>())
    {
        table += &format!("\n\n{:<34}", "kernel counters (per launch)");
        for n in &names {
            table += &format!(" {n:>14}");
        }
        for r in rows.iter().filter(|r| !r.extra.is_empty()) {
            table += &format!("\n{:<34}", r.op);
            for (name, v) in &r.extra {
                // Ratios as they are; totals per launch.
                let v = if name.contains('/') {
                    *v
                } else {
                    v / r.calls.max(1) as f64
                };
                table += &format!(" {v:>14.2}");
            }
        }
    }
    note!("{table}");
}

/// `minfer bench --device sim --predict GPU[,GPU]`: the performance model's decode step.
fn bench_predict(a: &BenchArgs, gpus: &str, out: &mut Out) -> Res {
    if load_options(&a.load)?.device != minfer::Device::Sim {
        return Err(CliError::msg(
            "--predict works from the PTX interpreter's counters",
            "add --device sim",
        ));
    }
    let ctx = a.load.ctx.unwrap_or(1024);
    let preds = minfer::bench::predict_decode(&a.model, a.dtype.dtype(), gpus, ctx)?;
    for p in &preds {
        if a.json {
            let v = json!({
                "model": a.model, "gpu": p.gpu, "context": ctx, "predicted": true,
                "launches_per_token": p.launches,
                "device_us_per_token": json_f64(p.device_us),
                "token_us_without_graph": json_f64(p.token_us),
                "weight_bytes_per_token": json_f64(p.weight_bytes),
                "fraction_of_copy_bandwidth_graph": json_f64(p.bw_fraction_graph),
                "fraction_of_copy_bandwidth": json_f64(p.bw_fraction),
            });
            outln!(out, "{v}");
        } else {
            outln!(out, "{}", p.table);
        }
    }
    out.flush()?;
    Ok(())
}
