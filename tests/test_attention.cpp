// tests/test_attention.cpp: CPU tests of the fused attention: the shared index arithmetic against brute
// force, the CPU twin (same blocked algorithm as the CUDA kernels) against the naive fp64 reference over
// the case matrix (lengths 1, 2, block +-1, long; mixed packed batches; causal or not; GQA 1/2/4/8; head
// dims 64/128; both backward modes), fp64 finite-difference gradients, the autograd wrapper, the 2x-error
// rule on bf16/fp16 inputs, correct rounding of the low-precision results against the fp64 gradients of
// the designed algorithm, the input checker, resolve_attention_impl and the shared-memory budget; and the
// kernel hardening a CPU can reach: the folded (sequence, block) grid index past 65,535 sequences, the
// CUDA alignment rule on real layouts, and strided (fused-qkv, head-padded) q/k/v.
// The CPU speed comparison with LibTorch's SDPA is scripts/bench_attention.sh (tests/bench_attention_main.cpp).
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_index.h"
#include "kernels/attention_params.h"
#include "kernels/fused_attention.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace sft::kernels {
namespace {

// fresh_seed, Packed and pack: tests/test_util.h.
using test::fresh_seed;
using test::pack;
using test::Packed;

double max_abs(const at::Tensor& x) { return x.abs().max().item<double>(); }
double max_err(const at::Tensor& a, const at::Tensor& b) {
  return (a.detach().to(at::kDouble) - b.detach().to(at::kDouble)).abs().max().item<double>();
}

// ---------------------------------------------------------------------------------------------------------
// Index arithmetic (kernels/attention_index.h) against brute force over every element of every tile.
TEST(AttentionIndex, TileLimitsMatchBruteForceVisibility) {
  for (int bm : {32, 64}) {
    for (int bn : {64}) {
      for (bool causal : {false, true}) {
        for (int len = 1; len <= 300; ++len) {
          const int m_blocks = attn::num_blocks(len, bm), n_blocks = attn::num_blocks(len, bn);
          for (int mb = 0; mb < m_blocks; ++mb) {
            for (int nb = 0; nb < n_blocks; ++nb) {
              bool any = false, all = true;
              for (int i = mb * bm; i < (mb + 1) * bm; ++i) {
                for (int j = nb * bn; j < (nb + 1) * bn; ++j) {
                  const bool vis = i < len && j < len && (!causal || j <= i);
                  ASSERT_EQ(attn::key_visible(i, j, len, causal), vis);
                  any |= vis;
                  all &= vis;
                }
              }
              // Forward / dQ pass visits key blocks [0, key_block_end); dK/dV pass visits query blocks
              // [query_block_begin, m_blocks). Both must visit exactly the tiles with a visible element.
              const bool fwd_visits = nb < attn::key_block_end(mb, bm, bn, len, causal);
              const bool bwd_visits = mb >= attn::query_block_begin(nb, bm, bn, causal);
              ASSERT_EQ(fwd_visits, any) << "len " << len << " mb " << mb << " nb " << nb << " causal " << causal;
              ASSERT_EQ(bwd_visits, any) << "len " << len << " mb " << mb << " nb " << nb << " causal " << causal;
              // An unmasked tile must be fully visible.
              if (!attn::tile_needs_mask(mb, nb, bm, bn, len, causal)) {
                ASSERT_TRUE(all);
              }
            }
          }
        }
      }
    }
  }
}

TEST(AttentionIndex, SequenceSpansAndGqaMapping) {
  const int32_t cu[] = {0, 1, 3, 3, 67};
  EXPECT_EQ(attn::seq_span(cu, 0).begin, 0);
  EXPECT_EQ(attn::seq_span(cu, 0).len, 1);
  EXPECT_EQ(attn::seq_span(cu, 1).begin, 1);
  EXPECT_EQ(attn::seq_span(cu, 1).len, 2);
  EXPECT_EQ(attn::seq_span(cu, 2).len, 0);
  EXPECT_EQ(attn::seq_span(cu, 3).begin, 3);
  EXPECT_EQ(attn::seq_span(cu, 3).len, 64);
  // 8 q heads over 2 kv heads: heads 0-3 -> 0, 4-7 -> 1 (transformers repeat_kv).
  for (int h = 0; h < 8; ++h) EXPECT_EQ(attn::kv_head_of(h, 4), h / 4);
  EXPECT_EQ(attn::first_q_head_of(1, 4), 4);
  EXPECT_EQ(attn::row_stat_index(2, 5, 100), 205);
  EXPECT_EQ(attn::token_offset(3, 2, 8 * 64, 64), 3 * 512 + 128);
}

// The (sequence, block) fold of blockIdx.x (the CUDA grid and the CPU twin's work items): every pair
// round-trips, also far past the 65,535 sequences that gridDim.y would allow, and the grid limit holds.
TEST(AttentionIndex, FoldedGridCoversMoreThan65535Sequences) {
  for (int blocks : {1, 2, 3, 64, 1000}) {
    const int seqs = 200000;
    const long long grid_x = attn::folded_grid_x(blocks, seqs);
    ASSERT_EQ(grid_x, static_cast<long long>(blocks) * seqs);
    for (long long x : {0LL, 1LL, 65535LL * blocks, 65536LL * blocks + blocks - 1, grid_x - 1}) {
      const attn::BlockOfSeq c = attn::unfold_block_seq(static_cast<unsigned>(x), blocks);
      EXPECT_EQ(c.block, x % blocks);
      EXPECT_EQ(c.seq, x / blocks);
      EXPECT_EQ(static_cast<long long>(c.seq) * blocks + c.block, x);
    }
    for (int seq : {0, 65534, 65535, 65536, 70000, seqs - 1}) {
      for (int block : {0, blocks - 1}) {
        const attn::BlockOfSeq c =
            attn::unfold_block_seq(static_cast<unsigned>(static_cast<long long>(seq) * blocks + block), blocks);
        EXPECT_EQ(c.seq, seq);
        EXPECT_EQ(c.block, block);
      }
    }
  }
  EXPECT_TRUE(attn::folded_grid_fits(1024, 2000000));
  EXPECT_TRUE(attn::folded_grid_fits(32, 2147483647));  // one 32-row block per sequence: exactly the limit
  EXPECT_FALSE(attn::folded_grid_fits(64, 2147483647));
  EXPECT_FALSE(attn::folded_grid_fits(1 << 20, 1 << 20));
}

// The CUDA alignment rule (attn::vector_access_ok) on real tensor layouts: a contiguous view with an odd
// storage offset fails it although every shape check passes; fused-qkv slices and padded rows pass.
TEST(AttentionIndex, VectorAccessNeedsAlignedStartAndStrides) {
  auto ok = [](const at::Tensor& t) {
    return attn::vector_access_ok(t.stride(0), t.stride(1), t.stride(2), reinterpret_cast<uintptr_t>(t.data_ptr()));
  };
  const at::Tensor base = at::empty({8 * 4 * 64 + 8}, at::kBFloat16);  // the CPU allocator aligns to 64 B
  ASSERT_EQ(reinterpret_cast<uintptr_t>(base.data_ptr()) % 16, 0u);
  EXPECT_TRUE(ok(base.narrow(0, 0, 8 * 4 * 64).view({8, 4, 64})));
  const at::Tensor shifted = base.narrow(0, 1, 8 * 4 * 64).view({8, 4, 64});  // 2-byte offset
  EXPECT_TRUE(shifted.is_contiguous());
  EXPECT_FALSE(ok(shifted));
  EXPECT_TRUE(ok(base.narrow(0, 8, 8 * 4 * 64).view({8, 4, 64})));  // 16-byte offset
  const at::Tensor qkv = at::empty({8, 4 + 2 + 2, 64}, at::kBFloat16);
  EXPECT_TRUE(ok(qkv.narrow(1, 4, 2)));                            // k of a fused projection
  EXPECT_TRUE(ok(at::empty({8, 2, 72}, at::kBFloat16).narrow(2, 0, 64)));  // head stride 72
  EXPECT_FALSE(ok(at::empty({8, 2, 68}, at::kBFloat16).narrow(2, 0, 64)));  // head stride 68
  EXPECT_FALSE(ok(at::empty({8, 64, 2}, at::kBFloat16).transpose(1, 2)));   // D not unit-stride
}

// Every kernel's shared memory fits the opt-in per-block limit of A100 (sm_80) and H100 (sm_90).
TEST(AttentionIndex, SharedMemoryFitsSm80AndSm90) {
  for (int d : {64, 128}) {
    for (int bytes : {attention_fwd_smem_bytes(d), attention_bwd_dkdv_smem_bytes(d), attention_bwd_dq_smem_bytes(d)}) {
      EXPECT_GT(bytes, 0);
      EXPECT_LE(bytes, kSmemLimitSm80) << "head_dim " << d;
      EXPECT_LE(bytes, kSmemLimitSm90) << "head_dim " << d;
    }
  }
  EXPECT_EQ(attention_fwd_smem_bytes(128), 2 * 136 * 192);  // Q 64 + K 64 + V 64 rows of 136 bf16
}

// ---------------------------------------------------------------------------------------------------------
// CPU twin vs the naive fp64 reference (forward and all three gradients, through the autograd wrapper).
struct TwinCase {
  std::vector<int32_t> lens;
  int hkv, group, d;
  bool causal, deterministic;
};

struct TwinErrors {
  double out, dq, dk, dv, scale;  // max abs errors; scale = max |reference| over the four tensors
};

TwinErrors run_twin_case(const TwinCase& c, at::ScalarType dtype) {
  const Packed p = pack(c.lens);
  const auto [q, k, v, dout] = test::random_attention_inputs(p.total, c.hkv * c.group, c.hkv, c.d, dtype);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  at::Tensor out = fused_varlen_attention(q, k, v, p.cu_host, p.cu_host, p.max_len, scale, c.causal, c.deterministic);
  auto g = torch::autograd::grad({out}, {q, k, v}, {dout});

  at::Tensor qr = q.detach().to(at::kDouble).requires_grad_(true), kr = k.detach().to(at::kDouble).requires_grad_(true),
             vr = v.detach().to(at::kDouble).requires_grad_(true);
  at::Tensor out_r = reference_varlen_attention_fp64(qr, kr, vr, p.cu_host, scale, c.causal);
  auto gr = torch::autograd::grad({out_r}, {qr, kr, vr}, {dout.to(at::kDouble)});
  TwinErrors e{max_err(out, out_r), max_err(g[0], gr[0]), max_err(g[1], gr[1]), max_err(g[2], gr[2]), 0};
  e.scale = std::max({max_abs(out_r), max_abs(gr[0]), max_abs(gr[1]), max_abs(gr[2])});
  return e;
}

std::vector<TwinCase> case_matrix() {
  // A packed batch mixing 1, 2, block +-1 (32 is the hd128 backward query block, 64 the others) and a
  // multi-block sequence; GQA ratios 1, 2, 4, 8; head dims 64, 128; causal or not; both backward modes.
  const std::vector<int32_t> mixed{1, 63, 2, 64, 65, 31, 33, 129, 200};
  std::vector<TwinCase> cases;
  for (int d : {64, 128}) {
    for (bool causal : {false, true}) {
      for (int group : {1, 2, 4, 8}) {
        cases.push_back({mixed, group == 8 ? 1 : 2, group, d, causal, group == 2});
      }
    }
  }
  return cases;
}

std::string describe(const TwinCase& c) {
  std::string s = "lens [";
  for (int32_t len : c.lens) s += std::to_string(len) + " ";
  return s + "] hkv " + std::to_string(c.hkv) + " group " + std::to_string(c.group) + " d " + std::to_string(c.d) +
         " causal " + std::to_string(c.causal) + " deterministic " + std::to_string(c.deterministic);
}

// Every result (out, dq, dk, dv) within `relative` * scale of the fp64 reference.
void expect_all_within(const TwinErrors& e, double relative) {
  EXPECT_LT(e.out, relative * e.scale) << "out";
  EXPECT_LT(e.dq, relative * e.scale) << "dq";
  EXPECT_LT(e.dk, relative * e.scale) << "dk";
  EXPECT_LT(e.dv, relative * e.scale) << "dv";
}

TEST(AttentionCpuTwin, Fp64MatchesReferenceOverCaseMatrix) {
  const uint64_t seed = fresh_seed();
  for (const TwinCase& c : case_matrix()) {
    const TwinErrors e = run_twin_case(c, at::kDouble);
    SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
    EXPECT_GT(e.scale, 0.1);  // the reference is not trivially zero
    expect_all_within(e, 1e-11);
  }
}

TEST(AttentionCpuTwin, Fp32MatchesReferenceOverCaseMatrix) {
  const uint64_t seed = fresh_seed();
  double worst = 0;
  for (const TwinCase& c : case_matrix()) {
    const TwinErrors e = run_twin_case(c, at::kFloat);
    SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
    expect_all_within(e, 2e-5);
    worst = std::max({worst, e.out / e.scale, e.dq / e.scale, e.dk / e.scale, e.dv / e.scale});
  }
  std::printf("[twin fp32] worst relative max-abs error vs fp64 reference: %.3g\n", worst);
}

TEST(AttentionCpuTwin, LongSequences) {
  const uint64_t seed = fresh_seed();
  for (bool causal : {true, false}) {
    const TwinCase c{{1000, 517}, 1, 2, 64, causal, false};
    const TwinErrors e = run_twin_case(c, at::kFloat);
    SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
    expect_all_within(e, 2e-5);
  }
}

// Each sequence attends only to itself: changing one document must not change another's outputs.
TEST(AttentionCpuTwin, DocumentsAreIsolated) {
  fresh_seed();
  const Packed p = pack({70, 50});
  at::Tensor q = at::randn({p.total, 4, 64}), k = at::randn({p.total, 2, 64}), v = at::randn({p.total, 2, 64});
  const at::Tensor out1 = fused_varlen_attention(q, k, v, p.cu_host, p.cu_host, p.max_len, 0.125, true);
  at::Tensor k2 = k.clone(), v2 = v.clone();
  k2.narrow(0, 70, 50).normal_();
  v2.narrow(0, 70, 50).normal_();
  const at::Tensor out2 = fused_varlen_attention(q, k2, v2, p.cu_host, p.cu_host, p.max_len, 0.125, true);
  EXPECT_TRUE(at::equal(out1.narrow(0, 0, 70), out2.narrow(0, 0, 70)));
  EXPECT_GT(max_err(out1.narrow(0, 70, 50), out2.narrow(0, 70, 50)), 0.1);
}

// fp64 central finite differences of L = sum(out * w) on small cases, every input element.
TEST(AttentionCpuTwin, FiniteDifferenceGradientsFp64) {
  const uint64_t seed = fresh_seed();
  for (bool causal : {false, true}) {
    for (int d : {64, 128}) {
      const Packed p = pack({3, 1, 5});
      const int hkv = 1, hq = 2;
      auto opts = at::TensorOptions().dtype(at::kDouble);
      at::Tensor q = at::randn({p.total, hq, d}, opts), k = at::randn({p.total, hkv, d}, opts),
                 v = at::randn({p.total, hkv, d}, opts), w = at::randn({p.total, hq, d}, opts);
      const double scale = 0.3;
      auto loss = [&](const at::Tensor& qq, const at::Tensor& kk, const at::Tensor& vv) {
        at::Tensor out = at::empty(qq.sizes(), opts), lse = at::empty({hq, p.total}, opts);
        fused_attention_forward(qq, kk, vv, p.cu_host, p.cu_host, p.max_len, scale, causal, out, lse);
        return (out * w).sum().item<double>();
      };
      at::Tensor out = at::empty(q.sizes(), opts), lse = at::empty({hq, p.total}, opts);
      fused_attention_forward(q, k, v, p.cu_host, p.cu_host, p.max_len, scale, causal, out, lse);
      at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
      fused_attention_backward(w, q, k, v, out, lse, p.cu_host, p.cu_host, p.max_len, scale, causal, false, dq, dk, dv);
      at::Tensor* inputs[3] = {&q, &k, &v};
      const at::Tensor analytic[3] = {dq, dk, dv};
      const double h = 1e-5;
      double worst = 0, largest = 0;
      for (int which = 0; which < 3; ++which) {
        at::Tensor x = *inputs[which];
        double* data = x.data_ptr<double>();
        const double* grad = analytic[which].data_ptr<double>();
        for (int64_t i = 0; i < x.numel(); ++i) {
          const double saved = data[i];
          data[i] = saved + h;
          const double up = loss(q, k, v);
          data[i] = saved - h;
          const double down = loss(q, k, v);
          data[i] = saved;
          const double fd = (up - down) / (2 * h);
          worst = std::max(worst, std::abs(fd - grad[i]));
          largest = std::max(largest, std::abs(grad[i]));
        }
      }
      SCOPED_TRACE("causal " + std::to_string(causal) + " d " + std::to_string(d) + " seed " + std::to_string(seed));
      EXPECT_GT(largest, 0.1);
      EXPECT_LT(worst, 1e-7 * std::max(1.0, largest));
    }
  }
}

// Backward modes: both agree, and every output element is written (outputs poisoned with NaN).
TEST(AttentionCpuTwin, BackwardModesAgreeAndWriteEverything) {
  fresh_seed();
  const Packed p = pack({1, 97, 64, 2});
  at::Tensor q = at::randn({p.total, 8, 128}), k = at::randn({p.total, 2, 128}), v = at::randn({p.total, 2, 128});
  at::Tensor dout = at::randn({p.total, 8, 128});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::Tensor out = at::full(q.sizes(), nan), lse = at::full({8, p.total}, nan);
  fused_attention_forward(q, k, v, p.cu_host, p.cu_host, p.max_len, 0.1, true, out, lse);
  ASSERT_TRUE(out.isfinite().all().item<bool>());
  ASSERT_TRUE(lse.isfinite().all().item<bool>());
  at::Tensor grads[2][3];
  for (int mode = 0; mode < 2; ++mode) {
    at::Tensor dq = at::full(q.sizes(), nan), dk = at::full(k.sizes(), nan), dv = at::full(v.sizes(), nan);
    fused_attention_backward(dout, q, k, v, out, lse, p.cu_host, p.cu_host, p.max_len, 0.1, true, mode == 1, dq, dk, dv);
    grads[mode][0] = dq;
    grads[mode][1] = dk;
    grads[mode][2] = dv;
    for (const at::Tensor& g : grads[mode]) ASSERT_TRUE(g.isfinite().all().item<bool>());
  }
  for (int i = 0; i < 3; ++i) EXPECT_LT(max_err(grads[0][i], grads[1][i]), 1e-4 * max_abs(grads[0][i]));
  // lse is the logsumexp of the scaled scores: token 0 of head 3 attends to itself only.
  const double s00 = (q[0][3] * k[0][0]).sum().item<double>() * 0.1;
  EXPECT_NEAR(lse[3][0].item<double>(), s00, 1e-5);
}

// varlen_attention(Fused) on CPU agrees with the SDPA and eager paths through autograd (fp32).
TEST(AttentionCpuTwin, DispatchFusedMatchesSdpaAndEager) {
  fresh_seed();
  const Packed p = pack({17, 64, 5});
  PackedSequences seqs{p.cu_host, p.cu_host, p.max_len};
  at::Tensor q = at::randn({p.total, 4, 64}), k = at::randn({p.total, 1, 64}), v = at::randn({p.total, 1, 64});
  at::Tensor dout = at::randn({p.total, 4, 64});
  std::vector<at::Tensor> outs, dqs, dks;
  for (AttentionImpl impl : {AttentionImpl::Fused, AttentionImpl::Sdpa, AttentionImpl::Eager}) {
    at::Tensor qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true), vg = v.clone().requires_grad_(true);
    at::Tensor out = varlen_attention(qg, kg, vg, seqs, 0.125, true, impl);
    auto g = torch::autograd::grad({out}, {qg, kg, vg}, {dout});
    outs.push_back(out);
    dqs.push_back(g[0]);
    dks.push_back(g[1]);
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_LT(max_err(outs[0], outs[i]), 1e-5);
    EXPECT_LT(max_err(dqs[0], dqs[i]), 1e-4);
    EXPECT_LT(max_err(dks[0], dks[i]), 1e-4);
  }
}

