// tests/test_safetensors.cpp: our safetensors reader/writer: round trips, dtype conversion against
// at::Tensor::to, the writer's layout and failures, and cross-checks with the reference implementation
// (Python `safetensors`). Malformed files and model directories: test_safetensors_bad_input.cpp.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "tests/safetensors_test_util.h"

namespace sft::model {
namespace {
namespace fs = std::filesystem;
using sft::test::TempDir;
using namespace test_support;

// ---- round trip ------------------------------------------------------------------------------------

TEST(SafetensorsRoundTrip, EveryDtypeBitIdenticalWithShapeOrderAndMetadata) {
  TempDir tmp;
  const fs::path path = tmp.path() / "mixed.safetensors";
  const Named tensors = mixed_tensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "12"}};
  write_safetensors(path, tensors, metadata);

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->header().metadata, metadata);
  ASSERT_EQ(file->header().tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    EXPECT_EQ(file->header().tensors[i].name, name) << "tensor order must be kept";
    const StTensorInfo* info = file->find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(to_scalar_type(info->dtype), expected.scalar_type()) << name;
    EXPECT_EQ(info->shape, expected.sizes().vec()) << name;
    expect_bit_identical(file->load(name, expected.scalar_type()), expected, name);
  }
  // the misaligned tensor really was misaligned, so the memcpy path was exercised
  EXPECT_NE((file->header().data_offset + file->find("misaligned.f32")->begin) % 4, 0u);
  EXPECT_EQ(file->find("absent"), nullptr);
}

TEST(SafetensorsRoundTrip, ConversionsEqualTensorTo) {
  TempDir tmp;
  const fs::path path = tmp.path() / "floats.safetensors";
  const at::Tensor f32 = tricky_f32();
  const at::Tensor f16 = (tricky_f32() / 7).to(at::kHalf);
  const at::Tensor bf16 = (tricky_f32() * 3).to(at::kBFloat16);
  // aligned.f32 first (offset 0); misaligned.f32 after 14 bytes of F16
  write_safetensors(path, {{"aligned.f32", f32},
                           {"f16", f16},
                           {"odd", at::ones({7}, at::kHalf)},
                           {"misaligned.f32", f32},
                           {"bf16", bf16}});
  auto file = SafetensorsFile::open(path);
  const std::vector<std::pair<std::string, at::Tensor>> sources = {
      {"aligned.f32", f32}, {"misaligned.f32", f32}, {"f16", f16}, {"bf16", bf16}};
  for (const auto& [name, source] : sources) {
    for (at::ScalarType target : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
      expect_bit_identical(file->load(name, target), source.to(target),
                           name + " as " + c10::toString(target));
    }
  }
  // the rounding cases really round: bf16 of 1+1/256 (a tie) is 1, of 1+3/256 (a tie) is 1+1/64
  at::Tensor as_bf16 = file->load("aligned.f32", at::kBFloat16).to(at::kFloat).reshape({-1});
  EXPECT_EQ(as_bf16[0].item<float>(), 1.0f);
  EXPECT_EQ(as_bf16[1].item<float>(), 1.0f + 1.0f / 64);  // a tie too: to even
  at::Tensor as_f16 = file->load("aligned.f32", at::kHalf).to(at::kFloat).reshape({-1});
  EXPECT_TRUE(std::isinf(as_f16[4].item<float>()));  // 3.4e38 overflows F16
  EXPECT_EQ(as_f16[7].item<float>(), std::numeric_limits<float>::infinity());  // 65520 rounds up to inf
}

TEST(SafetensorsRoundTrip, LoadedTensorOwnsItsMemory) {
  TempDir tmp;
  const fs::path path = tmp.path() / "own.safetensors";
  const at::Tensor original = at::arange(6, at::kFloat);
  write_safetensors(path, {{"w", original}});
  at::Tensor same_dtype, converted;
  {
    auto file = SafetensorsFile::open(path);
    same_dtype = file->load("w", at::kFloat);
    converted = file->load("w", at::kBFloat16);
  }  // mapping released
  same_dtype.add_(1);  // writable, not a view of a read-only mapping
  EXPECT_TRUE(at::equal(same_dtype, original + 1));
  EXPECT_TRUE(at::equal(converted, original.to(at::kBFloat16)));
}

TEST(SafetensorsRoundTrip, EmptyFileWithOnlyMetadata) {
  TempDir tmp;
  const fs::path path = tmp.path() / "none.safetensors";
  write_safetensors(path, {}, {{"k", "v"}});
  auto file = SafetensorsFile::open(path);
  EXPECT_TRUE(file->header().tensors.empty());
  EXPECT_EQ(file->header().metadata.at("k"), "v");
}

