//! The decoded instruction form and the decoder from the syntax tree.
//!
//! Every statement is decoded once, at module load, into an [`Instr`]: an enum with resolved
//! register indices, types, symbol addresses and branch targets, so the executor never looks at
//! text. The decoder is also where unsupported PTX is rejected: an opcode or modifier it does not
//! know is an [`Error::Ptx`] naming the module, the line and the offending word. Performance and
//! cache hints (`.nc`, `.ca`, `.L2::evict_last` ...) are accepted and dropped on purpose.
//! It does not decode `call` (no `.func` support yet), textures, surfaces or `wgmma`.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::memory::{LOCAL_WINDOW, SHARED_WINDOW};
use crate::parse::{BodyItem, Function, Operand, Statement, VarDecl};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F32,
    F64,
    BF16,
    F16x2,
    BF16x2,
    Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "bf16" => Ty::BF16,
            "f16x2" => Ty::F16x2,
            "bf16x2" => Ty::BF16x2,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }
    pub fn bits(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::BF16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }
    pub fn bytes(self) -> u32 {
        (self.bits() / 8).max(1)
    }
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub fn float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F32 | Ty::F64 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2
        )
    }
}

/// Special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    Clock,
    Clock64,
    GridId,
    LanemaskEq,
    LanemaskLt,
    LanemaskLe,
    LanemaskGt,
    LanemaskGe,
    SmId,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    Reg(u32),
    Imm(u64),
    Sreg(Sreg),
}

pub const NO_REG: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Const,
    Generic,
}

