//! PTX text → a small syntax tree (module variables, functions, their declarations and
//! statements), with the source line of everything kept for error messages.
//!
//! This layer knows PTX *syntax* only: tokens, directives, operand shapes. It does not know what
//! an opcode means or which modifiers are valid; `isa.rs` decides that when it decodes the tree,
//! so an unknown instruction is reported there with its line. It deliberately does not handle
//! macros (`.macro`), `.file`/`.loc` debug info beyond skipping it, or `.section` blocks.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// An identifier, opcode, directive, register or number-like word (`ld.global.v4.u32`,
    /// `%r12`, `.reg`, `$L__BB0_1`, `0f3F800000`, `42`).
    Word(String),
    Str(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Lexed {
    tok: Tok,
    line: u32,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '%' | ':')
}

fn lex(module: &str, src: &str) -> Result<Vec<Lexed>> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut line = 1u32;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            loop {
                if i + 1 >= chars.len() {
                    return Err(Error::ptx(
                        module,
                        line,
                        None,
                        "unterminated /* comment".into(),
                    ));
                }
                if chars[i] == '*' && chars[i + 1] == '/' {
                    i += 2;
                    break;
                }
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\n' {
                    return Err(Error::ptx(module, line, None, "unterminated string".into()));
                }
                i += 1;
            }
            let s: String = chars[start..i.min(chars.len())].iter().collect();
            out.push(Lexed {
                tok: Tok::Str(s),
                line,
            });
            i += 1;
        } else if is_word_char(c) {
            let start = i;
            // `::` appears inside modifiers (`.L2::evict_last`); a single ':' ends a label.
            while i < chars.len() {
                let ch = chars[i];
                if ch == ':' {
                    if chars.get(i + 1) == Some(&':') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                if !is_word_char(ch) {
                    break;
                }
                i += 1;
            }
            if i == start {
                // a lone ':' (label terminator)
                out.push(Lexed {
                    tok: Tok::Punct(':'),
                    line,
                });
                i += 1;
                continue;
            }
            let w: String = chars[start..i].iter().collect();
            out.push(Lexed {
                tok: Tok::Word(w),
                line,
            });
        } else if "{}()[],;<>+-@!|=".contains(c) {
            out.push(Lexed {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        } else {
            return Err(Error::ptx(
                module,
                line,
                None,
                format!("unexpected character {c:?}"),
            ));
        }
    }
    Ok(out)
}

/// An operand as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register, special register, symbol or label name.
    Name(String),
    /// `!%p` (only meaningful for predicates).
    NotName(String),
    /// An integer immediate (two's complement bits).
    Int(i64),
    /// `0fXXXXXXXX` / `0dXXXXXXXXXXXXXXXX` or a decimal float: raw bits and whether it was f32.
    Float { bits: u64, single: bool },
    /// `[base+off]`, where base is a register or symbol name, or absent (`[0x1000]`).
    Addr { base: Option<String>, off: i64 },
    /// `{a, b, c, d}`; `_` entries are `Name("_")`.
    Vec(Vec<Operand>),
    /// `%p|%q` (setp's two destinations).
    Pair(String, String),
}

#[derive(Clone, Debug)]
pub struct Statement {
    pub line: u32,
    pub guard: Option<(String, bool)>, // (pred name, negated)
    pub opcode: String,
    pub operands: Vec<Operand>,
}

#[derive(Clone, Debug)]
pub struct VarDecl {
    pub line: u32,
    pub space: String, // "reg", "shared", "local", "global", "const", "param"
    pub align: Option<u32>,
    /// Element type without the dot, e.g. "b8", "f32", "pred"; `vec` is .v2/.v4 if given.
    pub ty: String,
    pub vec: u32,
    pub name: String,
    /// `%r<100>` → Some(100).
    pub range: Option<u32>,
    /// Array length; `Some(0)` for `name[]` (extern dynamic shared).
    pub array: Option<u64>,
    pub is_extern: bool,
    pub init: Vec<Operand>,
    /// `.ptr` attributes on a param (`.ptr.global.align 16`): accepted and kept for checks.
    pub ptr_space: Option<String>,
}

