// tests/test_safetensors.cpp: our safetensors reader/writer: round trips, dtype conversion against
// at::Tensor::to, cross-checks with the reference implementation (Python `safetensors`), every kind of
// malformed file (each must be an sft::InputError naming the file and the problem), and model
// directories (single file, sharded index, shard paths escaping the directory).
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

namespace sft::model {
namespace {
namespace fs = std::filesystem;
using sft::test::TempDir;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// ---- helpers ---------------------------------------------------------------------------------------

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A hand-made file: 8-byte length (the header's own unless `claimed_length`), header text, data bytes.
fs::path write_raw(const fs::path& path, const std::string& header, const std::string& data,
                   std::optional<uint64_t> claimed_length = std::nullopt) {
  sft::test::write_text(path, le64(claimed_length.value_or(header.size())) + header + data);
  return path;
}

// A header entry: "name":{"dtype":..,"shape":..,"data_offsets":[b,e]}
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Runs `fn`, which must throw sft::InputError; returns its message (empty, with a failure, otherwise).
std::string input_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected sft::InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected sft::InputError, nothing was thrown";
  return "";
}

// The message must name every fragment (the file, the tensor, the problem).
void expect_mentions(const std::string& message, std::initializer_list<std::string> fragments) {
  for (const std::string& fragment : fragments) {
    EXPECT_NE(message.find(fragment), std::string::npos) << "message lacks \"" << fragment << "\": " << message;
  }
}

// Opening `path` must fail with an InputError naming the file and every fragment.
void expect_open_fails(const fs::path& path, std::initializer_list<std::string> fragments) {
  std::string message = input_error_of([&] { SafetensorsFile::open(path); });
  expect_mentions(message, {path.string()});
  expect_mentions(message, fragments);
}

std::string hex_of(const at::Tensor& tensor) {
  at::Tensor t = tensor.contiguous();
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[p[i] >> 4];
    out += kDigits[p[i] & 15];
  }
  return out;
}

// Same dtype, same shape, same bytes (NaN payloads and -0.0 included).
void expect_bit_identical(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_EQ(hex_of(actual), hex_of(expected)) << what;
}

at::ScalarType dtype_from_torch_name(const std::string& name) {
  static const std::map<std::string, at::ScalarType> kNames = {
      {"torch.float32", at::kFloat}, {"torch.float16", at::kHalf},  {"torch.bfloat16", at::kBFloat16},
      {"torch.float64", at::kDouble}, {"torch.int64", at::kLong},   {"torch.int32", at::kInt},
      {"torch.int16", at::kShort},   {"torch.int8", at::kChar},     {"torch.uint8", at::kByte},
      {"torch.bool", at::kBool}};
  auto it = kNames.find(name);
  if (it == kNames.end()) throw std::runtime_error("unexpected torch dtype " + name);
  return it->second;
}

std::string torch_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: throw std::runtime_error("unexpected dtype");
  }
}

std::string python() { return (sft::test::source_dir() / ".venv" / "bin" / "python").string(); }
std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// F32 values that exercise rounding to 16-bit floats: ties, overflow, subnormals, NaN, -0.
at::Tensor tricky_f32() {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> values = {1.0f + 1.0f / 256,  1.0f + 3.0f / 256, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                               3.4e38f,  -3.4e38f, 65504.0f, 65520.0f, 1e-8f, 6e-8f, 1e-40f,
                               -0.0f,    inf,      -inf,     nan,      0.1f,  -123.456f};
  auto gen = at::detail::createCPUGenerator(7);
  at::Tensor random = at::randn({3, 5}, gen, at::kFloat) * 1000;
  return at::cat({at::tensor(values, at::kFloat), random.reshape({-1})}).reshape({4, 8});
}