// fp64 attention and its gradients from the explicit backward formulas, with D = rowsum(dO * O) taken
// from `stored_out` ([T, Hq, D], the O a forward pass wrote) when given, else from the exact O. Without it
// this is the exact gradient (checked against autograd below); with a bf16/fp16 stored O it is exactly
// what FlashAttention-2's backward computes by design: its preprocessing pass reads the low-precision O
// that the forward wrote, so D carries O's rounding.
struct AttentionGrads {
  at::Tensor out, dq, dk, dv;  // fp64, [T, H, D]
};
AttentionGrads designed_gradients_fp64(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& dout, const Packed& p, double scale, bool causal,
                                       const at::Tensor& stored_out = {}) {
  const int64_t hq = q.size(1), hkv = k.size(1), group = hq / hkv, d = q.size(2);
  const at::Tensor cu = p.cu_host.to(at::kLong);
  std::vector<at::Tensor> outs, dqs, dks, dvs;
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    const int64_t begin = cu[s].item<int64_t>(), len = cu[s + 1].item<int64_t>() - begin;
    auto heads = [&](const at::Tensor& x) { return x.narrow(0, begin, len).to(at::kDouble).transpose(0, 1); };
    const at::Tensor qh = heads(q), doh = heads(dout);                      // [Hq, L, D]
    const at::Tensor kh = heads(k).repeat_interleave(group, 0);             // [Hq, L, D]
    const at::Tensor vh = heads(v).repeat_interleave(group, 0);             // [Hq, L, D]
    at::Tensor scores = at::matmul(qh, kh.transpose(1, 2)) * scale;         // [Hq, L, L]
    if (causal) scores = scores.masked_fill(at::ones({len, len}, at::kBool).triu(1), -INFINITY);
    const at::Tensor probs = at::softmax(scores, -1);                       // [Hq, L, L]
    const at::Tensor out = at::matmul(probs, vh);                           // [Hq, L, D]
    const at::Tensor stored_o = stored_out.defined() ? heads(stored_out) : out;  // [Hq, L, D]
    const at::Tensor row_d = (doh * stored_o).sum(-1, /*keepdim=*/true);    // [Hq, L, 1]
    const at::Tensor dprobs = at::matmul(doh, vh.transpose(1, 2));          // [Hq, L, L]
    const at::Tensor dscores = probs * (dprobs - row_d);                    // [Hq, L, L]
    auto group_sum = [&](const at::Tensor& x) { return x.view({hkv, group, len, d}).sum(1); };  // [Hkv, L, D]
    outs.push_back(out.transpose(0, 1));
    dqs.push_back((at::matmul(dscores, kh) * scale).transpose(0, 1));
    dks.push_back(group_sum(at::matmul(dscores.transpose(1, 2), qh) * scale).transpose(0, 1));
    dvs.push_back(group_sum(at::matmul(probs.transpose(1, 2), doh)).transpose(0, 1));
  }
  return {at::cat(outs, 0), at::cat(dqs, 0), at::cat(dks, 0), at::cat(dvs, 0)};
}

