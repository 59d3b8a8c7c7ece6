#!/usr/bin/env python3
"""Machine-code checks of kernels/*.ptx: assemble each file for sm_80 and sm_90 with ptxas,
disassemble with nvdisasm (PyPI wheels, no toolkit), and check per kernel what its header
promises about the machine code:

- no local memory (LDL/STL): a register array that went to the stack would be DRAM traffic;
- the weight-streaming kernels' global loads are 128-bit (LDG.E.128) and their hot loop (the
  loop with the most global loads) keeps at least the number of loads in flight the header
  states, i.e. ptxas did not split or serialise them;
- the GEMM copies tiles with 16-byte cp.async (LDGSTS.E.BYPASS.128) and multiplies with HMMA.

Prints one summary table (arch, kernel, instructions, global loads by width, loads in the
hottest loop, shared loads/stores, HMMA, local-memory instructions, verdict) and exits non-zero
if any expectation fails.

Usage: sass-check.py PTXAS NVDISASM [kernels/*.ptx ...]
"""
import os
import re
import subprocess
import sys
import tempfile

# kernel -> (min 128-bit LDG in the hottest loop, all global loads in loops 128-bit?, extra)
EXPECT = {
    "matvec_bf16": (8, True, None),  # 4 weight chunks + their 8 activation loads (v4 f32)
    "matvec_f16": (8, True, None),
    "matvec_f32": (8, True, None),
    "gemm_bf16": (0, False, "gemm"),
    "gemm_f16": (0, False, "gemm"),
    "argmax_f32": (0, False, "argmax"),  # 4 independent scalar loads per trip (see its header)
    "attn_split_f32": (8, False, None),  # P.V: 16-byte V loads, key loop unrolled by ptxas
    "attn_combine_f32": (8, False, None),  # split loop branch-free, unrolled: 16-byte acc loads
    # quantized matvec: per unit 16-byte quant loads and 8 (Q4_K, Q6_K: 16) 16-byte x loads in
    # flight; the f16 scale is a narrow load by nature
    "matvec_q8_0": (9, False, None),
    "matvec_q4_0": (9, False, None),
    "matvec_q4_1": (9, False, None),
    "matvec_q4_k": (16, False, None),
    "matvec_q6_k": (16, False, None),
}

LABEL = re.compile(r"^\s*(\.L_x_\d+):")
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
BRA = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")
FUNC = re.compile(r"^\s*\.text\.(\S+):|^\s*\.section\s+\.text\.([A-Za-z0-9_]+)")


def disassemble(ptxas, nvdisasm, ptx, arch, tmp):
    cubin = os.path.join(tmp, os.path.basename(ptx) + "." + arch + ".cubin")
    subprocess.run([ptxas, "-arch=" + arch, ptx, "-o", cubin], check=True)
    out = subprocess.run([nvdisasm, "-c", cubin], check=True, capture_output=True, text=True)
    return out.stdout