// Tensors of every supported dtype, in an order that leaves some of them misaligned in the data section.
Named mixed_tensors() {
  auto gen = at::detail::createCPUGenerator(42);
  Named t;
  t.emplace_back("odd.f16", at::randn({7}, gen, at::kFloat).to(at::kHalf));  // 14 bytes: what follows is misaligned
  t.emplace_back("misaligned.f32", tricky_f32());
  t.emplace_back("bf16", (at::randn({2, 3, 4}, gen, at::kFloat) * 300).to(at::kBFloat16));
  t.emplace_back("transposed.f32", at::randn({3, 5}, gen, at::kFloat).t());  // non-contiguous input
  t.emplace_back("scalar", at::scalar_tensor(3.25, at::kFloat));
  t.emplace_back("empty", at::zeros({0, 3}, at::kFloat));
  t.emplace_back("f64", at::randn({5}, gen, at::kDouble));
  t.emplace_back("step", at::tensor(std::vector<int64_t>{123456789012345LL, -1, 0}, at::kLong));
  t.emplace_back("i32", at::arange(-6, 6, at::kInt).reshape({3, 4}));
  t.emplace_back("i16", at::arange(-3, 4, at::kShort));
  t.emplace_back("i8", at::arange(-128, 127, 37, at::kChar));
  t.emplace_back("u8", at::arange(0, 255, 51, at::kByte));
  t.emplace_back("mask", at::tensor(std::vector<int64_t>{1, 0, 1}, at::kLong).to(at::kBool));
  return t;
}

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

// ---- malformed files -------------------------------------------------------------------------------

// A valid two-tensor layout the bad-input tests start from: a F32[2] at [0,8], b F32[1] at [8,12].
const std::string kGoodHeader =
    "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 8, 12) + "}";
const std::string kGoodData(12, '\x01');

TEST(SafetensorsBadInput, HandMadeBaselineIsValid) {
  TempDir tmp;
  auto file = SafetensorsFile::open(write_raw(tmp.path() / "ok.safetensors", kGoodHeader, kGoodData));
  ASSERT_EQ(file->header().tensors.size(), 2u);
  EXPECT_EQ(file->header().data_offset, 8 + kGoodHeader.size());
  EXPECT_EQ(file->load("b", at::kFloat).view(at::kInt).item<int32_t>(), 0x01010101);
}

TEST(SafetensorsBadInput, JsonKeyOrderDoesNotMatterOnlyOffsets) {
  TempDir tmp;
  // "z" comes first in the data section although JSON lists it second and names sort it last
  const std::string header = "{" + entry("a", "F32", "[2]", 4, 12) + "," + entry("z", "F32", "[]", 0, 4) + "}";
  std::string data(12, '\0');
  data[0] = 0x01;
  auto file = SafetensorsFile::open(write_raw(tmp.path() / "order.safetensors", header, data));
  EXPECT_EQ(file->header().tensors[0].name, "z");
  EXPECT_EQ(file->load("z", at::kFloat).view(at::kInt).item<int32_t>(), 1);
}

TEST(SafetensorsBadInput, TruncatedFile) {
  TempDir tmp;
  const fs::path path = tmp.path() / "cut.safetensors";
  write_safetensors(path, {{"w", at::ones({4, 4})}, {"last", at::ones({8})}});
  fs::resize_file(path, fs::file_size(path) - 5);
  expect_open_fails(path, {"tensor 'last'", "past the end of the data section", "truncated"});
}

TEST(SafetensorsBadInput, FileTooShortForLength) {
  TempDir tmp;
  const fs::path path = tmp.path() / "tiny.safetensors";
  sft::test::write_text(path, "{}\n");
  expect_open_fails(path, {"3 bytes", "too short"});
  const fs::path empty = tmp.path() / "empty.safetensors";
  sft::test::write_text(empty, "");
  expect_open_fails(empty, {"0 bytes", "too short"});
}

TEST(SafetensorsBadInput, HeaderLengthPastEndOfFile) {
  TempDir tmp;
  const fs::path path =
      write_raw(tmp.path() / "long.safetensors", kGoodHeader, kGoodData, kGoodHeader.size() + 100);
  expect_open_fails(path, {"header length " + std::to_string(kGoodHeader.size() + 100),
                           "past the end of the file"});
}

TEST(SafetensorsBadInput, OversizedHeaderLength) {
  TempDir tmp;
  const fs::path path = write_raw(tmp.path() / "huge.safetensors", kGoodHeader, kGoodData, 200'000'000);
  expect_open_fails(path, {"header length 200000000", "exceeds the limit of 100000000 bytes"});
  const fs::path max = write_raw(tmp.path() / "max.safetensors", kGoodHeader, kGoodData,
                                 std::numeric_limits<uint64_t>::max());
  expect_open_fails(max, {"header length 18446744073709551615", "exceeds the limit"});
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 4, 8) + "}";
  const fs::path path = write_raw(tmp.path() / "overlap.safetensors", header, std::string(8, '\0'));
  expect_open_fails(path, {"tensor 'b'", "[4, 8]", "overlap tensor 'a'"});
}