// Unit in the last place of |x| in a float format with `mantissa_bits` stored bits (normal numbers).
double ulp_of(double x, int mantissa_bits) { return std::ldexp(1.0, std::ilogb(std::abs(x)) - mantissa_bits); }

TEST(AttentionCpuTwin, ExplicitFp64GradientsMatchAutograd) {
  fresh_seed();
  const Packed p = pack({1, 65, 130, 33});
  for (bool causal : {false, true}) {
    at::Tensor q = at::randn({p.total, 4, 64}, at::kDouble), k = at::randn({p.total, 2, 64}, at::kDouble),
               v = at::randn({p.total, 2, 64}, at::kDouble), dout = at::randn({p.total, 4, 64}, at::kDouble);
    const AttentionGrads mine = designed_gradients_fp64(q, k, v, dout, p, 0.125, causal);
    at::Tensor qr = q.clone().requires_grad_(true), kr = k.clone().requires_grad_(true),
               vr = v.clone().requires_grad_(true);
    at::Tensor out = reference_varlen_attention_fp64(qr, kr, vr, p.cu_host, 0.125, causal);
    auto grads = torch::autograd::grad({out}, {qr, kr, vr}, {dout});
    EXPECT_LT(max_err(mine.out, out), 1e-12);
    EXPECT_LT(max_err(mine.dq, grads[0]), 1e-12);
    EXPECT_LT(max_err(mine.dk, grads[1]), 1e-12);
    EXPECT_LT(max_err(mine.dv, grads[2]), 1e-12);
  }
}

