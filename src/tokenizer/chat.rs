//! Chat templates: tokenizer_config.json's `chat_template` (a string, or a list of named
//! templates of which "default" is used) rendered with minijinja the way transformers renders
//! it with jinja2: trim_blocks and lstrip_blocks on, `raise_exception`, `tojson`, loop controls,
//! and Python string methods (`.strip()`, `.split()`, `.startswith()` ...) through
//! minijinja-contrib's pycompat. Not provided: `strftime_now` (templates that test for it fall
//! back to their default date), tools and documents arguments.

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use super::{terr, token_string, ChatMessage};
use crate::error::Result;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    extra: Vec<(String, String)>,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn from_config(cfg: &Value) -> Result<Option<ChatTemplate>> {
        let source = match cfg.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(list)) => {
                let named = |name: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                        .and_then(|t| t.get("template"))
                        .and_then(Value::as_str)
                };
                match named("default") {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(terr(
                            "chat_template is a list without a \"default\" template",
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(terr(format!(
                    "chat_template must be a string or a list, got {other}"
                )))
            }
        };
        Self::new(&source, cfg)
    }

    pub fn new(source: &str, cfg: &Value) -> Result<Option<ChatTemplate>> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| terr(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| terr(format!("chat_template does not parse: {e:#}")))?;
        let tok = |k: &str| cfg.get(k).and_then(token_string).unwrap_or_default();
        let extra = [
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ]
        .iter()
        .filter_map(|k| {
            cfg.get(*k)
                .and_then(token_string)
                .map(|v| (k.to_string(), v))
        })
        .collect();
        Ok(Some(ChatTemplate {
            env,
            bos_token: tok("bos_token"),
            eos_token: tok("eos_token"),
            extra,
        }))
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| terr(format!("chat_template: {e}")))?;
        let mut ctx = std::collections::BTreeMap::new();
        ctx.insert(
            "messages".to_string(),
            minijinja::Value::from(minijinja::value::Serde(messages)),
        );
        ctx.insert(
            "add_generation_prompt".to_string(),
            minijinja::Value::from(add_generation_prompt),
        );
        ctx.insert(
            "bos_token".to_string(),
            minijinja::Value::from(self.bos_token.clone()),
        );
        ctx.insert(
            "eos_token".to_string(),
            minijinja::Value::from(self.eos_token.clone()),
        );
        for (k, v) in &self.extra {
            ctx.insert(k.clone(), minijinja::Value::from(v.clone()));
        }
        tmpl.render(ctx).map_err(|e| {
            // raise_exception's message is the useful part; keep minijinja's location too.
            let detail = e.detail().map(str::to_string).unwrap_or_default();
            terr(format!("chat template failed: {detail} ({e})"))
        })
    }
}