def split_functions(sass):
    """{kernel: [(addr, text) or ('label', name)]} in program order."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = FUNC.match(line)
        if m:
            cur = m.group(1) or m.group(2)
            funcs.setdefault(cur, [])
            continue
        if cur is None:
            continue
        m = LABEL.match(line)
        if m:
            funcs[cur].append(("label", m.group(1)))
            continue
        m = INSTR.search(line)
        if m:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def opcode(t):
    """The opcode with its modifiers, without a guard predicate: "LDG.E.128.CONSTANT"."""
    parts = t.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def is_ldg(t):
    return opcode(t).startswith("LDG.")


def width(t):
    op = opcode(t).split(".")
    return 128 if "128" in op else 64 if "64" in op else 32


def analyse(body):
    instrs = [(a, t) for a, t in body if a != "label"]
    labels, pending = {}, []
    for a, t in body:
        if a == "label":
            pending.append(t)
        else:
            for lab in pending:
                labels[lab] = a
            pending = []
    # loops: backward branches [target, branch]
    loops = []
    for a, t in instrs:
        m = BRA.search(t)
        if m and m.group(1) in labels and labels[m.group(1)] <= a:
            loops.append((labels[m.group(1)], a))
    s = {
        "instr": len(instrs),
        "ldg128": sum(1 for _, t in instrs if is_ldg(t) and width(t) == 128),
        "ldg64": sum(1 for _, t in instrs if is_ldg(t) and width(t) == 64),
        "ldg32": sum(1 for _, t in instrs if is_ldg(t) and width(t) == 32),
        "ldgsts128": sum(1 for _, t in instrs if opcode(t).startswith("LDGSTS") and width(t) == 128),
        "lds": sum(1 for _, t in instrs if re.search(r"\bLDS\b|\bLDS\.|LDSM", t)),
        "sts": sum(1 for _, t in instrs if re.search(r"\bSTS\b|\bSTS\.", t)),
        "hmma": sum(1 for _, t in instrs if "HMMA" in t or "HGMMA" in t),
        "local": sum(1 for _, t in instrs if re.search(r"\b(LDL|STL)\b", t)),
        "loops": len(loops),
    }
    hot = (0, 0, 0)  # (global loads, of which 128-bit, of which narrower)
    for lo, hi in loops:
        inside = [t for a, t in instrs if lo <= a <= hi and is_ldg(t)]
        n128 = sum(1 for t in inside if width(t) == 128)
        if len(inside) > hot[0]:
            hot = (len(inside), n128, len(inside) - n128)
    s["hot_ldg"], s["hot_ldg128"], s["hot_narrow"] = hot
    return s


def verdict(kernel, s):
    bad = []
    if s["local"]:
        bad.append("local memory")
    exp = EXPECT.get(kernel)
    if exp:
        min128, all128, extra = exp
        if s["hot_ldg128"] < min128:
            bad.append(f"hot loop has {s['hot_ldg128']} LDG.128 < {min128}")
        if all128 and s["hot_narrow"]:
            bad.append(f"{s['hot_narrow']} narrow LDG in the hot loop")
        if extra == "gemm" and (s["ldgsts128"] == 0 or s["hmma"] == 0):
            bad.append("no 16-byte cp.async or no HMMA")
        if extra == "argmax" and s["hot_ldg"] < 4:
            bad.append(f"argmax loop has {s['hot_ldg']} loads < 4")
    return bad


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    ptxas, nvdisasm = sys.argv[1], sys.argv[2]
    files = sys.argv[3:] or sorted(
        os.path.join("kernels", f) for f in os.listdir("kernels") if f.endswith(".ptx")
    )
    fail = 0
    cols = "arch kernel instr ldg128 ldg64 ldg32 ldgsts128 hot_ldg(128) lds sts hmma loops local verdict"
    print("%-6s %-20s %6s %6s %5s %5s %9s %12s %5s %5s %5s %5s %5s  %s" % tuple(cols.split()))
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("sm_80", "sm_90"):
            for ptx in files:
                try:
                    sass = disassemble(ptxas, nvdisasm, ptx, arch, tmp)
                except subprocess.CalledProcessError as e:
                    print(f"FAIL {ptx} ({arch}): {e}", file=sys.stderr)
                    fail = 1
                    continue
                for kernel, body in sorted(split_functions(sass).items()):
                    s = analyse(body)
                    bad = verdict(kernel, s)
                    fail |= bool(bad)
                    print(
                        "%-6s %-20s %6d %6d %5d %5d %9d %7d(%3d) %5d %5d %5d %5d %5d  %s"
                        % (
                            arch, kernel, s["instr"], s["ldg128"], s["ldg64"], s["ldg32"],
                            s["ldgsts128"], s["hot_ldg"], s["hot_ldg128"], s["lds"], s["sts"],
                            s["hmma"], s["loops"], s["local"], "; ".join(bad) or "ok",
                        )
                    )
    if fail:
        print("machine-code check FAILED", file=sys.stderr)
        return 1
    print("machine-code check passed: no local memory; matvec and attention hot loops with >= 8 16-byte loads in flight; GEMM cp.async 16 B + HMMA; argmax 4 loads per trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