// The twin computes in fp32 and rounds once at the end, so in bf16/fp16 each of O, dQ, dK, dV is its
// designed fp64 value (D from the O the forward stored) rounded: within half an ulp of the largest magnitude, plus fp32
// noise far below that. Deterministic for every draw, unlike a 2x rule against a comparator that is
// itself at the rounding floor.
TEST(AttentionCpuTwin, LowPrecisionIsTheDesignedGradientRounded) {
  const uint64_t seed = fresh_seed();
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    const int mantissa_bits = dtype == at::kHalf ? 10 : 7;
    for (bool causal : {false, true}) {
      const Packed p = pack({1, 65, 130, 33});
      at::Tensor q = at::randn({p.total, 4, 64}).to(dtype), k = at::randn({p.total, 2, 64}).to(dtype),
                 v = at::randn({p.total, 2, 64}).to(dtype), dout = at::randn({p.total, 4, 64}).to(dtype);
      at::Tensor qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true),
                 vg = v.clone().requires_grad_(true);
      at::Tensor out = fused_varlen_attention(qg, kg, vg, p.cu_host, p.cu_host, p.max_len, 0.125, causal);
      auto grads = torch::autograd::grad({out}, {qg, kg, vg}, {dout});
      const AttentionGrads designed = designed_gradients_fp64(q, k, v, dout, p, 0.125, causal, out.detach());
      const at::Tensor ours[4] = {out, grads[0], grads[1], grads[2]};
      const at::Tensor want[4] = {designed.out, designed.dq, designed.dk, designed.dv};
      const char* names[4] = {"out", "dq", "dk", "dv"};
      for (int i = 0; i < 4; ++i) {
        const double largest = max_abs(want[i]);
        const double bound = 0.5 * ulp_of(largest, mantissa_bits) + 1e-5 * largest;
        const double err = max_err(ours[i], want[i]);
        std::printf("[twin %s causal %d] %s: err %.3g, bound %.3g (half ulp %.3g)\n", c10::toString(dtype), causal,
                    names[i], err, bound, 0.5 * ulp_of(largest, mantissa_bits));
        EXPECT_LE(err, bound) << names[i] << " " << c10::toString(dtype) << " causal " << causal << " seed " << seed;
      }
    }
  }
}