// ---- writer ----------------------------------------------------------------------------------------

TEST(SafetensorsWriter, HeaderIsPaddedAlignedAndKeepsOrder) {
  TempDir tmp;
  const fs::path path = tmp.path() / "w.safetensors";
  write_safetensors(path, {{"zeta", at::ones({3}, at::kFloat)}, {"alpha", at::ones({2, 2}, at::kHalf)}},
                    {{"format", "pt"}});
  const std::string bytes = sft::test::read_text(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 3 * 4 + 4 * 2);
  const std::string header = bytes.substr(8, n);
  const size_t close = header.find_last_of('}');
  ASSERT_NE(close, std::string::npos);
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << "padding must be spaces";
  EXPECT_LT(header.size() - close - 1, 8u);
  auto json = nlohmann::ordered_json::parse(header);
  std::vector<std::string> keys;
  for (const auto& item : json.items()) keys.push_back(item.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "zeta", "alpha"}));
  EXPECT_EQ(json["zeta"]["data_offsets"], nlohmann::ordered_json::parse("[0,12]"));
  EXPECT_EQ(json["alpha"]["data_offsets"], nlohmann::ordered_json::parse("[12,20]"));
  EXPECT_EQ(json["alpha"]["dtype"], "F16");
  EXPECT_FALSE(fs::exists(path.string() + ".tmp." + std::to_string(::getpid())));
}

TEST(SafetensorsWriter, BadArgumentsNameThePathAndWriteNothing) {
  TempDir tmp;
  const fs::path path = tmp.path() / "bad.safetensors";
  auto message_of = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "nothing thrown";
  };
  std::string dup = message_of([&] {
    write_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({1})}});
  });
  expect_mentions(dup, {path.string(), "duplicate tensor name 'a'"});
  std::string complex = message_of([&] {
    write_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}});
  });
  expect_mentions(complex, {path.string(), "'c'", "ComplexFloat"});
  EXPECT_FALSE(fs::exists(path));
  std::string no_dir = message_of([&] {
    write_safetensors(tmp.path() / "no" / "such" / "x.safetensors", {{"a", at::ones({1})}});
  });
  expect_mentions(no_dir, {(tmp.path() / "no" / "such" / "x.safetensors").string(), "No such file"});
}

// A failing write (here: the file size limit, standing in for a full disk) names the path and leaves
// neither the target nor the temp file behind.
TEST(SafetensorsWriter, WriteFailureNamesPathAndLeavesNoFile) {
  TempDir tmp;
  const fs::path path = tmp.path() / "big.safetensors";
  struct rlimit saved {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    write_safetensors(path, {{"w", at::zeros({1 << 16}, at::kFloat)}});
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  expect_mentions(message, {path.string(), "write"});
  EXPECT_TRUE(fs::is_empty(tmp.path())) << "partial files left behind";
}

// ---- cross-check with the reference implementation -------------------------------------------------

constexpr const char* kPythonWriter = R"PY(
import json, sys, torch
from safetensors.torch import save_file
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
t = {}
t["f32"] = torch.randn(4, 6, generator=g) * 100
t["f32"][0, :6] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-40, 1.0 + 1.0 / 256])
t["f16"] = (torch.randn(3, 5, generator=g) * 100).half()
t["bf16"] = (torch.randn(2, 3, 7, generator=g) * 1e3).bfloat16()
t["f16_odd"] = torch.randn(7, generator=g).half()
t["f64"] = torch.randn(3, generator=g, dtype=torch.float64)
t["i64"] = torch.tensor([0, -1, 2**62, -2**63], dtype=torch.int64)
t["i32"] = torch.arange(-5, 5, dtype=torch.int32).reshape(2, 5)
t["i16"] = torch.arange(-3, 3, dtype=torch.int16)
t["i8"] = torch.arange(-128, 127, 41, dtype=torch.int8)
t["u8"] = torch.arange(0, 255, 33, dtype=torch.uint8)
t["bool"] = torch.tensor([True, False, True])
t["scalar"] = torch.tensor(3.5)
t["empty"] = torch.zeros(0, 4)
t["arange"] = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1
save_file(t, out + "/ref.safetensors", metadata={"format": "pt", "note": "h\u00e9llo"})
def hexof(x):
    return x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
