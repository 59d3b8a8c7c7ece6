//! The `minfer` command: a thin layer over the library. `main → try_main → print the error with
//! a hint → exit(2)`. Only this binary prints; the library returns typed errors.
//!
//! - args.rs: the command line, declared with clap (help text and examples live there).
//! - run.rs: the commands that generate (demo, generate, chat) and their stop reasons.
//! - tools.rs: tokenize, logits, perplexity, inspect, convert, bench.
//! - options.rs: from arguments to the library's option structs.
//!
//! Stdout may be a pipe that closes early (`minfer ... | head`): everything written there goes
//! through [`Out`], which turns a broken pipe into a quiet exit 0.

mod args;
mod options;
mod run;
mod serve;
mod tools;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use args::{Cli, Command};

/// What a command can fail with.
pub enum CliError {
    /// From the library; printed with its field names mapped to this command's flags.
    Lib(minfer::Error),
    /// A usage error found by clap (unknown flag, bad value, missing argument).
    Usage(clap::Error),
    /// A failure the CLI itself detects, with its own hint.
    Msg { message: String, hint: String },
    /// Stdout was closed by the reader (`| head`): not an error, stop quietly.
    StdoutClosed,
}

impl From<minfer::Error> for CliError {
    fn from(e: minfer::Error) -> Self {
        CliError::Lib(e)
    }
}

impl CliError {
    pub fn msg(message: impl fmt::Display, hint: impl fmt::Display) -> Self {
        CliError::Msg {
            message: message.to_string(),
            hint: hint.to_string(),
        }
    }
}

pub type Res<T = ()> = std::result::Result<T, CliError>;

/// Locked stdout. Every write reports a closed pipe as [`CliError::StdoutClosed`].
pub struct Out(std::io::StdoutLock<'static>);

impl Out {
    pub fn stdout() -> Out {
        Out(std::io::stdout().lock())
    }

    pub fn print(&mut self, args: fmt::Arguments) -> Res {
        self.0.write_fmt(args).map_err(stdout_error)
    }

    pub fn flush(&mut self) -> Res {
        self.0.flush().map_err(stdout_error)
    }
}

fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::msg(
            format!("writing to stdout: {e}"),
            "check that the output file or disk is writable",
        )
    }
}

/// `out!(o, "...", args)`: write to [`Out`], returning early on failure.
#[macro_export]
macro_rules! out {
    ($o:expr, $($t:tt)*) => { $o.print(format_args!($($t)*))? };
}

/// `outln!(o, "...", args)`: [`out!`] with a newline.
#[macro_export]
macro_rules! outln {
    ($o:expr) => { $o.print(format_args!("\n"))? };
    ($o:expr, $($t:tt)*) => {{ $o.print(format_args!($($t)*))?; $o.print(format_args!("\n"))? }};
}

/// `note!("...", args)`: a line on stderr. Unlike `eprintln!`, never panics if stderr is gone.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Library options and fields as the flags a user of this command typed. Library messages name
/// fields (`top_p`, `context_len`, maybe qualified as `SamplerConfig::top_p` or
/// `options.top_p`); older ones already name flags (`--top-p`), which are left alone.
/// Names with an underscore are replaced wherever they stand as a word; one-word names
/// (temperature, device ...) only where they are clearly the field: at the start of the message,
/// in backticks, or before `=`.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("context_len", "--ctx"),
    ("max_new_tokens", "--max-new-tokens"),
    ("repetition_penalty", "--repeat-penalty"),
    ("top_k", "--top-k"),
    ("top_p", "--top-p"),
    ("min_p", "--min-p"),
    ("stop_ids", "--stop"),
    ("ignore_eos", "--ignore-eos"),
    ("temperature", "--temperature"),
    ("seed", "--seed"),
    ("device", "--device"),
    ("quantize", "--quantize"),
    ("threads", "--threads"),
    ("record_activations", "--activations"),
    ("dtype", "--dtype"),
];