// FlashAttention's rule on bf16 / fp16 CPU inputs: error vs fp64 at most 2x that of LibTorch's own
// attention run in the same precision (check_fused_against_reference allows LibTorch's math SDPA fp16/bf16
// reductions; by default it would upcast to fp32 and be correctly rounded, which FA2's design cannot be
// within 2x of: the test above pins the twin to exactly that design).
TEST(AttentionCpuTwin, LowPrecisionWithinTwiceTorchError) {
  const uint64_t seed = fresh_seed();
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    for (bool causal : {false, true}) {
      const Packed p = pack({1, 65, 130, 33});
      at::Tensor q = at::randn({p.total, 4, 64}).to(dtype), k = at::randn({p.total, 2, 64}).to(dtype),
                 v = at::randn({p.total, 2, 64}).to(dtype), dout = at::randn({p.total, 4, 64}).to(dtype);
      const bool flag_before = at::globalContext().allowFP16BF16ReductionMathSDP();
      const AttentionCheck r = check_fused_against_reference(q, k, v, dout, p.cu_host, p.max_len, 0.125, causal, false);
      EXPECT_EQ(at::globalContext().allowFP16BF16ReductionMathSDP(), flag_before) << "the comparator's scope leaked";
      std::printf("[twin %s causal %d] %s\n", c10::toString(dtype), causal, r.describe().c_str());
      SCOPED_TRACE(r.describe() + " seed " + std::to_string(seed));
      EXPECT_TRUE(r.passed);
      for (int i = 0; i < 4; ++i) EXPECT_GT(r.err_torch[i], 0.0);
    }
  }
}