TEST(SafetensorsBadInput, EndPastDataSection) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 12, 16) + "}";
  const fs::path path = write_raw(tmp.path() / "range.safetensors", header, std::string(12, '\0'));
  expect_open_fails(path, {"tensor 'b'", "[12, 16]", "past the end of the data section (12 bytes"});
}

TEST(SafetensorsBadInput, BeginAfterEnd) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[1]", 4, 0) + "}";
  const fs::path path = write_raw(tmp.path() / "reversed.safetensors", header, std::string(4, '\0'));
  expect_open_fails(path, {"tensor 'a'", "begin > end"});
}

TEST(SafetensorsBadInput, HoleBetweenTensors) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 12, 16) + "}";
  const fs::path path = write_raw(tmp.path() / "hole.safetensors", header, std::string(16, '\0'));
  expect_open_fails(path, {"tensor 'b'", "hole of 4 bytes", "'a'"});
  const std::string late_start = "{" + entry("a", "F32", "[1]", 4, 8) + "}";
  const fs::path start = write_raw(tmp.path() / "start.safetensors", late_start, std::string(8, '\0'));
  expect_open_fails(start, {"tensor 'a'", "hole of 4 bytes", "start of the data section"});
}

TEST(SafetensorsBadInput, TrailingBytes) {
  TempDir tmp;
  const fs::path path = write_raw(tmp.path() / "trail.safetensors", kGoodHeader, kGoodData + "XYZW");
  expect_open_fails(path, {"4 trailing bytes", "'b'"});
}

TEST(SafetensorsBadInput, UnknownDtype) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F7", "[1]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "f7.safetensors", header, std::string(4, '\0')),
                    {"tensor 'w'", "unknown dtype 'F7'", "BF16"});
  const std::string fp8 = "{" + entry("w", "F8_E4M3", "[4]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "fp8.safetensors", fp8, std::string(4, '\0')),
                    {"tensor 'w'", "unsupported dtype 'F8_E4M3'"});
}

TEST(SafetensorsBadInput, ShapeOverflow) {
  TempDir tmp;
  const std::string elements = "{" + entry("w", "F32", "[1099511627776,1099511627776]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "numel.safetensors", elements, std::string(4, '\0')),
                    {"tensor 'w'", "overflows 64-bit element count"});
  // 2^62 elements fit, 2^62 * 4 bytes do not
  const std::string bytes = "{" + entry("w", "F32", "[4611686018427387904]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "bytes.safetensors", bytes, std::string(4, '\0')),
                    {"tensor 'w'", "overflows 64-bit byte count"});
  const std::string dim = "{" + entry("w", "F32", "[9223372036854775808,0]", 0, 0) + "}";
  expect_open_fails(write_raw(tmp.path() / "dim.safetensors", dim, ""), {"tensor 'w'", "too large"});
}

TEST(SafetensorsBadInput, NumelBytesMismatch) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F32", "[3]", 0, 8) + "}";
  expect_open_fails(write_raw(tmp.path() / "mismatch.safetensors", header, std::string(8, '\0')),
                    {"tensor 'w'", "span 8 bytes", "needs 12 bytes"});
}

TEST(SafetensorsBadInput, InvalidJson) {
  TempDir tmp;
  expect_open_fails(write_raw(tmp.path() / "cut.safetensors", "{\"a\": {\"dtype\"", ""),
                    {"header is not valid JSON"});
  expect_open_fails(write_raw(tmp.path() / "array.safetensors", "[1, 2]  ", ""), {"not a JSON object"});
  expect_open_fails(write_raw(tmp.path() / "utf8.safetensors", "{\"\xff\":{}}", ""),
                    {"header is not valid JSON"});
  expect_open_fails(write_raw(tmp.path() / "entry.safetensors", "{\"w\": 5}", ""),
                    {"tensor 'w'", "not a JSON object"});
  expect_open_fails(write_raw(tmp.path() / "neg.safetensors", "{" + entry("w", "F32", "[-1]", 0, 0) + "}", ""),
                    {"tensor 'w'", "non-negative integers"});
  expect_open_fails(write_raw(tmp.path() / "nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[]}}", ""),
                    {"tensor 'w'", "missing 'data_offsets'"});
}

