// tests/test_util.h: shared test helpers: where golden data lives, temp dirs, running the `sft` binary.
#pragma once
#include <filesystem>
#include <string>

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

}  // namespace sft::test