/// `[base + off]`: `off` already includes a symbol's address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addr {
    pub base: Option<u32>,
    pub off: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    /// No rounding modifier given.
    None,
    Rn,
    Rz,
    Rm,
    Rp,
    Rni,
    Rzi,
    Rmi,
    Rpi,
    Rna,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IBin {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IUn {
    Abs,
    Neg,
    Not,
    Cnot,
    Popc,
    Clz,
    Brev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FBin {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FUn {
    Abs,
    Neg,
    Sqrt,
    Rsqrt,
    Rcp,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadMode {
    Lo,
    Hi,
    Wide,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Inc,
    Dec,
    Cas,
    Exch,
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduxOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Mov {
        ty: Ty,
        d: u32,
        a: Src,
    },
    /// `mov.b32 d, {a, b}`: parts from least significant up, `bits` each.
    Pack {
        d: u32,
        parts: Vec<Src>,
        bits: u32,
    },
    /// `mov.b32 {a, b}, s`.
    Unpack {
        ds: Vec<u32>,
        a: Src,
        bits: u32,
    },
    Int2 {
        op: IBin,
        ty: Ty,
        d: u32,
        a: Src,
        b: Src,
    },
    Int1 {
        op: IUn,
        ty: Ty,
        d: u32,
        a: Src,
    },
    Mad {
        mode: MadMode,
        ty: Ty,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    F2 {
        op: FBin,
        ty: Ty,
        sat: bool,
        d: u32,
        a: Src,
        b: Src,
    },
    F1 {
        op: FUn,
        ty: Ty,
        d: u32,
        a: Src,
    },
    Fma {
        ty: Ty,
        sat: bool,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    Selp {
        ty: Ty,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        d: u32,
        d2: u32,
        a: Src,
        b: Src,
        comb: Option<(BoolOp, Src, bool)>,
    },
    Cvt {
        dty: Ty,
        sty: Ty,
        rnd: Rnd,
        sat: bool,
        d: u32,
        a: Src,
    },
    /// `cvt.rn.bf16x2.f32 d, a, b`: d.hi = a, d.lo = b.
    CvtPack {
        dty: Ty,
        relu: bool,
        d: u32,
        a: Src,
        b: Src,
    },
    Prmt {
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    Bfe {
        ty: Ty,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    Bfi {
        ty: Ty,
        d: u32,
        f: Src,
        b: Src,
        c: Src,
        e: Src,
    },
    Ld {
        space: Space,
        ty: Ty,
        n: u8,
        ds: [u32; 4],
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        n: u8,
        srcs: [Src; 4],
        addr: Addr,
    },
    Atom {
        space: Space,
        op: AtomOp,
        ty: Ty,
        d: u32,
        addr: Addr,
        b: Src,
        c: Src,
    },
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u32,
        src_size: Option<Src>,
    },
    Cvta {
        to: bool,
        space: Space,
        d: u32,
        a: Src,
    },
    Bra {
        target: u32,
    },
    Bar {
        id: Src,
        count: Option<Src>,
    },
    Shfl {
        mode: ShflMode,
        d: u32,
        p: u32,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Vote {
        mode: VoteMode,
        d: u32,
        a: Src,
        neg: bool,
        mask: Src,
    },
    Redux {
        op: ReduxOp,
        ty: Ty,
        d: u32,
        a: Src,
        mask: Src,
    },
    Mma {
        bf16: bool,
        d: [u32; 4],
        a: [Src; 4],
        b: [Src; 2],
        c: [Src; 4],
    },
    Ldmatrix {
        num: u8,
        trans: bool,
        space: Space,
        ds: [u32; 4],
        addr: Addr,
    },
    /// `cp.async.commit_group`: close this thread's current group of copies.
    CpCommit,
    /// `cp.async.wait_group keep` (`None`: `wait_all`): complete all but the `keep` most
    /// recently committed groups.
    CpWait {
        keep: Option<u32>,
    },
    /// Fences and prefetch hints.
    Nop,
    Ret,
    Exit,
}

#[derive(Clone, Debug)]
pub struct Instr {
    pub op: Op,
    /// Guard predicate register and whether it is negated.
    pub guard: Option<(u32, bool)>,
    pub line: u32,
}

#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub size: u32,
    pub offset: u32,
}

/// A decoded `.entry`.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub code: Vec<Instr>,
    pub nregs: usize,
    pub params: Vec<ParamInfo>,
    pub param_bytes: usize,
    pub static_shared: u32,
    /// Offset of the `.extern .shared` array, if the kernel declares one.
    pub dyn_shared_offset: Option<u32>,
    pub local_bytes: u32,
    pub maxntid: Option<Vec<u32>>,
    pub reqntid: Option<Vec<u32>>,
}

/// Where a named symbol lives, for address operands and `mov d, sym`.
#[derive(Clone, Copy, Debug)]
pub struct Symbol {
    pub space: Space,
    pub addr: u64,
}

fn align_up(x: u64, a: u64) -> u64 {
    if a <= 1 {
        x
    } else {
        x.div_ceil(a) * a
    }
}

/// Bytes of one element of a declaration (`.v4 .f32` → 16); `kernel` names the `.entry` the
/// declaration is in, for the error.
pub fn decl_elem_bytes(module: &str, kernel: Option<&str>, d: &VarDecl) -> Result<u64> {
    let t = Ty::parse(&d.ty)
        .ok_or_else(|| Error::ptx(module, d.line, kernel, format!("unknown type .{}", d.ty)))?;
    Ok(t.bytes() as u64 * d.vec as u64)
}

struct Ctx<'a> {
    module: &'a str,
    kernel: &'a str,
    regs: HashMap<String, (u32, Ty)>,
    syms: HashMap<String, Symbol>,
    labels: HashMap<String, u32>,
}

/// Modifier list of one opcode, consumed by the op's decoder; leftovers are errors.
struct Mods<'a> {
    items: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn take(&mut self, m: &str) -> bool {
        if let Some(i) = self.items.iter().position(|x| *x == m) {
            self.items.remove(i);
            true
        } else {
            false
        }
    }
    fn take_any(&mut self, ms: &[&'static str]) -> Option<&'static str> {
        ms.iter().copied().find(|m| self.take(m))
    }
    /// Drop cache, eviction, memory-ordering and scope hints.
    fn drop_hints(&mut self) {
        self.items.retain(|m| {
            !(matches!(
                *m,
                "ca" | "cg"
                    | "cs"
                    | "lu"
                    | "cv"
                    | "wb"
                    | "wt"
                    | "nc"
                    | "volatile"
                    | "relaxed"
                    | "acquire"
                    | "release"
                    | "acq_rel"
                    | "weak"
                    | "gpu"
                    | "cta"
                    | "sys"
                    | "cluster"
                    | "mmio"
            ) || m.starts_with("L1::")
                || m.starts_with("L2::"))
        });
    }
    fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        self.items.retain(|m| match Ty::parse(m) {
            Some(t) => {
                out.push(t);
                false
            }
            None => true,
        });
        out
    }
    fn space(&mut self) -> Space {
        match self.take_any(&["global", "shared", "shared::cta", "local", "param", "const"]) {
            Some("global") => Space::Global,
            Some("shared") | Some("shared::cta") => Space::Shared,
            Some("local") => Space::Local,
            Some("param") => Space::Param,
            Some("const") => Space::Const,
            _ => Space::Generic,
        }
    }
    fn rnd(&mut self) -> Rnd {
        match self.take_any(&["rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi", "rna"]) {
            Some("rn") => Rnd::Rn,
            Some("rz") => Rnd::Rz,
            Some("rm") => Rnd::Rm,
            Some("rp") => Rnd::Rp,
            Some("rni") => Rnd::Rni,
            Some("rzi") => Rnd::Rzi,
            Some("rmi") => Rnd::Rmi,
            Some("rpi") => Rnd::Rpi,
            Some("rna") => Rnd::Rna,
            _ => Rnd::None,
        }
    }
}

impl<'a> Ctx<'a> {
    fn err<T>(&self, line: u32, msg: impl std::fmt::Display) -> Result<T> {
        Err(Error::ptx(
            self.module,
            line,
            Some(self.kernel),
            msg.to_string(),
        ))
    }

    fn reg(&self, line: u32, o: &Operand) -> Result<u32> {
        match o {
            Operand::Name(n) if n == "_" => Ok(NO_REG),
            Operand::Name(n) => match self.regs.get(n) {
                Some((i, _)) => Ok(*i),
                None => self.err(line, format!("`{n}` is not a declared register")),
            },
            _ => self.err(line, format!("expected a register, found {o:?}")),
        }
    }

    fn src(&self, line: u32, o: &Operand, ty: Ty) -> Result<Src> {
        match o {
            Operand::Name(n) => {
                if let Some((i, _)) = self.regs.get(n) {
                    return Ok(Src::Reg(*i));
                }
                if let Some(s) = sreg(n) {
                    return Ok(Src::Sreg(s));
                }
                if let Some(s) = self.syms.get(n) {
                    return Ok(Src::Imm(s.addr));
                }
                self.err(line, format!("unknown operand `{n}`"))
            }
            Operand::Int(v) => {
                if ty.float() && !matches!(ty, Ty::F16x2 | Ty::BF16x2) {
                    Ok(Src::Imm(float_bits(*v as f64, ty)))
                } else {
                    Ok(Src::Imm(*v as u64))
                }
            }
            Operand::Float { bits, single } => {
                let v = if *single {
                    f32::from_bits(*bits as u32) as f64
                } else {
                    f64::from_bits(*bits)
                };
                match ty {
                    Ty::F32 | Ty::F64 | Ty::F16 | Ty::BF16 => Ok(Src::Imm(float_bits(v, ty))),
                    // In a bit-typed slot a 0f/0d literal keeps its bits.
                    _ => Ok(Src::Imm(*bits)),
                }
            }
            _ => self.err(line, format!("unexpected operand {o:?}")),
        }
    }

    fn pred(&self, line: u32, o: &Operand) -> Result<(Src, bool)> {
        match o {
            Operand::NotName(n) => Ok((self.src(line, &Operand::Name(n.clone()), Ty::Pred)?, true)),
            _ => Ok((self.src(line, o, Ty::Pred)?, false)),
        }
    }

    fn addr(&self, line: u32, o: &Operand, space: Space) -> Result<Addr> {
        match o {
            Operand::Addr { base, off } => match base {
                None => Ok(Addr {
                    base: None,
                    off: *off,
                }),
                Some(n) => {
                    if let Some((i, _)) = self.regs.get(n) {
                        Ok(Addr {
                            base: Some(*i),
                            off: *off,
                        })
                    } else if let Some(s) = self.syms.get(n) {
                        let addr = match (space, s.space) {
                            (Space::Generic, Space::Shared) => s.addr + SHARED_WINDOW,
                            (Space::Generic, Space::Local) => s.addr + LOCAL_WINDOW,
                            (Space::Generic, Space::Global | Space::Const) => s.addr,
                            (a, b) if a == b => s.addr,
                            (Space::Const, Space::Global) | (Space::Global, Space::Const) => s.addr,
                            (a, b) => {
                                return self.err(
                                    line,
                                    format!("`{n}` is a .{b:?} symbol used as a .{a:?} address"),
                                )
                            }
                        };
                        Ok(Addr {
                            base: None,
                            off: (addr as i64).wrapping_add(*off),
                        })
                    } else {
                        self.err(line, format!("unknown address base `{n}`"))
                    }
                }
            },
            _ => self.err(line, format!("expected an address [..], found {o:?}")),
        }
    }

    fn vec_regs(&self, line: u32, o: &Operand, n: usize) -> Result<[u32; 4]> {
        let mut out = [NO_REG; 4];
        match o {
            Operand::Vec(v) if v.len() == n => {
                for (k, x) in v.iter().enumerate() {
                    out[k] = self.reg(line, x)?;
                }
            }
            _ if n == 1 => out[0] = self.reg(line, o)?,
            _ => {
                return self.err(
                    line,
                    format!("expected a vector of {n} registers, found {o:?}"),
                )
            }
        }
        Ok(out)
    }

    fn vec_srcs(&self, line: u32, o: &Operand, n: usize, ty: Ty) -> Result<[Src; 4]> {
        let mut out = [Src::Imm(0); 4];
        match o {
            Operand::Vec(v) if v.len() == n => {
                for (k, x) in v.iter().enumerate() {
                    out[k] = self.src(line, x, ty)?;
                }
            }
            _ if n == 1 => out[0] = self.src(line, o, ty)?,
            _ => {
                return self.err(
                    line,
                    format!("expected a vector of {n} values, found {o:?}"),
                )
            }
        }
        Ok(out)
    }
}

pub fn float_bits(v: f64, ty: Ty) -> u64 {
    match ty {
        Ty::F32 => (v as f32).to_bits() as u64,
        Ty::F64 => v.to_bits(),
        Ty::F16 => half::f16::from_f64(v).to_bits() as u64,
        Ty::BF16 => half::bf16::from_f64(v).to_bits() as u64,
        _ => v.to_bits(),
    }
}

fn sreg(n: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = n.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match n {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%gridid" => Sreg::GridId,
        "%lanemask_eq" => Sreg::LanemaskEq,
        "%lanemask_lt" => Sreg::LanemaskLt,
        "%lanemask_le" => Sreg::LanemaskLe,
        "%lanemask_gt" => Sreg::LanemaskGt,
        "%lanemask_ge" => Sreg::LanemaskGe,
        "%smid" => Sreg::SmId,
        _ => return None,
    })
}

/// Decode one `.entry`. `globals` holds module-level symbols (already placed in device memory).
pub fn decode_kernel(
    module: &str,
    f: &Function,
    globals: &HashMap<String, Symbol>,
    module_shared: &[VarDecl],
) -> Result<Kernel> {
    let mut cx = Ctx {
        module,
        kernel: &f.name,
        regs: HashMap::new(),
        syms: globals.clone(),
        labels: HashMap::new(),
    };
    // Parameters: laid out in declaration order, each aligned to its size.
    let mut params = Vec::new();
    let mut poff = 0u64;
    for p in &f.params {
        if p.space != "param" {
            return cx.err(
                p.line,
                format!("kernel parameter `{}` is not .param", p.name),
            );
        }
        let size = decl_elem_bytes(module, Some(&f.name), p)? * p.array.unwrap_or(1).max(1);
        let al = p
            .align
            .map(|a| a as u64)
            .unwrap_or(decl_elem_bytes(module, Some(&f.name), p)?)
            .max(1);
        poff = align_up(poff, al.min(8));
        params.push(ParamInfo {
            name: p.name.clone(),
            size: size as u32,
            offset: poff as u32,
        });
        cx.syms.insert(
            p.name.clone(),
            Symbol {
                space: Space::Param,
                addr: poff,
            },
        );
        poff += size;
    }
    // Declarations: registers, static shared, local.
    let mut nregs = 0u32;
    let mut shared = 0u64;
    let mut local = 0u64;
    let mut dyn_shared: Option<(String, u64)> = None;
    let decls = module_shared
        .iter()
        .chain(f.body.iter().filter_map(|i| match i {
            BodyItem::Decl(d) => Some(d),
            _ => None,
        }));
    for d in decls {
        match d.space.as_str() {
            "reg" => {
                let ty = match Ty::parse(&d.ty) {
                    Some(t) => t,
                    None => return cx.err(d.line, format!("unknown register type .{}", d.ty)),
                };
                if d.vec != 1 || d.array.is_some() {
                    return cx.err(d.line, "vector or array registers are not supported");
                }
                match d.range {
                    Some(n) => {
                        for k in 0..n {
                            cx.regs.insert(format!("{}{k}", d.name), (nregs, ty));
                            nregs += 1;
                        }
                    }
                    None => {
                        cx.regs.insert(d.name.clone(), (nregs, ty));
                        nregs += 1;
                    }
                }
            }
            "shared" => {
                let el = decl_elem_bytes(module, Some(&f.name), d)?;
                let al = d.align.map(|a| a as u64).unwrap_or(el).max(1);
                match d.array {
                    Some(0) => {
                        if dyn_shared.is_some() {
                            return cx.err(d.line, "more than one extern .shared array");
                        }
                        dyn_shared = Some((d.name.clone(), al));
                    }
                    n => {
                        shared = align_up(shared, al);
                        cx.syms.insert(
                            d.name.clone(),
                            Symbol {
                                space: Space::Shared,
                                addr: shared,
                            },
                        );
                        shared += el * n.unwrap_or(1);
                    }
                }
            }
            "local" => {
                let el = decl_elem_bytes(module, Some(&f.name), d)?;
                let al = d.align.map(|a| a as u64).unwrap_or(el).max(1);
                local = align_up(local, al);
                cx.syms.insert(
                    d.name.clone(),
                    Symbol {
                        space: Space::Local,
                        addr: local,
                    },
                );
                local += el * d.array.unwrap_or(1).max(1);
            }
            other => {
                return cx.err(
                    d.line,
                    format!(".{other} declarations inside a kernel are not supported"),
                )
            }
        }
    }
    let dyn_shared_offset = dyn_shared.map(|(name, al)| {
        let off = align_up(shared, al.max(16));
        cx.syms.insert(
            name,
            Symbol {
                space: Space::Shared,
                addr: off,
            },
        );
        off as u32
    });
    // Labels → instruction indices.
    let mut n = 0u32;
    for item in &f.body {
        match item {
            BodyItem::Label(l) => {
                cx.labels.insert(l.clone(), n);
            }
            BodyItem::Stmt(_) => n += 1,
            BodyItem::Decl(_) => {}
        }
    }
    let mut code = Vec::with_capacity(n as usize);
    for item in &f.body {
        if let BodyItem::Stmt(s) = item {
            code.push(decode_stmt(&cx, s)?);
        }
    }
    // Falling off the end of a kernel is an implicit exit.
    code.push(Instr {
        op: Op::Exit,
        guard: None,
        line: f.line,
    });
    Ok(Kernel {
        name: f.name.clone(),
        code,
        nregs: nregs as usize,
        params,
        param_bytes: poff as usize,
        static_shared: shared as u32,
        dyn_shared_offset,
        local_bytes: local as u32,
        maxntid: f.maxntid.clone(),
        reqntid: f.reqntid.clone(),
    })
}

fn decode_stmt(cx: &Ctx, s: &Statement) -> Result<Instr> {
    let line = s.line;
    let guard = match &s.guard {
        None => None,
        Some((p, neg)) => match cx.regs.get(p) {
            Some((i, Ty::Pred)) => Some((*i, *neg)),
            _ => return cx.err(line, format!("guard `{p}` is not a predicate register")),
        },
    };
    let mut parts = s.opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mut m = Mods {
        items: parts.collect(),
    };
    let ops = &s.operands;
    let nops = |k: usize| -> Result<()> {
        if ops.len() != k {
            cx.err(
                line,
                format!("`{}` takes {k} operands, found {}", s.opcode, ops.len()),
            )
        } else {
            Ok(())
        }
    };
    let one_ty = |m: &mut Mods| -> Result<Ty> {
        let t = m.types();
        match t.as_slice() {
            [t] => Ok(*t),
            _ => cx.err(
                line,
                format!("`{}`: expected one type, found {t:?}", s.opcode),
            ),
        }
    };
    let op = match base {
        "mov" => {
            let ty = one_ty(&mut m)?;
            nops(2)?;
            match (&ops[0], &ops[1]) {
                (Operand::Vec(ds), a) => {
                    let bits = ty.bits() / ds.len() as u32;
                    let ds = ds
                        .iter()
                        .map(|d| cx.reg(line, d))
                        .collect::<Result<Vec<_>>>()?;
                    Op::Unpack {
                        ds,
                        a: cx.src(line, a, ty)?,
                        bits,
                    }
                }
                (d, Operand::Vec(ps)) => {
                    let bits = ty.bits() / ps.len() as u32;
                    let pty = match bits {
                        8 => Ty::B8,
                        16 => Ty::B16,
                        32 => Ty::B32,
                        _ => return cx.err(line, "bad vector pack"),
                    };
                    let parts = ps
                        .iter()
                        .map(|p| cx.src(line, p, pty))
                        .collect::<Result<Vec<_>>>()?;
                    Op::Pack {
                        d: cx.reg(line, d)?,
                        parts,
                        bits,
                    }
                }
                (d, a) => Op::Mov {
                    ty,
                    d: cx.reg(line, d)?,
                    a: cx.src(line, a, ty)?,
                },
            }
        }
        "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor" | "shl"
        | "shr" => {
            let ty = one_ty(&mut m)?;
            if ty.float() {
                let op = match base {
                    "add" => FBin::Add,
                    "sub" => FBin::Sub,
                    "mul" => FBin::Mul,
                    "div" => FBin::Div,
                    "min" => FBin::Min,
                    "max" => FBin::Max,
                    _ => {
                        return cx.err(
                            line,
                            format!("`{}` is not defined for float types", s.opcode),
                        )
                    }
                };
                let r = m.rnd();
                if !matches!(r, Rnd::None | Rnd::Rn) {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: rounding mode other than .rn is not implemented",
                            s.opcode
                        ),
                    );
                }
                m.take("ftz");
                if op == FBin::Div {
                    m.take_any(&["approx", "full"]);
                }
                let sat = m.take("sat");
                nops(3)?;
                Op::F2 {
                    op,
                    ty,
                    sat,
                    d: cx.reg(line, &ops[0])?,
                    a: cx.src(line, &ops[1], ty)?,
                    b: cx.src(line, &ops[2], ty)?,
                }
            } else {
                let op = match base {
                    "add" => IBin::Add,
                    "sub" => IBin::Sub,
                    "mul" => match m.take_any(&["lo", "hi", "wide"]) {
                        Some("hi") => IBin::MulHi,
                        Some("wide") => IBin::MulWide,
                        _ => IBin::MulLo,
                    },
                    "div" => IBin::Div,
                    "rem" => IBin::Rem,
                    "min" => IBin::Min,
                    "max" => IBin::Max,
                    "and" => IBin::And,
                    "or" => IBin::Or,
                    "xor" => IBin::Xor,
                    "shl" => IBin::Shl,
                    _ => IBin::Shr,
                };
                nops(3)?;
                let bty = if matches!(op, IBin::Shl | IBin::Shr) {
                    Ty::U32
                } else {
                    ty
                };
                Op::Int2 {
                    op,
                    ty,
                    d: cx.reg(line, &ops[0])?,
                    a: cx.src(line, &ops[1], ty)?,
                    b: cx.src(line, &ops[2], bty)?,
                }
            }
        }
        "abs" | "neg" | "not" | "cnot" | "popc" | "clz" | "brev" | "sqrt" | "rsqrt" | "rcp"
        | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            let ty = one_ty(&mut m)?;
            nops(2)?;
            let d = cx.reg(line, &ops[0])?;
            if ty.float() {
                let op = match base {
                    "abs" => FUn::Abs,
                    "neg" => FUn::Neg,
                    "sqrt" => FUn::Sqrt,
                    "rsqrt" => FUn::Rsqrt,
                    "rcp" => FUn::Rcp,
                    "ex2" => FUn::Ex2,
                    "lg2" => FUn::Lg2,
                    "sin" => FUn::Sin,
                    "cos" => FUn::Cos,
                    "tanh" => FUn::Tanh,
                    _ => {
                        return cx.err(
                            line,
                            format!("`{}` is not defined for float types", s.opcode),
                        )
                    }
                };
                m.take("ftz");
                m.take("approx");
                let r = m.rnd();
                if !matches!(r, Rnd::None | Rnd::Rn) {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: rounding mode other than .rn is not implemented",
                            s.opcode
                        ),
                    );
                }
                Op::F1 {
                    op,
                    ty,
                    d,
                    a: cx.src(line, &ops[1], ty)?,
                }
            } else {
                let op = match base {
                    "abs" => IUn::Abs,
                    "neg" => IUn::Neg,
                    "not" => IUn::Not,
                    "cnot" => IUn::Cnot,
                    "popc" => IUn::Popc,
                    "clz" => IUn::Clz,
                    "brev" => IUn::Brev,
                    _ => {
                        return cx.err(
                            line,
                            format!("`{}` is not defined for integer types", s.opcode),
                        )
                    }
                };
                Op::Int1 {
                    op,
                    ty,
                    d,
                    a: cx.src(line, &ops[1], ty)?,
                }
            }
        }
        "mad" | "fma" => {
            let mode = m.take_any(&["lo", "hi", "wide"]);
            let r = m.rnd();
            m.take("ftz");
            let sat = m.take("sat");
            let ty = one_ty(&mut m)?;
            nops(4)?;
            let d = cx.reg(line, &ops[0])?;
            if ty.float() {
                if !matches!(r, Rnd::None | Rnd::Rn) {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: rounding mode other than .rn is not implemented",
                            s.opcode
                        ),
                    );
                }
                Op::Fma {
                    ty,
                    sat,
                    d,
                    a: cx.src(line, &ops[1], ty)?,
                    b: cx.src(line, &ops[2], ty)?,
                    c: cx.src(line, &ops[3], ty)?,
                }
            } else {
                let mode = match mode {
                    Some("hi") => MadMode::Hi,
                    Some("wide") => MadMode::Wide,
                    _ => MadMode::Lo,
                };
                let cty = if mode == MadMode::Wide { wide(ty) } else { ty };
                Op::Mad {
                    mode,
                    ty,
                    d,
                    a: cx.src(line, &ops[1], ty)?,
                    b: cx.src(line, &ops[2], ty)?,
                    c: cx.src(line, &ops[3], cty)?,
                }
            }
        }
        "selp" => {
            let ty = one_ty(&mut m)?;
            nops(4)?;
            let (c, neg) = cx.pred(line, &ops[3])?;
            if neg {
                return cx.err(line, "selp with a negated predicate");
            }
            Op::Selp {
                ty,
                d: cx.reg(line, &ops[0])?,
                a: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], ty)?,
                c,
            }
        }
        "setp" => {
            let cmp = match m.take_any(&[
                "eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu",
                "leu", "gtu", "geu", "num", "nan",
            ]) {
                Some(c) => match c {
                    "eq" => Cmp::Eq,
                    "ne" => Cmp::Ne,
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    "ge" => Cmp::Ge,
                    "lo" => Cmp::Lo,
                    "ls" => Cmp::Ls,
                    "hi" => Cmp::Hi,
                    "hs" => Cmp::Hs,
                    "equ" => Cmp::Equ,
                    "neu" => Cmp::Neu,
                    "ltu" => Cmp::Ltu,
                    "leu" => Cmp::Leu,
                    "gtu" => Cmp::Gtu,
                    "geu" => Cmp::Geu,
                    "num" => Cmp::Num,
                    _ => Cmp::Nan,
                },
                None => return cx.err(line, format!("`{}`: missing comparison", s.opcode)),
            };
            let bop = match m.take_any(&["and", "or", "xor"]) {
                Some("and") => Some(BoolOp::And),
                Some("or") => Some(BoolOp::Or),
                Some("xor") => Some(BoolOp::Xor),
                _ => None,
            };
            m.take("ftz");
            let ty = one_ty(&mut m)?;
            let (d, d2) = match &ops.first() {
                Some(Operand::Pair(p, q)) => (
                    cx.reg(line, &Operand::Name(p.clone()))?,
                    cx.reg(line, &Operand::Name(q.clone()))?,
                ),
                Some(o) => (cx.reg(line, o)?, NO_REG),
                None => return cx.err(line, "setp without operands"),
            };
            let comb = match bop {
                Some(b) => {
                    nops(4)?;
                    let (c, neg) = cx.pred(line, &ops[3])?;
                    Some((b, c, neg))
                }
                None => {
                    nops(3)?;
                    None
                }
            };
            Op::Setp {
                cmp,
                ty,
                d,
                d2,
                a: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], ty)?,
                comb,
            }
        }
        "cvt" => {
            let rnd = m.rnd();
            m.take("ftz");
            let sat = m.take("sat");
            let relu = m.take("relu");
            let t = m.types();
            let (dty, sty) = match t.as_slice() {
                [d, s] => (*d, *s),
                _ => return cx.err(line, format!("`{}`: expected two types", s.opcode)),
            };
            if matches!(dty, Ty::F16x2 | Ty::BF16x2) {
                if sty != Ty::F32 || !matches!(rnd, Rnd::Rn) {
                    return cx.err(
                        line,
                        format!("`{}`: only .rn packing from .f32 is implemented", s.opcode),
                    );
                }
                nops(3)?;
                Op::CvtPack {
                    dty,
                    relu,
                    d: cx.reg(line, &ops[0])?,
                    a: cx.src(line, &ops[1], sty)?,
                    b: cx.src(line, &ops[2], sty)?,
                }
            } else {
                if relu {
                    return cx.err(line, "cvt .relu is only implemented for packed conversions");
                }
                nops(2)?;
                if dty.float() && sty.float() && dty.bits() < sty.bits() && rnd == Rnd::None {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: narrowing float conversion needs a rounding mode",
                            s.opcode
                        ),
                    );
                }
                if !dty.float()
                    && sty.float()
                    && !matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi)
                {
                    return cx.err(
                        line,
                        format!("`{}`: float to integer needs .rni/.rzi/.rmi/.rpi", s.opcode),
                    );
                }
                Op::Cvt {
                    dty,
                    sty,
                    rnd,
                    sat,
                    d: cx.reg(line, &ops[0])?,
                    a: cx.src(line, &ops[1], sty)?,
                }
            }
        }
        "prmt" => {
            let ty = one_ty(&mut m)?;
            if ty != Ty::B32 {
                return cx.err(line, "prmt must be .b32");
            }
            nops(4)?;
            Op::Prmt {
                d: cx.reg(line, &ops[0])?,
                a: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], ty)?,
                c: cx.src(line, &ops[3], ty)?,
            }
        }
        "bfe" => {
            let ty = one_ty(&mut m)?;
            nops(4)?;
            Op::Bfe {
                ty,
                d: cx.reg(line, &ops[0])?,
                a: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], Ty::U32)?,
                c: cx.src(line, &ops[3], Ty::U32)?,
            }
        }
        "bfi" => {
            let ty = one_ty(&mut m)?;
            nops(5)?;
            Op::Bfi {
                ty,
                d: cx.reg(line, &ops[0])?,
                f: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], ty)?,
                c: cx.src(line, &ops[3], Ty::U32)?,
                e: cx.src(line, &ops[4], Ty::U32)?,
            }
        }
        "ld" | "st" => {
            m.drop_hints();
            let space = m.space();
            let n = match m.take_any(&["v2", "v4"]) {
                Some("v2") => 2u8,
                Some("v4") => 4,
                _ => 1,
            };
            let ty = one_ty(&mut m)?;
            // `.L2::cache_hint` adds a trailing cache-policy operand: drop it.
            let ops: &[Operand] = if ops.len() == 3 { &ops[..2] } else { ops };
            if ops.len() != 2 {
                return cx.err(line, format!("`{}` takes 2 operands", s.opcode));
            }
            if base == "ld" {
                Op::Ld {
                    space,
                    ty,
                    n,
                    ds: cx.vec_regs(line, &ops[0], n as usize)?,
                    addr: cx.addr(line, &ops[1], space)?,
                }
            } else {
                Op::St {
                    space,
                    ty,
                    n,
                    addr: cx.addr(line, &ops[0], space)?,
                    srcs: cx.vec_srcs(line, &ops[1], n as usize, ty)?,
                }
            }
        }
        "atom" | "red" => {
            m.drop_hints();
            let space = m.space();
            let op = match m.take_any(&[
                "add", "min", "max", "inc", "dec", "cas", "exch", "and", "or", "xor",
            ]) {
                Some("add") => AtomOp::Add,
                Some("min") => AtomOp::Min,
                Some("max") => AtomOp::Max,
                Some("inc") => AtomOp::Inc,
                Some("dec") => AtomOp::Dec,
                Some("cas") => AtomOp::Cas,
                Some("exch") => AtomOp::Exch,
                Some("and") => AtomOp::And,
                Some("or") => AtomOp::Or,
                Some("xor") => AtomOp::Xor,
                _ => return cx.err(line, format!("`{}`: missing atomic operation", s.opcode)),
            };
            let ty = one_ty(&mut m)?;
            if !matches!(ty.bits(), 32 | 64) || matches!(ty, Ty::F16x2 | Ty::BF16x2) {
                return cx.err(
                    line,
                    format!("`{}`: type .{ty:?} not implemented", s.opcode),
                );
            }
            let (d, rest) = if base == "atom" {
                if ops.is_empty() {
                    return cx.err(line, "atom without operands");
                }
                (cx.reg(line, &ops[0])?, &ops[1..])
            } else {
                (NO_REG, &ops[..])
            };
            let want = if op == AtomOp::Cas { 3 } else { 2 };
            if rest.len() != want {
                return cx.err(line, format!("`{}`: wrong number of operands", s.opcode));
            }
            let c = if op == AtomOp::Cas {
                cx.src(line, &rest[2], ty)?
            } else {
                Src::Imm(0)
            };
            Op::Atom {
                space,
                op,
                ty,
                d,
                addr: cx.addr(line, &rest[0], space)?,
                b: cx.src(line, &rest[1], ty)?,
                c,
            }
        }
        "cp" => {
            // cp.async.{ca,cg}.shared{::cta}.global{.L2::...} [dst], [src], size{, src_size};
            // cp.async.commit_group / cp.async.wait_group N / cp.async.wait_all
            if !m.take("async") {
                return cx.err(line, format!("`{}` is not implemented", s.opcode));
            }
            let op = if m.take("commit_group") {
                Some(Op::CpCommit)
            } else if m.take("wait_all") {
                Some(Op::CpWait { keep: None })
            } else if m.take("wait_group") {
                match ops.first() {
                    Some(Operand::Int(k)) if *k >= 0 => Some(Op::CpWait {
                        keep: Some(*k as u32),
                    }),
                    o => {
                        return cx.err(
                            line,
                            format!("cp.async.wait_group needs an integer constant, found {o:?}"),
                        )
                    }
                }
            } else {
                None
            };
            if let Some(op) = op {
                m.finish_check(cx, line, &s.opcode)?;
                return Ok(Instr { op, guard, line });
            }
            m.take_any(&["ca", "cg"]);
            m.drop_hints();
            if !(m.take("shared") || m.take("shared::cta")) || !m.take("global") {
                return cx.err(
                    line,
                    format!("`{}`: only .shared.global copies are implemented", s.opcode),
                );
            }
            let ops: &[Operand] = ops;
            if ops.len() < 3 || ops.len() > 4 {
                return cx.err(line, "cp.async takes 3 or 4 operands");
            }
            let size = match &ops[2] {
                Operand::Int(v) if matches!(v, 4 | 8 | 16) => *v as u32,
                o => {
                    return cx.err(
                        line,
                        format!("cp.async size must be 4, 8 or 16, found {o:?}"),
                    )
                }
            };
            let src_size = match ops.get(3) {
                Some(o) => Some(cx.src(line, o, Ty::U32)?),
                None => None,
            };
            Op::CpAsync {
                dst: cx.addr(line, &ops[0], Space::Shared)?,
                src: cx.addr(line, &ops[1], Space::Global)?,
                size,
                src_size,
            }
        }
        "cvta" => {
            let to = m.take("to");
            let space = m.space();
            let ty = one_ty(&mut m)?;
            nops(2)?;
            if !matches!(space, Space::Global | Space::Shared | Space::Local) {
                return cx.err(line, format!("`{}`: state space not implemented", s.opcode));
            }
            Op::Cvta {
                to,
                space,
                d: cx.reg(line, &ops[0])?,
                a: cx.src(line, &ops[1], ty)?,
            }
        }
        "bra" => {
            m.take("uni");
            nops(1)?;
            match &ops[0] {
                Operand::Name(l) => match cx.labels.get(l) {
                    Some(t) => Op::Bra { target: *t },
                    None => return cx.err(line, format!("unknown label `{l}`")),
                },
                o => return cx.err(line, format!("bad branch target {o:?}")),
            }
        }
        "bar" | "barrier" => {
            // bar.sync / bar.sync a{, b} / barrier.sync{.aligned} / bar.cta.sync
            m.take("cta");
            m.take("aligned");
            if !(m.take("sync") || base == "barrier" && m.items.is_empty()) {
                return cx.err(
                    line,
                    format!("`{}`: only bar.sync/barrier.sync are implemented", s.opcode),
                );
            }
            let id = match ops.first() {
                Some(o) => cx.src(line, o, Ty::U32)?,
                None => Src::Imm(0),
            };
            let count = match ops.get(1) {
                Some(o) => Some(cx.src(line, o, Ty::U32)?),
                None => None,
            };
            Op::Bar { id, count }
        }
        "shfl" => {
            if !m.take("sync") {
                return cx.err(line, "only shfl.sync is implemented");
            }
            let mode = match m.take_any(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some("idx") => ShflMode::Idx,
                _ => return cx.err(line, "shfl.sync: missing mode"),
            };
            let ty = one_ty(&mut m)?;
            if ty.bits() != 32 {
                return cx.err(line, "shfl.sync must be .b32");
            }
            nops(5)?;
            let (d, p) = match &ops[0] {
                Operand::Pair(d, p) => (
                    cx.reg(line, &Operand::Name(d.clone()))?,
                    cx.reg(line, &Operand::Name(p.clone()))?,
                ),
                o => (cx.reg(line, o)?, NO_REG),
            };
            Op::Shfl {
                mode,
                d,
                p,
                a: cx.src(line, &ops[1], ty)?,
                b: cx.src(line, &ops[2], Ty::U32)?,
                c: cx.src(line, &ops[3], Ty::U32)?,
                mask: cx.src(line, &ops[4], Ty::U32)?,
            }
        }
        "vote" => {
            if !m.take("sync") {
                return cx.err(line, "only vote.sync is implemented");
            }
            let mode = match m.take_any(&["all", "any", "uni", "ballot"]) {
                Some("all") => VoteMode::All,
                Some("any") => VoteMode::Any,
                Some("uni") => VoteMode::Uni,
                Some("ballot") => VoteMode::Ballot,
                _ => return cx.err(line, "vote.sync: missing mode"),
            };
            let _ty = one_ty(&mut m)?;
            nops(3)?;
            let (a, neg) = cx.pred(line, &ops[1])?;
            Op::Vote {
                mode,
                d: cx.reg(line, &ops[0])?,
                a,
                neg,
                mask: cx.src(line, &ops[2], Ty::U32)?,
            }
        }
        "redux" => {
            if !m.take("sync") {
                return cx.err(line, "only redux.sync is implemented");
            }
            let op = match m.take_any(&["add", "min", "max", "and", "or", "xor"]) {
                Some("add") => ReduxOp::Add,
                Some("min") => ReduxOp::Min,
                Some("max") => ReduxOp::Max,
                Some("and") => ReduxOp::And,
                Some("or") => ReduxOp::Or,
                Some("xor") => ReduxOp::Xor,
                _ => return cx.err(line, "redux.sync: missing operation"),
            };
            let ty = one_ty(&mut m)?;
            if !matches!(ty, Ty::U32 | Ty::S32 | Ty::B32) {
                return cx.err(
                    line,
                    "redux.sync: only 32-bit integer types are implemented",
                );
            }
            nops(3)?;
            Op::Redux {
                op,
                ty,
                d: cx.reg(line, &ops[0])?,
                a: cx.src(line, &ops[1], ty)?,
                mask: cx.src(line, &ops[2], Ty::U32)?,
            }
        }
        "mma" => {
            for req in ["sync", "aligned", "m16n8k16", "row", "col"] {
                if !m.take(req) {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: only mma.sync.aligned.m16n8k16.row.col is implemented",
                            s.opcode
                        ),
                    );
                }
            }
            let t = m.types();
            let bf16 = match t.as_slice() {
                [Ty::F32, Ty::BF16, Ty::BF16, Ty::F32] => true,
                [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => false,
                _ => {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: only .f32.bf16.bf16.f32 and .f32.f16.f16.f32",
                            s.opcode
                        ),
                    )
                }
            };
            nops(4)?;
            let d = cx.vec_regs(line, &ops[0], 4)?;
            let a = cx.vec_srcs(line, &ops[1], 4, Ty::B32)?;
            let b2 = cx.vec_srcs(line, &ops[2], 2, Ty::B32)?;
            let c = cx.vec_srcs(line, &ops[3], 4, Ty::F32)?;
            Op::Mma {
                bf16,
                d,
                a,
                b: [b2[0], b2[1]],
                c,
            }
        }
        "ldmatrix" => {
            for req in ["sync", "aligned", "m8n8"] {
                if !m.take(req) {
                    return cx.err(
                        line,
                        format!(
                            "`{}`: only ldmatrix.sync.aligned.m8n8 is implemented",
                            s.opcode
                        ),
                    );
                }
            }
            let num = match m.take_any(&["x1", "x2", "x4"]) {
                Some("x1") => 1u8,
                Some("x2") => 2,
                Some("x4") => 4,
                _ => return cx.err(line, "ldmatrix: missing .x1/.x2/.x4"),
            };
            let trans = m.take("trans");
            let space = if m.take("shared") || m.take("shared::cta") {
                Space::Shared
            } else {
                Space::Generic
            };
            let ty = one_ty(&mut m)?;
            if ty != Ty::B16 {
                return cx.err(line, "ldmatrix: only .b16");
            }
            nops(2)?;
            Op::Ldmatrix {
                num,
                trans,
                space,
                ds: cx.vec_regs(line, &ops[0], num as usize)?,
                addr: cx.addr(line, &ops[1], space)?,
            }
        }
        "membar" | "fence" => {
            m.items.clear();
            Op::Nop
        }
        "prefetch" | "prefetchu" => {
            m.items.clear();
            Op::Nop
        }
        "ret" => {
            m.take("uni");
            Op::Ret
        }
        "exit" => Op::Exit,
        _ => {
            return cx.err(
                line,
                format!("instruction `{}` is not implemented", s.opcode),
            )
        }
    };
    m.finish_check(cx, line, &s.opcode)?;
    Ok(Instr { op, guard, line })
}

impl<'a> Mods<'a> {
    fn finish_check(&self, cx: &Ctx, line: u32, opcode: &str) -> Result<()> {
        match self.items.first() {
            None => Ok(()),
            Some(x) => cx.err(
                line,
                format!("modifier `.{x}` of `{opcode}` is not implemented"),
            ),
        }
    }
}

fn wide(t: Ty) -> Ty {
    match t {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        t => t,
    }
}
