// tests/bench_tokenizer_main.cpp: the `bench_tokenizer` dev tool, used by scripts/bench_tokenizer.py.
// Encodes every "text" of a JSONL file (a tokenizer golden file) with our tokenizer and prints one JSON
// line: {"examples", "tokens", "seconds", "load_seconds", "mismatches"}. With --check it also compares
// the ids against the file's "ids" and prints the first mismatches to stderr (a debugging aid; the
// real reference test is tests/test_tokenizer.cpp).
// Usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [--repeat N] [--check]
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/tokenizer.h"

namespace {

struct Options {
  std::string dir, corpus;
  int repeat = 3;
  bool check = false;
};

int run(const Options& opt) {
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  // The file as written: the pipeline HF `tokenizers` runs, which is what this benchmarks against.
  auto tok = sft::data::load_tokenizer(opt.dir, sft::data::TokenizerPipeline::kTokenizerJson);
  double load_seconds = std::chrono::duration<double>(clock::now() - t0).count();

  std::ifstream in(opt.corpus, std::ios::binary);
  if (!in) throw sft::InputError(opt.corpus + ": cannot open");
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> want;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    texts.push_back(j.at("text").get<std::string>());
    if (j.contains("ids")) want.push_back(j["ids"].get<std::vector<int32_t>>());
  }

  size_t mismatches = 0;
  if (opt.check) {
    for (size_t i = 0; i < texts.size() && i < want.size(); ++i) {
      auto got = tok->encode_ids(texts[i]);
      if (got == want[i]) continue;
      if (++mismatches <= 10) {
        std::cerr << "MISMATCH " << i << " text=" << nlohmann::json(texts[i]).dump() << "\n  want";
        for (auto id : want[i]) std::cerr << ' ' << id;
        std::cerr << "\n  got ";
        for (auto id : got) std::cerr << ' ' << id;
        std::cerr << '\n';
      }
    }
  }

  // Best of `repeat` passes (the first pass also warms the per-word cache, as real training does).
  double best = 1e30;
  size_t tokens = 0;
  for (int r = 0; r < opt.repeat; ++r) {
    auto start = clock::now();
    size_t n = 0;
    for (const auto& t : texts) n += tok->encode(t).ids.size();
    best = std::min(best, std::chrono::duration<double>(clock::now() - start).count());
    tokens = n;
  }
  std::printf("{\"examples\": %zu, \"tokens\": %zu, \"seconds\": %.6f, \"load_seconds\": %.4f, \"mismatches\": %zu}\n",
              texts.size(), tokens, best, load_seconds, mismatches);
  return mismatches ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--check") {
      opt.check = true;
    } else if (a == "--repeat" && i + 1 < argc) {
      opt.repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 2) {
    std::cerr << "usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [--repeat N] [--check]\n";
    return 2;
  }
  opt.dir = pos[0];
  opt.corpus = pos[1];
  try {
    return run(opt);
  } catch (const sft::InputError& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