TEST(SafetensorsBadInput, DeeplyNestedJsonStopsEarly) {
  TempDir tmp;
  const size_t depth = 1'000'000;  // would build a huge tree (and recurse when printed) if accepted
  const std::string header = "{\"w\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  expect_open_fails(write_raw(tmp.path() / "deep.safetensors", header, ""), {"nests deeper than 16 levels"});
}

TEST(SafetensorsBadInput, MetadataMustMapStringsToStrings) {
  TempDir tmp;
  expect_open_fails(write_raw(tmp.path() / "meta.safetensors", "{\"__metadata__\":{\"step\":12}}", ""),
                    {"__metadata__", "'step'", "not a string"});
  expect_open_fails(write_raw(tmp.path() / "meta2.safetensors", "{\"__metadata__\":[\"x\"]}", ""),
                    {"__metadata__ is not a JSON object"});
}

TEST(SafetensorsBadInput, DuplicateTensorNames) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}";
  expect_open_fails(write_raw(tmp.path() / "dup.safetensors", header, std::string(8, '\0')),
                    {"duplicate tensor name 'w'"});
  const std::string key = "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,4]}}";
  expect_open_fails(write_raw(tmp.path() / "dupkey.safetensors", key, std::string(4, '\0')),
                    {"'w'", "duplicate key 'dtype'"});
}

TEST(SafetensorsBadInput, MissingFileAndAbsentTensor) {
  TempDir tmp;
  const fs::path missing = tmp.path() / "missing.safetensors";
  expect_open_fails(missing, {"cannot open"});
  const fs::path path = write_raw(tmp.path() / "ok.safetensors", kGoodHeader, kGoodData);
  auto file = SafetensorsFile::open(path);
  expect_mentions(input_error_of([&] { file->load("nope", at::kFloat); }), {path.string(), "'nope'"});
}

TEST(SafetensorsBadInput, IntegerTensorOnlyLoadsAsItself) {
  TempDir tmp;
  const fs::path path = tmp.path() / "int.safetensors";
  write_safetensors(path, {{"step", at::tensor(std::vector<int64_t>{5}, at::kLong)}});
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->load("step", at::kLong).item<int64_t>(), 5);
  expect_mentions(input_error_of([&] { file->load("step", at::kFloat); }),
                  {path.string(), "'step'", "I64", "Float"});
}

// ---- model directories -----------------------------------------------------------------------------

struct ShardedDir {
  TempDir tmp;
  fs::path dir() const { return tmp.path(); }
  fs::path index() const { return tmp.path() / "model.safetensors.index.json"; }
  void write_index(const nlohmann::json& weight_map) const {
    nlohmann::json root = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    sft::test::write_text(index(), root.dump(2));
  }
  // two valid shards: s1 holds a, b; s2 holds c
  ShardedDir() {
    write_safetensors(dir() / "s1.safetensors", {{"b", at::full({2}, 2.0)}, {"a", at::full({3}, 1.0)}});
    write_safetensors(dir() / "s2.safetensors", {{"c", at::full({1, 2}, 3.0, at::kDouble)}});
  }
};

void expect_checkpoint_fails(const fs::path& dir, std::initializer_list<std::string> fragments) {
  expect_mentions(input_error_of([&] { CheckpointFiles::open(dir); }), fragments);
}

TEST(SafetensorsCheckpoint, SingleFile) {
  TempDir tmp;
  write_safetensors(tmp.path() / "model.safetensors", {{"z", at::ones({2})}, {"y", at::zeros({1}, at::kHalf)}});
  auto files = CheckpointFiles::open(tmp.path());
  EXPECT_EQ(files.tensor_names(), (std::vector<std::string>{"y", "z"}));
  EXPECT_TRUE(files.contains("z"));
  EXPECT_FALSE(files.contains("x"));
  EXPECT_EQ(files.info("y").dtype, StDType::F16);
  EXPECT_EQ(files.file_of("z"), (tmp.path() / "model.safetensors").string());
  EXPECT_TRUE(at::equal(files.load("y", at::kFloat), at::zeros({1})));
  expect_mentions(input_error_of([&] { files.load("x", at::kFloat); }), {tmp.path().string(), "'x'"});
  expect_mentions(input_error_of([&] { files.info("x"); }), {"'x'"});
}

