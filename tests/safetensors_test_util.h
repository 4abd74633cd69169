// tests/safetensors_test_util.h: helpers shared by the safetensors tests (test_safetensors*.cpp): raw
// file construction, error-message checks, bit-level comparison, dtype names and the tensor sets.
#pragma once
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

namespace sft::model::test_support {
namespace fs = std::filesystem;
using sft::test::TempDir;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// ---- helpers ---------------------------------------------------------------------------------------

inline std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A hand-made file: 8-byte length (the header's own unless `claimed_length`), header text, data bytes.
inline fs::path write_raw(const fs::path& path, const std::string& header, const std::string& data,
                   std::optional<uint64_t> claimed_length = std::nullopt) {
  sft::test::write_text(path, le64(claimed_length.value_or(header.size())) + header + data);
  return path;
}

// A header entry: "name":{"dtype":..,"shape":..,"data_offsets":[b,e]}
inline std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Runs `fn`, which must throw sft::InputError; returns its message (empty, with a failure, otherwise).
inline std::string input_error_of(const std::function<void()>& fn) {
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
inline void expect_mentions(const std::string& message, std::initializer_list<std::string> fragments) {
  for (const std::string& fragment : fragments) {
    EXPECT_NE(message.find(fragment), std::string::npos) << "message lacks \"" << fragment << "\": " << message;
  }
}

// Opening `path` must fail with an InputError naming the file and every fragment.
inline void expect_open_fails(const fs::path& path, std::initializer_list<std::string> fragments) {
  std::string message = input_error_of([&] { SafetensorsFile::open(path); });
  expect_mentions(message, {path.string()});
  expect_mentions(message, fragments);
}

inline std::string hex_of(const at::Tensor& tensor) {
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
inline void expect_bit_identical(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_EQ(hex_of(actual), hex_of(expected)) << what;
}

inline at::ScalarType dtype_from_torch_name(const std::string& name) {
  static const std::map<std::string, at::ScalarType> kNames = {
      {"torch.float32", at::kFloat}, {"torch.float16", at::kHalf},  {"torch.bfloat16", at::kBFloat16},
      {"torch.float64", at::kDouble}, {"torch.int64", at::kLong},   {"torch.int32", at::kInt},
      {"torch.int16", at::kShort},   {"torch.int8", at::kChar},     {"torch.uint8", at::kByte},
      {"torch.bool", at::kBool}};
  auto it = kNames.find(name);
  if (it == kNames.end()) throw std::runtime_error("unexpected torch dtype " + name);
  return it->second;
}

inline std::string torch_name(at::ScalarType dtype) {
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

inline std::string python() { return (sft::test::source_dir() / ".venv" / "bin" / "python").string(); }
inline std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// F32 values that exercise rounding to 16-bit floats: ties, overflow, subnormals, NaN, -0.
inline at::Tensor tricky_f32() {
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
inline Named mixed_tensors() {
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


}  // namespace sft::model::test_support
