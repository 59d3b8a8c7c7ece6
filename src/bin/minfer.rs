//! The `minfer` command: a thin layer over the library. `main → try_main → print the error with
//! a hint → exit(2)`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use minfer::{Error, GenerateOptions, LoadOptions, Model, Result, SamplerConfig};

const USAGE: &str = "\
minfer — transformer inference from scratch

USAGE:
  minfer generate MODEL (--ids 1,2,3 | --prompt TEXT) [--max-new-tokens N] [sampling] [--json]
  minfer logits   MODEL --ids 1,2,3 [--json]
  minfer help

MODEL is a Hugging Face directory (config.json + *.safetensors), or a .safetensors file with
config.json beside it.

OPTIONS:
  --threads N          CPU threads (default: all cores)
  --ctx N              KV-cache length (default: min(max_position_embeddings, 4096))
  --temperature T      0 = greedy (default 0)
  --top-k K  --top-p P  --min-p M  --repeat-penalty R  --seed S
  --max-new-tokens N   (default 128)
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
];
const BOOLEAN: &[&str] = &["json", "chat", "special", "profile", "ignore-eos", "help"];

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
        threads: a.get_or("threads", 0)?,
        context_len: a.get("ctx")?,
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

fn json_f64(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn cmd_logits(a: &Args) -> Result<()> {
    let ids = parse_ids(
        a.opts
            .get("ids")
            .ok_or_else(|| Error::arg("logits needs --ids"))?,
    )?;
    let mut model = Model::load(
        &a.model_path()?,
        &LoadOptions {
            all_logits: true,
            ..load_options(a)?
        },
    )?;
    let (argmax, last) = model.score(&ids)?;
    if a.flag("json") {
        let v = serde_json::json!({ "argmax": argmax, "logits": last });
        println!("{v}");
    } else {
        println!("argmax per position: {argmax:?}");
        let mut top: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
        top.sort_by(|x, y| y.1.total_cmp(&x.1));
        println!("top logits at the last position:");
        for (id, l) in top.iter().take(10) {
            println!("  {id:>8}  {l:>10.4}");
        }
    }
    Ok(())
}

fn cmd_generate(a: &Args) -> Result<()> {
    let ids = match a.opts.get("ids") {
        Some(s) => parse_ids(s)?,
        None => {
            return Err(Error::arg(
                "generate needs --ids (text prompts need a tokenizer)",
            ))
        }
    };
    let mut model = Model::load(&a.model_path()?, &load_options(a)?)?;
    let opts = GenerateOptions {
        max_new_tokens: a.get_or("max-new-tokens", 128)?,
        sampling: sampler_config(a)?,
        stop_ids: match a.opts.get("stop") {
            Some(s) => parse_ids(s)?,
            None => Vec::new(),
        },
        ignore_eos: a.flag("ignore-eos"),
    };
    let json = a.flag("json");
    let mut out = Vec::new();
    let mut stdout = std::io::stdout().lock();
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
        eprintln!(
            "prompt {} tokens, generated {} tokens, prefill {:.1} tok/s, decode {:.1} tok/s",
            stats.prompt_tokens, stats.generated_tokens, stats.prefill_tok_s, stats.decode_tok_s
        );
    }
    Ok(())
}

fn try_main() -> Result<()> {
    let a = Args::parse(std::env::args().skip(1))?;
    match a.positional.first().map(String::as_str) {
        Some("logits") => cmd_logits(&a),
        Some("generate") => cmd_generate(&a),
        Some("help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Error::arg(format!("unknown command {other:?}"))),
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