TEST(SafetensorsCheckpoint, ShardedIndex) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  auto files = CheckpointFiles::open(d.dir());
  EXPECT_EQ(files.tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(files.file_of("a"), (d.dir() / "s1.safetensors").string());
  EXPECT_EQ(files.file_of("c"), (d.dir() / "s2.safetensors").string());
  EXPECT_TRUE(at::equal(files.load("a", at::kFloat), at::full({3}, 1.0)));
  EXPECT_TRUE(at::equal(files.load("c", at::kBFloat16), at::full({1, 2}, 3.0, at::kBFloat16)));
  EXPECT_EQ(files.info("c").shape, (std::vector<int64_t>{1, 2}));
}

TEST(SafetensorsCheckpoint, SymlinkInsideDirectoryIsAllowed) {
  ShardedDir d;
  fs::create_symlink("s2.safetensors", d.dir() / "link.safetensors");
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "link.safetensors"}});
  auto files = CheckpointFiles::open(d.dir());
  EXPECT_TRUE(at::equal(files.load("c", at::kDouble), at::full({1, 2}, 3.0, at::kDouble)));
}

TEST(SafetensorsCheckpoint, ShardAbsolutePathRejected) {
  ShardedDir d;
  TempDir outside;
  write_safetensors(outside.path() / "x.safetensors", {{"c", at::ones({1})}});
  const std::string absolute = (outside.path() / "x.safetensors").string();
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", absolute}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'" + absolute + "'", "'c'", "absolute path"});
}

TEST(SafetensorsCheckpoint, ShardDotDotRejected) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"c", "../" + d.dir().filename().string() + "/s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'c'", "path separator"});
  d.write_index({{"a", "s1.safetensors"}, {"c", ".."}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard '..'", "not allowed"});
}

TEST(SafetensorsCheckpoint, ShardPathSeparatorRejected) {
  ShardedDir d;
  fs::create_directories(d.dir() / "sub");
  write_safetensors(d.dir() / "sub" / "s3.safetensors", {{"c", at::ones({1})}});
  d.write_index({{"a", "s1.safetensors"}, {"c", "sub/s3.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 'sub/s3.safetensors'", "path separator"});
}

TEST(SafetensorsCheckpoint, ShardSymlinkOutsideRejected) {
  ShardedDir d;
  TempDir outside;
  write_safetensors(outside.path() / "x.safetensors", {{"c", at::ones({1})}});
  fs::create_symlink(outside.path() / "x.safetensors", d.dir() / "evil.safetensors");
  d.write_index({{"a", "s1.safetensors"}, {"c", "evil.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 'evil.safetensors'", "symlink leading outside"});
}

TEST(SafetensorsCheckpoint, MissingShardFile) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"c", "s9.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 's9.safetensors'", "'c'", "missing"});
}

TEST(SafetensorsCheckpoint, TensorAbsentFromItsShard) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"zz", "s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "tensor 'zz'", "absent from",
                                    (d.dir() / "s2.safetensors").string()});
}

TEST(SafetensorsCheckpoint, TensorInTwoShards) {
  ShardedDir d;
  write_safetensors(d.dir() / "s3.safetensors", {{"a", at::ones({3})}});
  d.write_index({{"a", "s1.safetensors"}, {"c", "s3.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "tensor 'a'", "present in two shards"});
}

TEST(SafetensorsCheckpoint, NoWeightFiles) {
  TempDir tmp;
  expect_checkpoint_fails(tmp.path(), {tmp.path().string(), "neither model.safetensors nor"});
  expect_checkpoint_fails(tmp.path() / "nope", {(tmp.path() / "nope").string(), "not a directory"});
}

TEST(SafetensorsCheckpoint, BadIndexFile) {
  ShardedDir d;
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": ");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "invalid JSON"});
  sft::test::write_text(d.index(), "{\"metadata\": {}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "missing 'weight_map'"});
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s2.safetensors\"}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "duplicate key 'a'"});
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": 7}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'a'", "not a file name"});
}

TEST(SafetensorsCheckpoint, BadShardNamesTheShard) {
  ShardedDir d;
  sft::test::write_text(d.dir() / "s2.safetensors", "garbage-garbage");
  d.write_index({{"a", "s1.safetensors"}, {"c", "s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {(d.dir() / "s2.safetensors").string(), "header length"});
}

}  // namespace
}  // namespace sft::model