// More than 65,535 sequences (the CUDA grid folds the sequence index into x; the twin walks the same
// folded work items): 70,000 one-token documents, then a 130-token one at index 70,000.
TEST(AttentionCpuTwin, MoreThan65535Sequences) {
  fresh_seed();
  std::vector<int32_t> lens(70000, 1);
  lens.push_back(130);
  const Packed p = pack(lens);
  for (bool deterministic : {false, true}) {
    at::Tensor q = at::randn({p.total, 2, 64}), k = at::randn({p.total, 1, 64}), v = at::randn({p.total, 1, 64});
    at::Tensor dout = at::randn({p.total, 2, 64});
    at::Tensor out = at::full(q.sizes(), NAN), lse = at::full({2, p.total}, NAN);
    fused_attention_forward(q, k, v, p.cu_host, p.cu_host, p.max_len, 0.125, true, out, lse);
    // A one-token document attends to itself only: P = 1, out = v, lse = the scaled self-score.
    EXPECT_TRUE(at::equal(out.narrow(0, 0, 70000), v.narrow(0, 0, 70000).expand({70000, 2, 64})));
    const at::Tensor self_scores = (q.narrow(0, 0, 70000) * k.narrow(0, 0, 70000)).sum(-1).t() * 0.125;  // [2, N]
    EXPECT_LT(max_err(lse.narrow(1, 0, 70000), self_scores), 1e-5);
    const at::Tensor last = reference_varlen_attention_fp64(q.narrow(0, 70000, 130), k.narrow(0, 70000, 130),
                                                            v.narrow(0, 70000, 130), pack({130}).cu_host, 0.125, true);
    EXPECT_LT(max_err(out.narrow(0, 70000, 130), last), 2e-5 * max_abs(last));
    at::Tensor dq = at::full(q.sizes(), NAN), dk = at::full(k.sizes(), NAN), dv = at::full(v.sizes(), NAN);
    fused_attention_backward(dout, q, k, v, out, lse, p.cu_host, p.cu_host, p.max_len, 0.125, true, deterministic, dq,
                             dk, dv);
    // dV of a one-token document sums dO over its 2 query heads; dS = P (dP - D) = 0, so dQ = dK = 0.
    EXPECT_LT(max_err(dv.narrow(0, 0, 70000), dout.narrow(0, 0, 70000).sum(1, true)), 1e-5) << deterministic;
    EXPECT_LT(max_abs(dq.narrow(0, 0, 70000)), 1e-5) << deterministic;
    EXPECT_LT(max_abs(dk.narrow(0, 0, 70000)), 1e-5) << deterministic;
    at::Tensor qr = q.narrow(0, 70000, 130).to(at::kDouble).requires_grad_(true),
               kr = k.narrow(0, 70000, 130).to(at::kDouble).requires_grad_(true),
               vr = v.narrow(0, 70000, 130).to(at::kDouble).requires_grad_(true);
    const at::Tensor out_r = reference_varlen_attention_fp64(qr, kr, vr, pack({130}).cu_host, 0.125, true);
    auto gr = torch::autograd::grad({out_r}, {qr, kr, vr}, {dout.narrow(0, 70000, 130).to(at::kDouble)});
    EXPECT_LT(max_err(dq.narrow(0, 70000, 130), gr[0]), 2e-5 * max_abs(gr[0])) << deterministic;
    EXPECT_LT(max_err(dk.narrow(0, 70000, 130), gr[1]), 2e-5 * max_abs(gr[1])) << deterministic;
    EXPECT_LT(max_err(dv.narrow(0, 70000, 130), gr[2]), 2e-5 * max_abs(gr[2])) << deterministic;
  }
}

