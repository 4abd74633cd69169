// tests/test_util.h: shared test helpers: where golden data lives, temp dirs, running the `sft` binary.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace sft::test {

// Golden data made by scripts/make_golden*.py (env SFT_GOLDEN_DIR, default <source>/.cache/golden).
// Fails the calling test (never skips) when the directory is missing: a missing golden is a broken setup.
std::filesystem::path golden_dir();
std::filesystem::path source_dir();
std::filesystem::path assets_dir();  // tests/assets in the source tree (real tokenizers, see its README)
std::filesystem::path sft_binary();

// A fresh empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string output;  // stdout + stderr
};
// Runs a shell command line, capturing combined output.
RunResult run_command(const std::string& command_line);

void write_text(const std::filesystem::path& path, const std::string& text);
std::string read_text(const std::filesystem::path& path);

// Seeds LibTorch's generator with a fresh random seed (or env SFT_TEST_SEED, to replay a failure) and
// returns it, so random-input tests print what they ran.
uint64_t fresh_seed();

// Document boundaries of a packed stream of documents of `lens` tokens (the attention tests' layout).
struct Packed {
  at::Tensor cu_host;  // int32 [n + 1] on the CPU
  int64_t total = 0, max_len = 0;
};
Packed pack(const std::vector<int32_t>& lens);

// Random attention inputs of `total` packed tokens: q [T, Hq, D], k and v [T, Hkv, D] requiring grad, and
// an output gradient dout [T, Hq, D].
struct AttentionInputs {
  at::Tensor q, k, v, dout;
};
AttentionInputs random_attention_inputs(int64_t total, int64_t hq, int64_t hkv, int64_t d, at::ScalarType dtype);

}  // namespace sft::test
