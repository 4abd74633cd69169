#!/usr/bin/env python3
"""Golden values for NF4 quantisation (QLoRA, issue 14): bitsandbytes' output and an fp64 reference.

For a few weights (odd sizes, a partial last block, an odd element count, outliers, bf16, a SmolLM2
MLP shape) this writes <out>/nf4/nf4.safetensors with, per weight NAME:
  NAME                      the weight (its own dtype)
  NAME.bnb.codes            bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
  NAME.bnb.absmax             compress_statistics=False): packed uint8 [ceil(n/2), 1] and fp32 absmax
  NAME.bnb.dequant          dequantize_4bit of that, in w's dtype
  NAME.bnb_dq.codes         the same with compress_statistics=True (double quantisation): the 4-bit codes,
  NAME.bnb_dq.absmax          the 8-bit absmax codes, the fp32 absmax of each 256-block (nested_absmax),
  NAME.bnb_dq.nested_absmax   the offset (mean of the absmax values), the 256-value code map and the
  NAME.bnb_dq.offset          dequantised weight
  NAME.bnb_dq.nested_code
  NAME.bnb_dq.dequant
  NAME.ref.codes            the fp64 reference (below): unpacked codes int64 [n], absmax fp64 [blocks],
  NAME.ref.absmax             dequantised fp64 [n]; and with double quantisation: the 8-bit codes of
  NAME.ref.dequant            absmax - offset against bitsandbytes' map (nearest code in fp64), the
  NAME.ref_dq.absmax_codes    nested absmax and offset in fp64, and the fp64 dequantised weight
  NAME.ref_dq.nested_absmax
  NAME.ref_dq.offset
  NAME.ref_dq.dequant
The fp64 reference is the QLoRA paper's definition computed in float64 with numpy: per block of 64 the
absmax, x / absmax, the nearest of the paper's 16 NF4 values (as float64; ties to the lower code), and
value = code * absmax. Double quantisation: offset = mean(absmax), (absmax - offset) blockwise (256)
against bitsandbytes' 8-bit dynamic map, each to its nearest code.
bitsandbytes runs on this machine's CPU (its quantize_4bit is the pure-PyTorch reference backend there;
its 8-bit blockwise quantisation of the absmax is a C kernel whose code search is approximate, so its
double-quantised absmax codes may differ from the nearest code by one step; tests/test_qlora.cpp says how).
"""
import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32).astype(np.float64)
BLOCK = 64
NESTED_BLOCK = 256


def nearest(values, code):
    """Index of the nearest entry of the sorted fp64 `code`; ties to the lower entry."""
    mids = (code[:-1] + code[1:]) / 2
    return np.searchsorted(mids, values, side="left")  # values == mid -> lower index (as bucketize)


def blockwise(x, block):
    n = x.size
    blocks = -(-n // block)
    padded = np.zeros(blocks * block)
    padded[:n] = x
    absmax = np.abs(padded.reshape(blocks, block)).max(axis=1)
    scaled = np.clip(padded.reshape(blocks, block) / np.maximum(absmax, 1e-38)[:, None], -1, 1).reshape(-1)[:n]
    return absmax, scaled


def reference(w, nested_code):
    x = w.detach().double().reshape(-1).numpy()
    absmax, scaled = blockwise(x, BLOCK)
    codes = nearest(scaled, NF4)
    block_of = np.arange(x.size) // BLOCK
    dequant = NF4[codes] * absmax[block_of]
    offset = absmax.mean()
    nested_absmax, nested_scaled = blockwise(absmax - offset, NESTED_BLOCK)
    code8 = nested_code.double().numpy()
    absmax_codes = nearest(nested_scaled, code8)
    absmax_dq = code8[absmax_codes] * nested_absmax[np.arange(absmax.size) // NESTED_BLOCK] + offset
    dequant_dq = NF4[codes] * absmax_dq[block_of]
    t = torch.from_numpy
    return {
        "ref.codes": t(codes.astype(np.int64)), "ref.absmax": t(absmax), "ref.dequant": t(dequant),
        "ref_dq.absmax_codes": t(absmax_codes.astype(np.int64)), "ref_dq.nested_absmax": t(nested_absmax),
        "ref_dq.offset": torch.tensor([offset], dtype=torch.float64), "ref_dq.dequant": t(dequant_dq),
    }


def weights():
    g = torch.Generator().manual_seed(14)
    w = {}
    w["gauss"] = torch.randn(96, 200, generator=g) * 0.02             # 19,200 = 300 blocks
    w["odd"] = torch.randn(7, 37, generator=g)                         # 259: odd count, partial last block
    outliers = torch.randn(64, 320, generator=g) * 0.05
    outliers.view(-1)[torch.randint(0, outliers.numel(), (40,), generator=g)] *= 40  # LLM-style outliers
    w["outliers"] = outliers
    w["ties"] = (torch.randint(-8, 9, (32, 64), generator=g).float() / 8)   # many exact values, zeros
    w["bf16"] = (torch.randn(128, 192, generator=g) * 0.03).to(torch.bfloat16)
    w["mlp"] = torch.randn(1536, 576, generator=g) * 0.04              # SmolLM2 up_proj: 13,824 blocks
    return w


def build(out):
    import bitsandbytes.functional as F
    tensors = {}
    nested_code = F.create_dynamic_map()
    for name, w in weights().items():
        tensors[name] = w.contiguous()
        q, st = F.quantize_4bit(w, blocksize=BLOCK, quant_type="nf4", compress_statistics=False)
        tensors[name + ".bnb.codes"] = q.contiguous()
        tensors[name + ".bnb.absmax"] = st.absmax.contiguous()
        tensors[name + ".bnb.dequant"] = F.dequantize_4bit(q, st).contiguous()
        q2, st2 = F.quantize_4bit(w, blocksize=BLOCK, quant_type="nf4", compress_statistics=True)
        assert torch.equal(q2, q)
        tensors[name + ".bnb_dq.codes"] = q2.contiguous()
        tensors[name + ".bnb_dq.absmax"] = st2.absmax.contiguous()
        tensors[name + ".bnb_dq.nested_absmax"] = st2.state2.absmax.contiguous()
        tensors[name + ".bnb_dq.offset"] = st2.offset.reshape(1).float().contiguous()
        tensors[name + ".bnb_dq.nested_code"] = st2.state2.code.contiguous()
        tensors[name + ".bnb_dq.dequant"] = F.dequantize_4bit(q2, st2).contiguous()
        for key, value in reference(w, nested_code).items():
            tensors[name + "." + key] = value.contiguous()
    save_file(tensors, str(out / "nf4.safetensors"))


def main():
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(root / ".cache" / "golden"))
    args = parser.parse_args()
    out = Path(args.out) / "nf4"
    import bitsandbytes
    digest = hashlib.sha256(Path(__file__).read_bytes() + bitsandbytes.__version__.encode()).hexdigest()
    stamp = out / "STAMP"
    if stamp.exists() and stamp.read_text() == digest:
        print(f"[golden] NF4 references up to date in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # absmax.mean() is then one sequential reduction, as in the test
    build(out)
    stamp.write_text(digest)
    print(f"[golden] NF4 references written to {out}")


if __name__ == "__main__":
    main()