expect = {}
for name, x in t.items():
    e = {"dtype": str(x.dtype), "shape": list(x.shape), "hex": hexof(x), "as": {}}
    if x.is_floating_point():
        for target in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            e["as"][str(target)] = hexof(x.to(target))
    expect[name] = e
json.dump(expect, open(out + "/ref.json", "w"))
print("WROTE", len(t))
)PY";

TEST(SafetensorsReference, PythonWrittenFileLoadsIdentically) {
  TempDir tmp;
  sft::test::write_text(tmp.path() / "writer.py", kPythonWriter);
  auto run = sft::test::run_command(python() + " " + quoted(tmp.path() / "writer.py") + " " + quoted(tmp.path()));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ASSERT_NE(run.output.find("WROTE 14"), std::string::npos) << run.output;

  auto expect = nlohmann::json::parse(sft::test::read_text(tmp.path() / "ref.json"));
  auto file = SafetensorsFile::open(tmp.path() / "ref.safetensors");
  EXPECT_EQ(file->header().metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "h\xc3\xa9llo"}}));
  ASSERT_EQ(file->header().tensors.size(), 14u);
  int conversions = 0;
  for (const auto& item : expect.items()) {
    const std::string& name = item.key();
    const nlohmann::json& e = item.value();
    SCOPED_TRACE(name);
    const StTensorInfo* info = file->find(name);
    ASSERT_NE(info, nullptr);
    const at::ScalarType dtype = dtype_from_torch_name(e["dtype"].get<std::string>());
    EXPECT_EQ(to_scalar_type(info->dtype), dtype);
    EXPECT_EQ(info->shape, e["shape"].get<std::vector<int64_t>>());
    at::Tensor loaded = file->load(name, dtype);
    EXPECT_EQ(loaded.sizes().vec(), e["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(hex_of(loaded), e["hex"].get<std::string>());
    for (const auto& conversion : e["as"].items()) {
      EXPECT_EQ(hex_of(file->load(name, dtype_from_torch_name(conversion.key()))),
                conversion.value().get<std::string>())
          << "as " << conversion.key();
      ++conversions;
    }
  }
  EXPECT_EQ(conversions, 4 * 8);  // 8 floating tensors, 4 targets each
  at::Tensor arange = at::arange(12, at::kFloat).reshape({3, 4}) * 0.5 - 1;
  EXPECT_TRUE(at::equal(file->load("arange", at::kFloat), arange));
}

constexpr const char* kPythonChecker = R"PY(
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
path, expect_path = sys.argv[1], sys.argv[2]
expect = json.load(open(expect_path))
loaded = load_file(path)
bad = []
if set(loaded) != set(expect["tensors"]):
    bad.append("names %s != %s" % (sorted(loaded), sorted(expect["tensors"])))
for name, e in expect["tensors"].items():
    x = loaded.get(name)
    if x is None:
        continue
    if str(x.dtype) != e["dtype"]: bad.append("%s dtype %s != %s" % (name, x.dtype, e["dtype"]))
    if list(x.shape) != e["shape"]: bad.append("%s shape %s != %s" % (name, list(x.shape), e["shape"]))
    got = x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
    if got != e["hex"]: bad.append("%s bytes differ" % name)
with safe_open(path, framework="pt") as f:
    if f.metadata() != expect["metadata"]: bad.append("metadata %s != %s" % (f.metadata(), expect["metadata"]))
if bad:
    print("MISMATCH", *bad, sep="\n")
    sys.exit(1)
print("OK", len(loaded))
)PY";

TEST(SafetensorsReference, OurFileLoadsIdenticallyInPython) {
  TempDir tmp;
  const Named tensors = mixed_tensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"written_by", "sft.cpp"}};
  write_safetensors(tmp.path() / "ours.safetensors", tensors, metadata);
  nlohmann::json expect;
  expect["metadata"] = metadata;
  for (const auto& [name, t] : tensors) {
    expect["tensors"][name] = {{"dtype", torch_name(t.scalar_type())}, {"shape", t.sizes().vec()},
                               {"hex", hex_of(t)}};
  }
  sft::test::write_text(tmp.path() / "expect.json", expect.dump());
  sft::test::write_text(tmp.path() / "checker.py", kPythonChecker);
  auto run = sft::test::run_command(python() + " " + quoted(tmp.path() / "checker.py") + " " +
                                    quoted(tmp.path() / "ours.safetensors") + " " +
                                    quoted(tmp.path() / "expect.json"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("OK " + std::to_string(tensors.size())), std::string::npos) << run.output;
}

}  // namespace
}  // namespace sft::model