// q/k/v with non-contiguous token and head strides (head ranges of one fused qkv tensor; head-padded
// rows), through the autograd wrapper: bitwise the results of contiguous copies, gradients flowing back
// into the strided storage, and the fp64 reference agrees.
TEST(AttentionCpuTwin, StridedInputsMatchContiguousCopies) {
  const uint64_t seed = fresh_seed();
  const Packed p = pack({100, 64, 1, 130});
  for (int d : {64, 128}) {
    const int hq = 4, hkv = 2;
    at::Tensor qkv = at::randn({p.total, hq + 2 * hkv, d}).requires_grad_(true);  // token stride (hq + 2 hkv) d
    at::Tensor padded = at::randn({p.total, hkv, d + 8}).requires_grad_(true);     // head stride d + 8
    const at::Tensor q = qkv.narrow(1, 0, hq), k = qkv.narrow(1, hq, hkv), v = padded.narrow(2, 0, d);
    ASSERT_FALSE(q.is_contiguous());
    ASSERT_FALSE(k.is_contiguous());
    ASSERT_FALSE(v.is_contiguous());
    const at::Tensor dout = at::randn({p.total, hq, d});
    for (bool deterministic : {false, true}) {
      const at::Tensor out = fused_varlen_attention(q, k, v, p.cu_host, p.cu_host, p.max_len, 0.1, true, deterministic);
      auto g = torch::autograd::grad({out}, {qkv, padded}, {dout});
      at::Tensor qc = q.detach().contiguous().requires_grad_(true), kc = k.detach().contiguous().requires_grad_(true),
                 vc = v.detach().contiguous().requires_grad_(true);
      const at::Tensor out_c = fused_varlen_attention(qc, kc, vc, p.cu_host, p.cu_host, p.max_len, 0.1, true, deterministic);
      auto gc = torch::autograd::grad({out_c}, {qc, kc, vc}, {dout});
      SCOPED_TRACE("d " + std::to_string(d) + " deterministic " + std::to_string(deterministic) + " seed " +
                   std::to_string(seed));
      EXPECT_TRUE(at::equal(out, out_c));
      EXPECT_TRUE(at::equal(g[0].narrow(1, 0, hq), gc[0]));
      EXPECT_TRUE(at::equal(g[0].narrow(1, hq, hkv), gc[1]));
      EXPECT_EQ(max_abs(g[0].narrow(1, hq + hkv, hkv)), 0.0);  // the unused third slice
      EXPECT_TRUE(at::equal(g[1].narrow(2, 0, d), gc[2]));
      EXPECT_EQ(max_abs(g[1].narrow(2, d, 8)), 0.0);            // the padding
      const at::Tensor ref = reference_varlen_attention_fp64(q, k, v, p.cu_host, 0.1, true);
      EXPECT_LT(max_err(out, ref), 2e-5 * max_abs(ref));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
TEST(AttentionFusedChecks, RejectsBadInputs) {
  const Packed p = pack({4, 4});
  at::Tensor q = at::randn({8, 4, 64}), k = at::randn({8, 2, 64}), v = at::randn({8, 2, 64});
  EXPECT_NO_THROW(fused_varlen_attention(q, k, v, p.cu_host, p.cu_host, 4, 0.1, true));
  EXPECT_THROW(fused_varlen_attention(q, at::randn({8, 3, 64}), at::randn({8, 3, 64}), p.cu_host, p.cu_host, 4, 0.1,
                                      true),
               c10::Error);  // 3 kv heads do not divide 4
  EXPECT_THROW(fused_varlen_attention(q, k, at::randn({8, 2, 32}), p.cu_host, p.cu_host, 4, 0.1, true), c10::Error);
  EXPECT_THROW(fused_varlen_attention(q, k, v, p.cu_host, p.cu_host, 3, 0.1, true), c10::Error);  // max_seqlen
  const at::Tensor short_cu = at::tensor(std::vector<int32_t>{0, 4, 7}, at::kInt);
  EXPECT_THROW(fused_varlen_attention(q, k, v, short_cu, short_cu, 4, 0.1, true), c10::Error);  // ends at 7 != 8
  const at::Tensor long_cu = p.cu_host.to(at::kLong);
  EXPECT_THROW(fused_varlen_attention(q, k, v, long_cu, long_cu, 4, 0.1, true), c10::Error);  // int64 offsets
  EXPECT_THROW(fused_varlen_attention(q.to(at::kInt), k.to(at::kInt), v.to(at::kInt), p.cu_host, p.cu_host, 4, 0.1,
                                      true),
               c10::Error);
}

TEST(AttentionFusedChecks, ResolveImplOnCpu) {
  const at::Device cpu(at::kCPU);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Sdpa, cpu), AttentionImpl::Sdpa);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Eager, cpu), AttentionImpl::Eager);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Fused, cpu), AttentionImpl::Fused);
  const AttentionImpl cpu_auto = resolve_attention_impl(AttentionImpl::Auto, cpu);
  EXPECT_TRUE(cpu_auto == AttentionImpl::Sdpa || cpu_auto == AttentionImpl::Fused);
  // The self-check really runs on the CPU twin (float) and passes.
  EXPECT_EQ(fused_attention_self_check(cpu), "");
}

}  // namespace
}  // namespace sft::kernels
