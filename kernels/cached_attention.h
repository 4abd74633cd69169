// kernels/cached_attention.h: the fp64 reference of kv_cache_attention (kernels/ops.h), which the tests
// compare the decoding attention against. model/ never includes this header.
#pragma once
#include <ATen/ATen.h>

#include "kernels/ops.h"

namespace sft::kernels {

// Explicit loops over documents, query rows and heads in fp64: q [T, Hq, D] against the cached rows of
// `cache` as kv_cache_attention reads them (row i of document d's n_d new rows sees positions
// [0, lengths[d] - n_d + i]; query head h reads kv head h / (Hq / Hkv)). Returns fp64 [T, Hq, D].
at::Tensor reference_kv_cache_attention(const at::Tensor& q, const KvCacheView& cache, const PackedSequences& seqs,
                                        double softmax_scale);

}  // namespace sft::kernels
