// trainer/checkpoint.h: full-state training checkpoints (write atomically, find, verify, load, prune) and
// the run fingerprint that guards a resume against changed inputs.
//
// On-disk format (version 1), output_dir/checkpoints/step-00000100/:
//   weights.safetensors              trainable parameters only, under our parameter names (a LoRA run holds
//                                    just lora_A/lora_B; frozen base weights are never copied)
//   optimizer/rank-00000.safetensors AdamW::state_tensors() ("<param>.exp_avg", "... .exp_avg_sq", "step").
//                                    Data parallelism replicates the optimizer state, so rank 0 writes the
//                                    one shard; a later ZeRO stage adds rank-00001... (each rank's slice of
//                                    the flat bucket layout, trainer/grad_sync.h) and reads them back by name.
//   ranks/rank-00001.json ...        multi-process runs only: what only that rank has (its RNG states)
//   trainer_state.json               trainer/trainer_state.h: step, global sampler position, scheduler,
//                                    rank 0's RNG, log window, world_size, micro_batch_size, grad_accum,
//                                    resolved config, fingerprint
//   manifest.json                    written LAST: {"files": {relative path: {"size", "sha256"}}}
// A save writes everything into step-XXXXXXXX.tmp-PID, fsyncs every file and directory, then renames the
// directory into place and fsyncs checkpoints/. A directory counts as a checkpoint only when its name is
// exactly step-<digits> and it holds a manifest.json that parses; loading then re-hashes every file.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/llama.h"
#include "trainer/config.h"

namespace sft {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

inline constexpr const char* kCheckpointWeights = "weights.safetensors";
inline constexpr const char* kCheckpointState = "trainer_state.json";
inline constexpr const char* kCheckpointManifest = "manifest.json";
std::string optimizer_shard_name(int64_t rank);  // "optimizer/rank-00000.safetensors"

struct CheckpointContents {
  int64_t step = 0;
  NamedTensors weights;    // trainable parameters
  NamedTensors optimizer;  // this rank's optimizer state
  nlohmann::json trainer_state;
};

// How a checkpoint is written. fail_after_bytes is a test injection only (tests pass it in; `sft train`
// takes it from the test-only flag --test-fail-checkpoint-write-after-bytes N): once N bytes of this
// checkpoint are written, the save fails like ENOSPC, the file being written left truncated as a full
// disk would leave it.
struct CheckpointWriteOptions {
  std::optional<int64_t> fail_after_bytes;
};

// Multi-process save, driven by trainer/train.cpp: rank 0 calls begin_checkpoint() (a fresh temp dir)
// and tells the others its path; every rank r != 0 calls write_rank_state(tmp, r, ...); a barrier; rank 0
// calls commit_checkpoint(), which writes the replicated weights, optimizer state and trainer_state, hashes
// every file in the temp dir (the ranks' included) into the manifest, and renames. A crash of any rank
// before the rename leaves the previous checkpoint current.
std::filesystem::path begin_checkpoint(const std::filesystem::path& checkpoints_dir, int64_t step);
void write_rank_state(const std::filesystem::path& tmp, int64_t rank, const nlohmann::json& state);
std::filesystem::path commit_checkpoint(const std::filesystem::path& checkpoints_dir, const std::filesystem::path& tmp,
                                        const CheckpointContents& contents, const CheckpointWriteOptions& options = {});
// ranks/rank-XXXXX.json of a verified checkpoint, if that rank wrote one.
std::optional<nlohmann::json> read_rank_state(const std::filesystem::path& dir, int64_t rank);

// Writes checkpoints_dir/step-%08d atomically (see above) and returns its path (begin + commit). Any failure (disk full,
// I/O error) removes the temp dir and throws std::runtime_error naming the file; older checkpoints are
// untouched. options.fail_after_bytes (tests only) injects a full disk.
std::filesystem::path write_checkpoint(const std::filesystem::path& checkpoints_dir, const CheckpointContents& contents,
                                       const CheckpointWriteOptions& options = {});

struct CheckpointEntry {
  int64_t step = 0;
  std::filesystem::path path;
};
// Complete checkpoints (name step-<digits>, manifest.json present and parseable), oldest first.
std::vector<CheckpointEntry> list_complete_checkpoints(const std::filesystem::path& checkpoints_dir);
std::optional<CheckpointEntry> newest_complete_checkpoint(const std::filesystem::path& checkpoints_dir);

// Keeps the newest `keep_last` complete checkpoints (all when keep_last <= 0; never the newest one) and
// removes older ones, incomplete step-* directories and leftover temp dirs of interrupted saves.
void prune_checkpoints(const std::filesystem::path& checkpoints_dir, int64_t keep_last);

// Re-hashes every file the manifest lists. Throws sft::InputError naming the file on a missing manifest,
// a missing, truncated or altered file.
void verify_checkpoint(const std::filesystem::path& dir);

// verify_checkpoint, then reads trainer_state.json, weights and the optimizer shard.
CheckpointContents read_checkpoint(const std::filesystem::path& dir);

// What the run was made from: sha256 of the model's config.json, the tokenizer files, the data files,
// plus the chat template name and data format. Data and model files are identified by content, so
// moving them is fine; editing them is a change.
nlohmann::json run_fingerprint(const Config& config);
// Human-readable differences between a saved and the current fingerprint (empty: same inputs).
std::vector<std::string> fingerprint_differences(const nlohmann::json& saved, const nlohmann::json& current);

// For scoring a checkpoint (`sft eval --checkpoint`): verifies `dir` and copies weights.safetensors into
// the same-named parameters of `model`, which must already carry the run's finetune transform (e.g. LoRA
// applied with the run's spec). Throws sft::InputError naming the file and tensor on any mismatch.
void load_checkpoint_weights(model::CausalLM& model, const std::filesystem::path& dir);

// Lowercase hex sha256 of a file (streamed) and of bytes.
std::string sha256_file(const std::filesystem::path& path);
std::string sha256_hex(const void* data, size_t size);

// CPU (and CUDA, when present) default-generator states as hex strings, and back.
nlohmann::json capture_rng_state();
void restore_rng_state(const nlohmann::json& state, const std::string& label);

}  // namespace sft
