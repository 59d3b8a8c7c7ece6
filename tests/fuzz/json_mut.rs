//! Structure-aware JSON mutation: parse, change one node (a hostile number, a hostile string,
//! another type, a dropped or duplicated member, a key the reader looks for), print again.
//! Input that no longer parses is mutated as bytes.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::engine::{mutate_bytes, Rng, INTERESTING_U64};

/// Numbers that break sizes, counts and float math.
fn hostile_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(*rng.pick(INTERESTING_U64)),
        1 => json!(-(rng.below(1 << 20) as i64) - 1),
        2 => json!(*rng.pick(&[0.0f64, -0.5, 0.5, 1e-300, 1e300, 1.5, -1e10])),
        3 => json!(rng.below(10)),
        4 => json!(rng.below(100_000)),
        _ => json!(*rng.pick(INTERESTING_U64) as i64),
    }
}

fn hostile_string(rng: &mut Rng, dict: &[&str]) -> Value {
    match rng.below(6) {
        0 => json!(""),
        1 => json!("../../etc/passwd"),
        2 => json!("a".repeat(1 + rng.below(5000))),
        3 => json!(["\u{0}", "\u{fffd}", "é", "日本", "🦀", "\u{202e}", " ", "\n"][rng.below(8)]),
        _ if !dict.is_empty() => json!(*rng.pick(dict)),
        _ => json!("x"),
    }
}

fn random_value(rng: &mut Rng, dict: &[&str], depth: u32) -> Value {
    match rng.below(if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 | 3 => hostile_number(rng),
        4 => hostile_string(rng, dict),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, dict, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(3) {
                let k = if dict.is_empty() {
                    "k".to_string()
                } else {
                    rng.pick(dict).to_string()
                };
                m.insert(k, random_value(rng, dict, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Number of nodes (to pick one uniformly).
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn nth(v: &mut Value, mut n: usize) -> Option<&mut Value> {
    fn go<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Array(a) => {
                for x in a {
                    if let Some(r) = go(x, n) {
                        return Some(r);
                    }
                }
                None
            }
            Value::Object(o) => {
                for x in o.values_mut() {
                    if let Some(r) = go(x, n) {
                        return Some(r);
                    }
                }
                None
            }
            _ => None,
        }
    }
    go(v, &mut n)
}

/// Mutate one node of `v`; `dict` holds the keys and strings the reader cares about.
pub fn mutate_value(rng: &mut Rng, v: &mut Value, dict: &[&str]) {
    let n = count(v);
    let Some(node) = nth(v, rng.below(n)) else {
        return;
    };
    match node {
        Value::Number(_) if rng.below(4) != 0 => *node = hostile_number(rng),
        Value::String(_) if rng.below(4) != 0 => *node = hostile_string(rng, dict),
        Value::Array(a) if !a.is_empty() && rng.below(3) != 0 => {
            let i = rng.below(a.len());
            match rng.below(4) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let x = a[i].clone();
                    a.insert(rng.below(a.len() + 1), x);
                }
                2 => {
                    let j = rng.below(a.len());
                    a.swap(i, j);
                }
                _ => a.push(random_value(rng, dict, 1)),
            }
        }
        Value::Object(o) if rng.below(4) != 0 => {
            if !o.is_empty() && rng.one_in(2) {
                let k = o
                    .keys()
                    .nth(rng.below(o.len()))
                    .cloned()
                    .unwrap_or_default();
                if rng.one_in(2) {
                    o.remove(&k);
                } else {
                    let x = o[&k].clone();
                    o.insert(format!("{k}_"), x);
                }
            } else {
                let k = if dict.is_empty() {
                    "x".to_string()
                } else {
                    rng.pick(dict).to_string()
                };
                o.insert(k, random_value(rng, dict, 1));
            }
        }
        _ => *node = random_value(rng, dict, 1),
    }
}

/// Mutate JSON text structurally (bytes when it does not parse, and now and then anyway).
pub fn mutate_text(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>], dict: &[&str]) {
    if rng.one_in(10) {
        mutate_bytes(rng, data, others);
        return;
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(mut v) => {
            mutate_value(rng, &mut v, dict);
            let out = serde_json::to_vec(&v).unwrap_or_default();
            if out.len() <= super::engine::MAX_INPUT {
                *data = out;
            }
        }
        Err(_) => mutate_bytes(rng, data, others),
    }
}