#[derive(Clone, Debug)]
pub enum BodyItem {
    Decl(VarDecl),
    Label(String),
    Stmt(Statement),
}

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub line: u32,
    pub is_entry: bool,
    pub params: Vec<VarDecl>,
    pub body: Vec<BodyItem>,
    /// `.maxntid` / `.reqntid` dimensions, if declared: launches must respect them.
    pub maxntid: Option<Vec<u32>>,
    pub reqntid: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Default)]
pub struct ModuleAst {
    pub version: Option<String>,
    pub target: Vec<String>,
    pub address_size: Option<u32>,
    pub globals: Vec<VarDecl>,
    pub functions: Vec<Function>,
}

struct Parser<'a> {
    module: &'a str,
    toks: Vec<Lexed>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .map(|t| t.line)
            .unwrap_or(0)
    }
    fn err<T>(&self, msg: impl std::fmt::Display) -> Result<T> {
        Err(Error::ptx(self.module, self.line(), None, msg.to_string()))
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.tok)
    }
    fn next(&mut self) -> Result<Tok> {
        match self.toks.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.tok.clone())
            }
            None => self.err("unexpected end of file"),
        }
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, c: char) -> Result<()> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            self.err(format!("expected '{c}', found {:?}", self.peek()))
        }
    }
    fn word(&mut self) -> Result<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => {
                self.pos -= 1;
                self.err(format!("expected a word, found {t:?}"))
            }
        }
    }
    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn module(&mut self) -> Result<ModuleAst> {
        let mut m = ModuleAst::default();
        while self.pos < self.toks.len() {
            let line = self.line();
            let w = self.word()?;
            match w.as_str() {
                ".version" => m.version = Some(self.word()?),
                ".target" => {
                    m.target.push(self.word()?);
                    while self.eat_punct(',') {
                        m.target.push(self.word()?);
                    }
                }
                ".address_size" => {
                    let n = self.word()?;
                    m.address_size = n.parse().ok();
                    if m.address_size != Some(64) {
                        return self.err(format!(".address_size {n}: only 64 is supported"));
                    }
                }
                ".file" | ".loc" => {
                    // Debug info: skip the rest of the line.
                    while self.pos < self.toks.len() && self.toks[self.pos].line == line {
                        self.pos += 1;
                    }
                }
                ".visible" | ".extern" | ".weak" | ".common" => {
                    // Linkage prefix: look at what follows.
                    let is_extern = w == ".extern";
                    match self.peek_word() {
                        Some(".entry") | Some(".func") => {}
                        Some(_) => {
                            let mut d = self.var_decl(line)?;
                            d.is_extern = is_extern;
                            self.expect_punct(';')?;
                            m.globals.push(d);
                        }
                        None => return self.err("expected a declaration after linkage"),
                    }
                }
                ".entry" | ".func" => {
                    let f = self.function(w == ".entry", line)?;
                    if let Some(f) = f {
                        m.functions.push(f);
                    }
                }
                ".global" | ".const" | ".shared" => {
                    self.pos -= 1;
                    let d = self.var_decl(line)?;
                    self.expect_punct(';')?;
                    m.globals.push(d);
                }
                other => {
                    return Err(Error::ptx(
                        self.module,
                        line,
                        None,
                        format!("unsupported module-level directive `{other}`"),
                    ))
                }
            }
        }
        Ok(m)
    }

    /// `.space [.align n] [.ptr...] [.vN] .type name[<n>][[len]] [= init]` (no `;`).
    fn var_decl(&mut self, line: u32) -> Result<VarDecl> {
        let space = self.word()?;
        let space = match space.as_str() {
            ".reg" | ".shared" | ".local" | ".global" | ".const" | ".param" => {
                space[1..].to_string()
            }
            _ => return self.err(format!("expected a state space, found `{space}`")),
        };
        let mut d = VarDecl {
            line,
            space,
            align: None,
            ty: String::new(),
            vec: 1,
            name: String::new(),
            range: None,
            array: None,
            is_extern: false,
            init: Vec::new(),
            ptr_space: None,
        };
        loop {
            let w = self.word()?;
            if w == ".align" {
                let n = self.word()?;
                d.align = Some(
                    parse_int(&n)
                        .ok_or(())
                        .or_else(|_| self.err(format!("bad .align {n}")))?
                        as u32,
                );
            } else if w == ".v2" || w == ".v4" || w == ".v8" {
                d.vec = w[2..].parse().unwrap_or(1);
            } else if let Some(t) = w.strip_prefix('.') {
                d.ty = t.to_string();
                break;
            } else {
                return self.err(format!("expected a type in declaration, found `{w}`"));
            }
        }
        // `.ptr.global.align 16` (params only) may arrive as one word or as several.
        let mut in_ptr = false;
        while let Some(w) = self.peek_word().map(str::to_string) {
            let rest = if let Some(r) = w.strip_prefix(".ptr") {
                in_ptr = true;
                r.to_string()
            } else if in_ptr && w.starts_with('.') {
                w.clone()
            } else {
                break;
            };
            self.pos += 1;
            for p in rest.split('.').filter(|s| !s.is_empty()) {
                match p {
                    "global" | "shared" | "local" | "const" => d.ptr_space = Some(p.to_string()),
                    "align" => {
                        let n = self.word()?;
                        d.align = parse_int(&n).map(|v| v as u32);
                    }
                    _ => return self.err(format!("unsupported .ptr attribute `{p}`")),
                }
            }
        }
        d.name = self.word()?;
        if self.eat_punct('<') {
            let n = self.word()?;
            d.range = Some(
                reg_count(&n)
                    .ok_or(())
                    .or_else(|_| self.err(format!("bad register count {n}")))?,
            );
            self.expect_punct('>')?;
        }
        while self.eat_punct('[') {
            if self.eat_punct(']') {
                d.array = Some(0);
            } else {
                let n = self.word()?;
                let total = parse_int(&n)
                    .and_then(|n| u64::try_from(n).ok())
                    .and_then(|n| d.array.unwrap_or(1).checked_mul(n))
                    .filter(|&t| t <= MAX_ARRAY_LEN);
                d.array = Some(total.ok_or(()).or_else(|_| {
                    self.err(format!(
                        "bad array length {n} (at most {MAX_ARRAY_LEN} elements in all)"
                    ))
                })?);
                self.expect_punct(']')?;
            }
        }
        if self.eat_punct('=') {
            if self.eat_punct('{') {
                loop {
                    if self.eat_punct('{') {
                        // nested initialisers: flatten
                        continue;
                    }
                    if self.eat_punct('}') {
                        if !self.eat_punct(',') {
                            if self.is_punct('}') {
                                continue;
                            }
                            break;
                        }
                        continue;
                    }
                    d.init.push(self.operand()?);
                    if !self.eat_punct(',') {
                        while self.eat_punct('}') {}
                        break;
                    }
                }
            } else {
                d.init.push(self.operand()?);
            }
        }
        Ok(d)
    }

    fn function(&mut self, is_entry: bool, line: u32) -> Result<Option<Function>> {
        let mut rets = Vec::new();
        if !is_entry && self.is_punct('(') {
            rets = self.param_list()?;
        }
        let name = self.word()?;
        let params = if self.is_punct('(') {
            self.param_list()?
        } else {
            Vec::new()
        };
        // Performance directives before the body.
        let (mut maxntid, mut reqntid) = (None, None);
        while let Some(dir) = self.peek_word() {
            match dir {
                ".maxntid" | ".reqntid" | ".minnctapersm" | ".maxnreg" | ".maxclusterrank"
                | ".reqnctapercluster" | ".explicitcluster" | ".noreturn" | ".pragma" => {
                    let dline = self.line();
                    let which = self.peek_word().unwrap_or("").to_string();
                    self.pos += 1;
                    if which == ".maxntid" || which == ".reqntid" {
                        let mut dims = Vec::new();
                        loop {
                            let n = self.word()?;
                            match parse_int(&n) {
                                Some(v) if v > 0 => dims.push(v as u32),
                                _ => return self.err(format!("bad {which} value `{n}`")),
                            }
                            if !self.eat_punct(',') {
                                break;
                            }
                        }
                        if which == ".maxntid" {
                            maxntid = Some(dims);
                        } else {
                            reqntid = Some(dims);
                        }
                        continue;
                    }
                    while self.pos < self.toks.len()
                        && self.toks[self.pos].line == dline
                        && !self.is_punct('{')
                        && !self.is_punct(';')
                    {
                        self.pos += 1;
                    }
                    self.eat_punct(';');
                }
                _ => break,
            }
        }
        if self.eat_punct(';') {
            // A prototype only.
            return Ok(None);
        }
        self.expect_punct('{')?;
        let mut body = Vec::new();
        let mut depth = 1;
        while depth > 0 {
            let line = self.line();
            if self.eat_punct('{') {
                depth += 1;
                continue;
            }
            if self.eat_punct('}') {
                depth -= 1;
                continue;
            }
            if self.eat_punct(';') {
                continue;
            }
            match self.peek().cloned() {
                Some(Tok::Word(w)) if w.starts_with('.') => match w.as_str() {
                    ".reg" | ".shared" | ".local" | ".param" | ".const" | ".global" => {
                        let d = self.var_decl(line)?;
                        // `.reg .f32 %f1, %f2<4>;` declares several names of one type.
                        while self.eat_punct(',') {
                            let mut more = d.clone();
                            more.name = self.word()?;
                            more.range = None;
                            more.array = None;
                            if self.eat_punct('<') {
                                let n = self.word()?;
                                more.range =
                                    Some(reg_count(&n).ok_or(()).or_else(|_| {
                                        self.err(format!("bad register count {n}"))
                                    })?);
                                self.expect_punct('>')?;
                            }
                            body.push(BodyItem::Decl(more));
                        }
                        self.expect_punct(';')?;
                        body.push(BodyItem::Decl(d));
                    }
                    ".extern" => {
                        self.pos += 1;
                        let mut d = self.var_decl(line)?;
                        d.is_extern = true;
                        self.expect_punct(';')?;
                        body.push(BodyItem::Decl(d));
                    }
                    ".pragma" => {
                        self.pos += 1;
                        while !self.eat_punct(';') {
                            self.next()?;
                        }
                    }
                    ".loc" | ".file" => {
                        self.pos += 1;
                        while self.pos < self.toks.len() && self.toks[self.pos].line == line {
                            self.pos += 1;
                        }
                    }
                    other => {
                        return self
                            .err(format!("unsupported directive `{other}` in function body"))
                    }
                },
                Some(Tok::Word(w)) if self.peek_at(1) == Some(&Tok::Punct(':')) => {
                    self.pos += 2;
                    body.push(BodyItem::Label(w));
                }
                Some(_) => body.push(BodyItem::Stmt(self.statement(line)?)),
                None => return self.err("unexpected end of file in function body"),
            }
        }
        let _ = rets; // return parameters of .func: unused until `call` is supported
        Ok(Some(Function {
            name,
            line,
            is_entry,
            params,
            body,
            maxntid,
            reqntid,
        }))
    }

    fn param_list(&mut self) -> Result<Vec<VarDecl>> {
        self.expect_punct('(')?;
        let mut out = Vec::new();
        if self.eat_punct(')') {
            return Ok(out);
        }
        loop {
            let line = self.line();
            out.push(self.var_decl(line)?);
            if self.eat_punct(')') {
                break;
            }
            self.expect_punct(',')?;
        }
        Ok(out)
    }

    fn statement(&mut self, line: u32) -> Result<Statement> {
        let mut guard = None;
        if self.eat_punct('@') {
            let neg = self.eat_punct('!');
            guard = Some((self.word()?, neg));
        }
        let opcode = self.word()?;
        let mut operands = Vec::new();
        if !self.is_punct(';') {
            loop {
                let op = self.operand().map_err(|mut e| {
                    if let Error::Ptx { message, .. } = &mut e {
                        message.push_str(&format!(" (in `{opcode}`)"));
                    }
                    e
                })?;
                operands.push(op);
                if !self.eat_punct(',') {
                    break;
                }
            }
        }
        if !self.eat_punct(';') {
            return self.err(format!(
                "expected ';' after `{opcode}`, found {:?}",
                self.peek()
            ));
        }
        Ok(Statement {
            line,
            guard,
            opcode,
            operands,
        })
    }

    fn operand(&mut self) -> Result<Operand> {
        if self.eat_punct('{') {
            let mut v = Vec::new();
            if !self.eat_punct('}') {
                loop {
                    v.push(self.operand()?);
                    if self.eat_punct('}') {
                        break;
                    }
                    self.expect_punct(',')?;
                }
            }
            return Ok(Operand::Vec(v));
        }
        if self.eat_punct('[') {
            let mut base = None;
            let mut off: i64 = 0;
            let mut first = true;
            loop {
                if self.eat_punct(']') {
                    break;
                }
                let neg = if first || self.eat_punct('+') {
                    self.eat_punct('-')
                } else if self.eat_punct('-') {
                    true
                } else {
                    return self.err(format!("bad address expression near {:?}", self.peek()));
                };
                first = false;
                let w = self.word()?;
                if let Some(v) = parse_int(&w) {
                    off = off.wrapping_add(if neg { -v } else { v });
                } else if base.is_none() && !neg {
                    base = Some(w);
                } else {
                    return self.err(format!("bad address expression `{w}`"));
                }
            }
            return Ok(Operand::Addr { base, off });
        }
        if self.eat_punct('!') {
            return Ok(Operand::NotName(self.word()?));
        }
        let neg = self.eat_punct('-');
        let w = self.word()?;
        if let Some(op) = parse_number(&w, neg) {
            return Ok(op);
        }
        if neg {
            return self.err(format!("unexpected '-' before `{w}`"));
        }
        if self.eat_punct('|') {
            let q = self.word()?;
            return Ok(Operand::Pair(w, q));
        }
        Ok(Operand::Name(w))
    }
}

