// data/tokenized.h: the `tokenized` data format: JSONL lines {"input_ids": [...], "labels": [...]}
// (labels -100 where unsupervised), exactly what `sft data --out` writes. Used for pre-tokenized data
// and for reference-parity runs where the tokenizer must play no part.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

#include "data/data_options.h"
#include "data/pipeline.h"

namespace sft::data {

// Reads the files, applies data.truncation / max_seq_len, drops zero-target examples (counted), and
// splits off data.eval (or a seeded eval_ratio share). Errors name file:line. No chat template is used.
PreparedData prepare_tokenized_data(const DataOptions& options, uint64_t seed, int64_t model_vocab_size);

}  // namespace sft::data
