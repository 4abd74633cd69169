#!/usr/bin/env python3
"""scripts/check_cuda_build.py: GPU-free verification of the CUDA attention kernels' build.

For every CUDA source in kernels/sources.cmake (SFT_KERNEL_CUDA_SOURCES) and every requested arch:
  1. compiles it to a cubin with `-Xptxas -v` (same flags as the library) and parses the ptxas report:
     registers, stack frame, spill stores/loads and static shared memory per kernel;
  2. adds each kernel's dynamic shared memory (the constexpr sizes in kernels/attention_params.h, read by
     compiling a tiny host program with the C++ compiler) and compares with the per-block opt-in limit;
  3. runs `cuobjdump --dump-sass` on the objects the build produced (--build-dir; else on the cubins from
     step 1) and counts tensor-core instructions (HMMA; HGMMA for Hopper paths) per kernel.
  4. register headroom: compiles again with -DSFT_ATTN_REGISTER_PROBE=240 (kernels/common.cuh caps every hot
     kernel at 240 registers with __maxnreg__) and requires that no hot kernel spills under that cap, i.e.
     at least 15 registers of room below the 255 at which an edit or an nvcc update would start spilling.
Fails (exit 1) on any spill, on a non-zero stack frame in a hot kernel (forward, dK/dV, dQ), on shared
memory above the limit, on a hot kernel without tensor-core instructions, or on a hot kernel that does not
fit the 240-register probe without spilling. Prints a markdown table.
The parsers are checked against synthetic failing reports first (--no-selftest skips that).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HOT = ("attention_fwd_kernel", "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel")
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # opt-in per-block bytes
REGISTER_PROBE = 240  # hot kernels must fit this many registers without spilling (255 is the hardware cap)


def short_name(mangled):
    """'_ZN...attention_fwd_kernelI13__nv_bfloat16Li128EEEv...' -> 'attention_fwd_kernel<bf16,128>'."""
    m = re.search(r"(attention_(?:fwd|bwd_dkdv|bwd_dq|bwd_preprocess|bwd_convert_dq)_kernel)I(.*?)EEv", mangled)
    if not m:
        e = re.search(r"(dropout_mask_kernel)I(.*?)EEv", mangled)  # <x type, compute type>
        if e:
            types = re.findall(r"13__nv_bfloat16|6__half|f", e.group(2))
            names = {"13__nv_bfloat16": "bf16", "6__half": "fp16", "f": "fp32"}
            return "%s<%s>" % (e.group(1), ",".join(names[t] for t in types))
        return mangled
    args = m.group(2)
    dtype = "bf16" if "bfloat16" in args else ("fp16" if "__half" in args else "?")
    ints = re.findall(r"Li(\d+)E", args)
    flags = re.findall(r"Lb([01])E", args)
    parts = [dtype] + ints + [("atomic_dq" if f == "1" else "no_dq") for f in flags]
    return "%s<%s>" % (m.group(1), ",".join(parts))


def parse_ptxas(text):
    """ptxas -v output -> {mangled: {regs, stack, spill_st, spill_ld, smem}}."""
    kernels = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if m:
            current = kernels.setdefault(m.group(1), dict(regs=0, stack=0, spill_st=0, spill_ld=0, smem=0))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return kernels


def lines_by_function(text, function_pattern):
    """cuobjdump output -> (arch, short kernel name, line) for every line inside a function's section; the
    arch comes from the last `arch = sm_NN` line, the name from the last line matching function_pattern."""
    arch = None
    func = None
    for line in text.splitlines():
        m = re.search(r"arch = sm_(\d+)", line)
        if m:
            arch = int(m.group(1))
            continue
        m = re.search(function_pattern, line.strip())
        if m:
            func = short_name(m.group(1))
            yield arch, func, None  # the function's header: it exists even with no matching line
            continue
        if func is not None:
            yield arch, func, line


def parse_sass(text):
    """cuobjdump --dump-sass output -> {(arch, mangled): {'hmma': n, 'hgmma': n}}."""
    counts = {}
    for arch, func, line in lines_by_function(text, r"Function : (\S+)"):
        entry = counts.setdefault((arch, func), {"hmma": 0, "hgmma": 0})
        if line is None:
            continue
        if re.search(r"\bHGMMA\b", line):
            entry["hgmma"] += 1
        elif re.search(r"\bHMMA\b", line):
            entry["hmma"] += 1
    return counts


def parse_resource_usage(text):
    """cuobjdump --dump-resource-usage output -> {(arch, short name): {regs, stack, local, shared}}."""
    usage = {}
    for arch, func, line in lines_by_function(text, r"Function (\S+?):?$"):
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line or "")
        if m:
            regs, stack, shared, local = map(int, m.groups())
            usage[(arch, func)] = dict(regs=regs, stack=stack, shared=shared, local=local)
    return usage


def dynamic_smem(mangled, sizes):
    d = 128 if "Li128E" in mangled else 64
    if "attention_fwd_kernel" in mangled:
        return sizes["fwd%d" % d]
    if "attention_bwd_dkdv_kernel" in mangled:
        return sizes["dkdv%d" % d]
    if "attention_bwd_dq_kernel" in mangled:
        return sizes["dq%d" % d]
    return 0


def problems(arch, mangled, info, sizes, sass, built=None, probe=None):
    """The list of failed checks for one kernel on one arch (built: resource usage of the built object;
    probe: its ptxas report under the REGISTER_PROBE cap)."""
    out = []
    hot = any(h in mangled for h in HOT)
    if hot and probe is None:
        out.append("missing from the %d-register probe build" % REGISTER_PROBE)
    elif hot and (probe["spill_st"] or probe["spill_ld"] or probe["stack"] or probe["regs"] > REGISTER_PROBE):
        out.append("no register headroom: capped at %d registers it uses %d and spills %d/%d B" % (
            REGISTER_PROBE, probe["regs"], probe["spill_st"], probe["spill_ld"]))
    if built is not None and (built["local"] or (hot and built["stack"])):
        out.append("built object uses local memory (%d B) / stack (%d B)" % (built["local"], built["stack"]))
    if info["spill_st"] or info["spill_ld"]:
        out.append("spills (%d B stores, %d B loads)" % (info["spill_st"], info["spill_ld"]))
    if hot and info["stack"]:
        out.append("local-memory stack frame of %d B" % info["stack"])
    total = info["smem"] + dynamic_smem(mangled, sizes)
    if total > SMEM_LIMIT.get(arch, 49152):
        out.append("shared memory %d B > limit %d B" % (total, SMEM_LIMIT.get(arch, 49152)))
    if hot:
        c = sass.get((arch, short_name(mangled)))
        if c is None:
            out.append("kernel missing from the SASS dump")
        elif c["hmma"] + c["hgmma"] == 0:
            out.append("no tensor-core (HMMA/HGMMA) instructions")
    return out


def selftest():
    """The checks must be able to fail: feed them synthetic bad reports."""
    name = "_ZN3sft7kernels20attention_fwd_kernelI13__nv_bfloat16Li128EEEvNS0_18AttentionFwdParamsE"
    ptx = ("ptxas info    : Compiling entry function '%s' for 'sm_80'\n"
           "ptxas info    : Function properties for %s\n"
           "    24 bytes stack frame, 20 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 504 bytes cmem[0]\n") % (name, name)
    info = parse_ptxas(ptx)[name]
    assert info == dict(regs=255, stack=24, spill_st=20, spill_ld=12, smem=1024), info
    sass_bad = "\tcode for sm_80\n\t\tFunction : %s\n        /*0010*/  FFMA R1, R2, R3, R4 ;\n" % name
    sass_good = sass_bad.replace("FFMA R1, R2, R3, R4", "HMMA.16816.F32.BF16 R4, R8, R12, R4")
    sass_bad = "arch = sm_80\n" + sass_bad
    sass_good = "arch = sm_80\n" + sass_good
    sizes = {"fwd128": 200000, "fwd64": 0, "dkdv64": 0, "dkdv128": 0, "dq64": 0, "dq128": 0}
    found = problems(80, name, info, sizes, parse_sass(sass_bad), probe=info)
    assert len(found) == 5, found  # no headroom, spills, stack, smem, no HMMA
    assert parse_sass(sass_good)[(80, short_name(name))]["hmma"] == 1
    clean = dict(regs=128, stack=0, spill_st=0, spill_ld=0, smem=0)
    assert problems(80, name, clean, dict(sizes, fwd128=1000), parse_sass(sass_good), probe=clean) == []
    # 255 registers without spills passes the plain checks; the probe's 4-byte spill at 240 does not.
    capped = dict(regs=240, stack=8, spill_st=4, spill_ld=4, smem=0)
    found = problems(80, name, dict(clean, regs=255), dict(sizes, fwd128=1000), parse_sass(sass_good), probe=capped)
    assert len(found) == 1 and "headroom" in found[0], found
    assert len(problems(80, name, clean, dict(sizes, fwd128=1000), parse_sass(sass_good))) == 1  # no probe
    assert short_name(name) == "attention_fwd_kernel<bf16,128>", short_name(name)
    dropout = "_ZN3sft7kernels12_GLOBAL__N_119dropout_mask_kernelIf13__nv_bfloat16EEvNS0_17DropoutMaskParamsE"
    assert short_name(dropout) == "dropout_mask_kernel<fp32,bf16>", short_name(dropout)
    ru = parse_resource_usage("arch = sm_90\n Function %s:\n  REG:200 STACK:16 SHARED:0 LOCAL:8 CONSTANT[0]:504\n" % name)
    assert ru[(90, short_name(name))] == dict(regs=200, stack=16, shared=0, local=8), ru
    assert len(problems(90, name, clean, dict(sizes, fwd128=1000), {(90, short_name(name)): {"hmma": 1, "hgmma": 0}},
                        ru[(90, short_name(name))], probe=clean)) == 1


def find_cuobjdump():
    """PATH, the CUDA toolkit, then the pinned nvidia-cuda-cuobjdump wheel (scripts/requirements.txt)."""
    candidates = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    candidates += sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "*", "bin", "cuobjdump")))
    for c in candidates:
        if c and os.path.exists(c):
            return c
    return "cuobjdump"


def cuda_sources(source_dir):
    """The .cu files of SFT_KERNEL_CUDA_SOURCES: its set(...) block and every list(APPEND ...) to it."""
    text = open(os.path.join(source_dir, "kernels", "sources.cmake")).read()
    blocks = re.findall(r"^(?:set|list\(APPEND)\s*\(?SFT_KERNEL_CUDA_SOURCES(.*?)\)", text, re.S | re.M)
    return [s for block in blocks for s in block.split() if s.endswith(".cu")]


def torch_include_dirs():
    """LibTorch's headers from the wheel (kernels/dropout_mask.h uses ATen's header-only Philox engine)."""
    base = os.path.join(sysconfig.get_paths()["purelib"], "torch", "include")
    return [base, os.path.join(base, "torch", "csrc", "api", "include")] if os.path.isdir(base) else []


def smem_sizes(source_dir, tmp):
    prog = os.path.join(tmp, "smem.cpp")
    with open(prog, "w") as f:
        f.write('#include <cstdio>\n#include <initializer_list>\n#include "kernels/attention_params.h"\nusing namespace sft::kernels;\n'
                "int main() { for (int d : {64, 128}) std::printf(\"fwd%d %d\\ndkdv%d %d\\ndq%d %d\\n\", d,"
                " attention_fwd_smem_bytes(d), d, attention_bwd_dkdv_smem_bytes(d), d, attention_bwd_dq_smem_bytes(d));"
                " }\n")
    exe = os.path.join(tmp, "smem")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    subprocess.run([cxx, "-std=c++17", "-I", source_dir, prog, "-o", exe], check=True)
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--build-dir", default=None, help="CMake build dir whose kernel objects get the SASS check")
    ap.add_argument("--arch", type=int, action="append", help="SM version, repeatable (default 80 and 90)")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--cuobjdump", default=find_cuobjdump())
    ap.add_argument("--no-selftest", action="store_true")
    args = ap.parse_args()
    archs = args.arch or [80, 90]
    if not args.no_selftest:
        selftest()
    for tool in (args.nvcc, args.cuobjdump):
        if not os.path.exists(tool):
            print("check_cuda_build: %s not found" % tool)
            return 1

    failures = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = smem_sizes(args.source_dir, tmp)
        ptxas = {}
        probe = {}
        cubins = []
        for src in cuda_sources(args.source_dir):
            for arch in archs:
                for probing in (False, True):
                    cubin = os.path.join(tmp, "%s.sm_%d%s.cubin" % (os.path.basename(src), arch, ".probe" * probing))
                    cmd = [args.nvcc, "-std=c++17", "-O3", "-DSFT_WITH_CUDA=1", "-I", args.source_dir]
                    cmd += [a for d in torch_include_dirs() for a in ("-isystem", d)]
                    cmd += ["--expt-relaxed-constexpr", "-lineinfo", "-gencode",
                           "arch=compute_%d,code=sm_%d" % (arch, arch), "-Xptxas=-v", "-cubin", "-o", cubin,
                           os.path.join(args.source_dir, src)]
                    if probing:
                        cmd.insert(1, "-DSFT_ATTN_REGISTER_PROBE=%d" % REGISTER_PROBE)
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode != 0:
                        print(r.stdout + r.stderr)
                        failures.append("%s sm_%d%s: nvcc failed" % (src, arch, " (register probe)" * probing))
                        continue
                    for name, info in parse_ptxas(r.stdout + r.stderr).items():
                        (probe if probing else ptxas)[(arch, name)] = info
                    if not probing:
                        cubins.append(cubin)
        objects = []
        if args.build_dir:
            objects = sorted(glob.glob(os.path.join(args.build_dir, "**", "kernels", "*.cu.o"), recursive=True))
            if not objects:
                failures.append("no kernels/*.cu.o under %s (was the library built with CUDA?)" % args.build_dir)
        sass_text = ""
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(os.path.abspath(args.cuobjdump)) + os.pathsep + env.get("PATH", "")
        for obj in objects or cubins:
            r = subprocess.run([args.cuobjdump, "--dump-sass", obj], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                failures.append("cuobjdump failed on %s: %s" % (obj, r.stderr.strip()))
            m = re.search(r"\.sm_(\d+)\.cubin$", obj)  # a cubin's dump names no arch; its file name does
            sass_text += ("arch = sm_%s\n" % m.group(1) if m else "") + r.stdout
        sass = parse_sass(sass_text)
        built = {}
        for obj in objects:
            r = subprocess.run([args.cuobjdump, "--dump-resource-usage", obj], capture_output=True, text=True, env=env)
            built.update(parse_resource_usage(r.stdout))
        print("SASS checked in: %s" % ", ".join(os.path.relpath(o, args.source_dir) for o in (objects or cubins)))
        print()
        print("| kernel | arch | regs | stack B | spill st/ld B | smem static+dyn B | HMMA | HGMMA | built regs/local B |"
              " regs/spill B at cap %d | status |" % REGISTER_PROBE)
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for (arch, name), info in sorted(ptxas.items(), key=lambda kv: (short_name(kv[0][1]), kv[0][0])):
            b = built.get((arch, short_name(name)))
            pr = probe.get((arch, name))
            found = problems(arch, name, info, sizes, sass, b, pr)
            c = sass.get((arch, short_name(name)), {"hmma": "-", "hgmma": "-"})
            rows.append(name)
            print("| %s | sm_%d | %d | %d | %d/%d | %d | %s | %s | %s | %s | %s |" % (
                short_name(name), arch, info["regs"], info["stack"], info["spill_st"], info["spill_ld"],
                info["smem"] + dynamic_smem(name, sizes), c["hmma"], c["hgmma"],
                "%d/%d" % (b["regs"], b["local"]) if b else "-",
                "%d/%d" % (pr["regs"], pr["spill_st"] + pr["spill_ld"]) if pr else "-", "; ".join(found) or "ok"))
            failures += ["%s sm_%d: %s" % (short_name(name), arch, f) for f in found]
        for hot in HOT:
            for arch in archs:
                if not any(hot in n and a == arch for (a, n) in ptxas):
                    failures.append("%s missing for sm_%d" % (hot, arch))
    print()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("ok: %d kernel builds, no spills, no stack frames in hot kernels, shared memory within limits, "
          "tensor-core instructions in every hot kernel, every hot kernel fits %d registers without spilling"
          % (len(rows), REGISTER_PROBE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