/// Rewrite the library's field names in `msg` as this CLI's flags (see [`FIELD_FLAGS`]).
pub fn fields_to_flags(msg: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(msg.len() + 16);
    let mut i = 0;
    'scan: while i < msg.len() {
        let rest = &msg[i..];
        let prev = msg[..i].chars().next_back();
        if !prev.is_some_and(|c| is_word(c) || c == '-' || c == ':' || c == '.') {
            // An optional qualifier: `LoadOptions::`, `SamplerConfig::`, `options.` ...
            let qual_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|&n| n > 0)
                .and_then(|n| {
                    let sep = &rest[n..];
                    if sep.starts_with("::") {
                        Some(n + 2)
                    } else if sep.starts_with('.') {
                        Some(n + 1)
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            for &(field, flag) in FIELD_FLAGS {
                for q in [qual_len, 0] {
                    let Some(after) = rest[q..].strip_prefix(field) else {
                        continue;
                    };
                    if after.starts_with(is_word) {
                        continue;
                    }
                    let start = out.trim_end();
                    let clear = field.contains('_')
                        || out.is_empty()
                        || start.ends_with("invalid argument:")
                        || prev == Some('`')
                        || after.trim_start().starts_with('=');
                    if clear {
                        out.push_str(flag);
                        i += q + field.len();
                        continue 'scan;
                    }
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The flag that sets a library field, if the CLI has one.
fn flag_for(field: &str) -> Option<&'static str> {
    FIELD_FLAGS.iter().find(|f| f.0 == field).map(|f| f.1)
}

/// The one line printed after `error: ` for a library error: options as the flags that set
/// them (`--ctx 100000: ...` rather than `context_len = 100000: ...`).
fn lib_message(e: &minfer::Error) -> String {
    match e {
        minfer::Error::InvalidOption {
            field,
            value,
            reason,
        } => match flag_for(field) {
            // A boolean field is a flag without a value.
            Some(flag) if value == "true" || value == "false" => {
                format!("{flag}: {}", fields_to_flags(reason))
            }
            Some(flag) => format!("{flag} {value}: {}", fields_to_flags(reason)),
            None => format!("{field} = {value}: {}", fields_to_flags(reason)),
        },
        minfer::Error::InvalidArgument(_) => fields_to_flags(&e.to_string()),
        _ => e.to_string(),
    }
}

/// The hint printed under a library error.
fn lib_hint(e: &minfer::Error, command: Option<&str>) -> String {
    match (e, command) {
        (minfer::Error::InvalidOption { field, .. }, _) if *field == "context_len" => {
            "lower --ctx to the model's maximum or less, or leave it out for the default".into()
        }
        (minfer::Error::InvalidArgument(_) | minfer::Error::InvalidOption { .. }, Some(c)) => {
            format!("see `minfer {c} --help`")
        }
        _ => general_hint(e).into(),
    }
}

/// What a user of the command line can do about each kind of library error.
fn general_hint(e: &minfer::Error) -> &'static str {
    use minfer::Error as E;
    match e {
        E::Io { .. } | E::MissingFile { .. } => {
            "check the path: a model is a directory with config.json and *.safetensors, a .safetensors file with config.json beside it, or a .gguf file"
        }
        E::Json { .. } => "the file is not valid JSON or lacks a required field",
        E::UnknownArchitecture { .. } => "see README.md for the supported architectures",
        E::BadWeights { .. } => "the weight file is truncated or corrupt: download it again",
        E::MissingTensor { .. } | E::ShapeMismatch { .. } => {
            "the checkpoint does not match its config.json"
        }
        E::UnsupportedDtype { .. } => "convert the checkpoint to f32, f16 or bf16",
        E::InvalidArgument(_) | E::InvalidOption { .. } => "see `minfer help`",
        E::Tokenizer(_) => "the tokenizer.json uses a feature minfer does not implement",
        E::Device(_) => "try --device cpu",
        E::Ptx(_) => "a kernel failed to parse or faulted under the PTX interpreter",
        _ => "see README.md",
    }
}

/// The subcommand named on the command line, if any (the first argument that is not an option).
fn subcommand_name() -> Option<String> {
    let name = std::env::args().skip(1).find(|a| !a.starts_with('-'))?;
    Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == name)
        .then_some(name)
}

/// A clap usage error as one line and a hint: clap's message (with its list of missing
/// arguments folded in), and its suggestion ("did you mean ...") if it has one.
fn usage_lines(e: &clap::Error, command: Option<&str>) -> (String, String) {
    let rendered = e.render().to_string();
    let mut paragraphs = rendered.split("\n\n");
    let message = paragraphs
        .next()
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.trim_start_matches("error: ").to_string();
    let suggestion = match (
        e.get(ContextKind::SuggestedArg),
        e.get(ContextKind::SuggestedSubcommand),
    ) {
        (Some(ContextValue::String(s)), _) => Some(format!("did you mean '{s}'?")),
        (_, Some(ContextValue::String(s))) => Some(format!("did you mean '{s}'?")),
        (_, Some(ContextValue::Strings(v))) if !v.is_empty() => {
            Some(format!("did you mean '{}'?", v.join("' or '")))
        }
        _ => None,
    };
    // Other tips clap gives, such as how to pass a text that starts with a dash (not offered
    // for what is clearly a misspelt flag).
    let misspelt_flag = matches!(
        e.get(ContextKind::InvalidArg),
        Some(ContextValue::String(a)) if a.strip_prefix("--").is_some_and(|f| f.starts_with(char::is_alphabetic))
    );
    let tips: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .filter(|t| !t.starts_with("a similar") && !t.starts_with("some similar"))
        .filter(|t| !(misspelt_flag && t.starts_with("to pass")))
        .collect();
    let help = match command {
        Some(c) => format!("see `minfer {c} --help`"),
        None => "see `minfer --help`".to_string(),
    };
    let main: Vec<String> = suggestion
        .into_iter()
        .chain(tips.into_iter().map(String::from))
        .collect();
    let hint = if main.is_empty() {
        help
    } else {
        format!("{} ({help})", main.join("; "))
    };
    (message, hint)
}

fn try_main() -> Res {
    let cli = Cli::try_parse().map_err(CliError::Usage)?;
    let mut out = Out::stdout();
    match cli.command {
        None => {
            let help = Cli::command().render_help().to_string();
            out!(out, "{help}");
            Ok(())
        }
        Some(Command::Demo(a)) => run::demo(&a, &mut out),
        Some(Command::Generate(a)) => run::generate(&a, &mut out),
        Some(Command::Chat(a)) => run::chat(&a, &mut out),
        Some(Command::Tokenize(a)) => tools::tokenize(&a, &mut out),
        Some(Command::Logits(a)) => tools::logits(&a, &mut out),
        Some(Command::Perplexity(a)) => tools::perplexity(&a, &mut out),
        Some(Command::Inspect(a)) => tools::inspect(&a, &mut out),
        Some(Command::Convert(a)) => tools::convert(&a),
        Some(Command::Bench(a)) => tools::bench(&a, &mut out),
        Some(Command::Serve(a)) => serve::serve(&a),
    }
}

fn main() -> ExitCode {
    let error = match try_main() {
        Ok(()) | Err(CliError::StdoutClosed) => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    let command = subcommand_name();
    let (message, hint) = match &error {
        CliError::Usage(e)
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            // --help, -h, --version, `help COMMAND`: clap's text on stdout, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        CliError::Usage(e) => usage_lines(e, command.as_deref()),
        CliError::Lib(e) => (lib_message(e), lib_hint(e, command.as_deref())),
        CliError::Msg { message, hint } => (message.clone(), hint.clone()),
        CliError::StdoutClosed => unreachable!("handled above"),
    };
    note!("error: {message}");
    note!("hint: {hint}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::fields_to_flags as f;

    #[test]
    fn field_names_become_flags() {
        assert_eq!(f("top_p must be in (0, 1]"), "--top-p must be in (0, 1]");
        assert_eq!(f("temperature must be ≥ 0"), "--temperature must be ≥ 0");
        assert_eq!(
            f("invalid argument: temperature must be ≥ 0"),
            "invalid argument: --temperature must be ≥ 0"
        );
        assert_eq!(
            f("SamplerConfig::repetition_penalty must be positive"),
            "--repeat-penalty must be positive"
        );
        assert_eq!(
            f("context_len 100000 exceeds max_position_embeddings 8192"),
            "--ctx 100000 exceeds max_position_embeddings 8192"
        );
        assert_eq!(
            f("the prompt has 12 tokens (raise `context_len`)"),
            "the prompt has 12 tokens (raise `--ctx`)"
        );
        assert_eq!(
            f("options.min_p = 2 is out of range"),
            "--min-p = 2 is out of range"
        );
        assert_eq!(
            f("quantize applies to the CPU backend only"),
            "--quantize applies to the CPU backend only"
        );
        assert_eq!(
            f("device \"gpu\": expected cpu"),
            "--device \"gpu\": expected cpu"
        );
    }

    #[test]
    fn flags_and_prose_are_left_alone() {
        for s in [
            "--top-p must be in (0, 1]",
            "invalid argument: --temperature must be a finite number ≥ 0",
            "the prompt has 9 tokens but the context holds 8 (raise --ctx)",
            "the CUDA device failed; the temperature of the room",
            "my_top_p_thing and top_pp",
            "max_position_embeddings 8192",
        ] {
            assert_eq!(f(s), s);
        }
    }
}
