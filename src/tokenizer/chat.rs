//! Chat templates: tokenizer_config.json's `chat_template` (a string, or a list of named
//! templates of which "default" is used; or chat_template.jinja beside it) rendered with
//! minijinja the way transformers renders it with jinja2: trim_blocks and lstrip_blocks on,
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's json.dumps writes,
//! loop controls, and Python string methods (`.strip()`, `.split()`, `.startswith()` ...)
//! through minijinja-contrib's pycompat. Not provided: the tools and documents arguments.
//!
//! A template that does not parse does not stop the tokenizer from loading (plain generation
//! does not need it); `render` reports the parse error.
//!
//! Templates come from strangers and are programs, so a render is bounded: [`FUEL`] (minijinja's
//! budget of instructions and of data created, about 64 bytes per unit) stops loops and memory
//! bombs, and the output may not exceed [`output_limit`] bytes.

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use super::{terr, token_string, ChatMessage};
use crate::error::Result;

/// minijinja fuel per render: about two million instructions or 128 MB of data created, and a
/// few hundred milliseconds at most. Real templates use a few thousand on long conversations.
pub const FUEL: u64 = 2_000_000;
/// Largest `indent` the `tojson` filter accepts (it allocates indent × depth spaces per line).
const MAX_JSON_INDENT: usize = 64;

/// The most a render may write: 1 MiB plus twice the messages' text (a template writes each
/// message once, plus its markup).
pub fn output_limit(messages: &[ChatMessage]) -> usize {
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    (1 << 20) + 2 * input
}

/// A writer that refuses to grow past its limit.
struct Bounded {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ChatTemplate {
    env: Result<Environment<'static>, String>,
    bos_token: String,
    eos_token: String,
    extra: Vec<(String, String)>,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's json.dumps(x, ensure_ascii=False, indent=indent) (transformers' tojson filter).
fn tojson(
    value: minijinja::Value,
    indent: Option<usize>,
) -> std::result::Result<String, minijinja::Error> {
    if indent.is_some_and(|n| n > MAX_JSON_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent is at most {MAX_JSON_INDENT}"),
        ));
    }
    let v = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&v, indent, 0, &mut out);
    Ok(out)
}

fn write_py_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_py_str(s, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_str(k, out);
                out.push_str(": ");
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// transformers' strftime_now: the current local date formatted by Python's strftime. We use
/// UTC and support the directives chat templates use.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn build_env(source: &str) -> std::result::Result<Environment<'static>, String> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| format!("chat template syntax: {e}"))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned("chat", source.to_string())
        .map_err(|e| format!("chat_template does not parse: {e:#}"))?;
    Ok(env)
}

impl ChatTemplate {
    /// From tokenizer_config.json; `jinja_file` is the text of chat_template.jinja, used when
    /// the config has no chat_template.
    pub fn from_config(
        cfg: Option<&Value>,
        jinja_file: Option<String>,
    ) -> Result<Option<ChatTemplate>> {
        let source = match cfg.and_then(|c| c.get("chat_template")) {
            None | Some(Value::Null) => match jinja_file {
                Some(s) => s,
                None => return Ok(None),
            },
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
        let tok = |k: &str| cfg.and_then(|c| c.get(k)).and_then(token_string);
        let extra = [
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ]
        .iter()
        .filter_map(|k| tok(k).map(|v| (k.to_string(), v)))
        .collect();
        Ok(Some(ChatTemplate {
            env: build_env(&source),
            bos_token: tok("bos_token").unwrap_or_default(),
            eos_token: tok("eos_token").unwrap_or_default(),
            extra,
        }))
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.env.as_ref().map_err(|e| terr(e.clone()))?;
        let tmpl = env
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
        let limit = output_limit(messages);
        let mut out = Bounded {
            out: Vec::new(),
            limit,
        };
        match tmpl.render_captured_to(ctx, &mut out) {
            // minijinja writes whole strings, so the bytes are UTF-8.
            Ok(_) => Ok(String::from_utf8_lossy(&out.out).into_owned()),
            Err(e) if e.kind() == ErrorKind::WriteFailure => Err(terr(format!(
                "chat template failed: its output exceeds the limit of {limit} bytes"
            ))),
            Err(e) => {
                // raise_exception's message is the useful part; keep minijinja's location too.
                let detail = e.detail().map(str::to_string).unwrap_or_default();
                Err(terr(format!("chat template failed: {detail} ({e})")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn python_json() {
        let v = minijinja::Value::from(minijinja::value::Serde(
            serde_json::json!({"a": [1, "é\n\"x\""], "b": {}}),
        ));
        assert_eq!(
            tojson(v.clone(), None).unwrap(),
            r#"{"a": [1, "é\n\"x\""], "b": {}}"#
        );
        assert_eq!(
            tojson(v, Some(2)).unwrap(),
            "{\n  \"a\": [\n    1,\n    \"é\\n\\\"x\\\"\"\n  ],\n  \"b\": {}\n}"
        );
    }
}
