// tests/test_util.cpp: implementation of the shared test helpers.
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace sft::test {
namespace fs = std::filesystem;

fs::path source_dir() { return fs::path(SFT_SOURCE_DIR); }

fs::path golden_dir() {
  const char* env = std::getenv("SFT_GOLDEN_DIR");
  fs::path dir = env && *env ? fs::path(env) : source_dir() / ".cache" / "golden";
  if (!fs::is_directory(dir)) {
    throw std::runtime_error("golden data missing at " + dir.string() +
                             ": run `bash scripts/test.sh` (it runs scripts/make_golden.py)");
  }
  return dir;
}

fs::path assets_dir() { return source_dir() / "tests" / "assets"; }

fs::path sft_binary() {
  const char* env = std::getenv("SFT_BINARY");
  return env && *env ? fs::path(env) : fs::path(SFT_BINARY);
}

TempDir::TempDir() {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path candidate = fs::temp_directory_path() / ("sft_test_" + std::to_string(rd()));
    if (fs::create_directory(candidate)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a temp dir");
}

TempDir::~TempDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

RunResult run_command(const std::string& command_line) {
  RunResult result;
  std::string full = command_line + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed: " + command_line);
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

uint64_t fresh_seed() {
  const char* env = std::getenv("SFT_TEST_SEED");
  const uint64_t seed = env && *env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  at::manual_seed(seed);
  return seed;
}

Packed pack(const std::vector<int32_t>& lens) {
  std::vector<int32_t> off{0};
  Packed p;
  for (int32_t len : lens) {
    off.push_back(off.back() + len);
    p.max_len = std::max<int64_t>(p.max_len, len);
  }
  p.total = off.back();
  p.cu_host = at::tensor(off, at::kInt);
  return p;
}

AttentionInputs random_attention_inputs(int64_t total, int64_t hq, int64_t hkv, int64_t d, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  return {at::randn({total, hq, d}, opts).requires_grad_(true), at::randn({total, hkv, d}, opts).requires_grad_(true),
          at::randn({total, hkv, d}, opts).requires_grad_(true), at::randn({total, hq, d}, opts)};
}

}  // namespace sft::test