/// Integer literal: decimal, 0x hex, 0 octal, 0b binary, optional `U` suffix.
/// Registers one `%r<N>` declaration may name: real kernels declare hundreds, and the bound keeps
/// a hostile file from making the decoder name millions (found by fuzzing).
const MAX_REG_RANGE: u32 = 1 << 16;
/// Elements one declared array may hold (all dimensions together): shared and const memory are
/// kilobytes, so this is generous, and it keeps every `size × count` product small (found by
/// fuzzing: `.global .b8 g[18446744073709551615]` overflowed).
const MAX_ARRAY_LEN: u64 = 1 << 20;

fn reg_count(w: &str) -> Option<u32> {
    parse_int(w)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n <= MAX_REG_RANGE)
}

pub fn parse_int(w: &str) -> Option<i64> {
    let w = w.strip_suffix('U').unwrap_or(w);
    let (neg, w) = match w.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, w),
    };
    let v = if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()? as i64
    } else if let Some(b) = w.strip_prefix("0b").or_else(|| w.strip_prefix("0B")) {
        u64::from_str_radix(b, 2).ok()? as i64
    } else if w.len() > 1 && w.starts_with('0') && w.bytes().all(|b| b.is_ascii_digit()) {
        u64::from_str_radix(&w[1..], 8).ok()? as i64
    } else if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
        w.parse::<u64>().ok()? as i64
    } else {
        return None;
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

fn parse_number(w: &str, neg: bool) -> Option<Operand> {
    let first = w.chars().next()?;
    if !first.is_ascii_digit() {
        return None;
    }
    if let Some(h) = w.strip_prefix("0f").or_else(|| w.strip_prefix("0F")) {
        if h.len() == 8 {
            let mut bits = u32::from_str_radix(h, 16).ok()? as u64;
            if neg {
                bits ^= 0x8000_0000;
            }
            return Some(Operand::Float { bits, single: true });
        }
    }
    if let Some(h) = w.strip_prefix("0d").or_else(|| w.strip_prefix("0D")) {
        if h.len() == 16 {
            let mut bits = u64::from_str_radix(h, 16).ok()?;
            if neg {
                bits ^= 1 << 63;
            }
            return Some(Operand::Float {
                bits,
                single: false,
            });
        }
    }
    if let Some(v) = parse_int(w) {
        return Some(Operand::Int(if neg { v.wrapping_neg() } else { v }));
    }
    if w.contains('.') || w.contains('e') || w.contains('E') {
        let v: f64 = w.parse().ok()?;
        let v = if neg { -v } else { v };
        return Some(Operand::Float {
            bits: v.to_bits(),
            single: false,
        });
    }
    None
}

pub fn parse_module(module: &str, src: &str) -> Result<ModuleAst> {
    let toks = lex(module, src)?;
    let mut p = Parser {
        module,
        toks,
        pos: 0,
    };
    p.module()
}
