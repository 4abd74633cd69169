// tests/test_named_tensors.cpp: model/named_tensors.h, the one loader of named tensors: each error kind
// (missing, mis-shaped, unexpected), all of them reported together naming the file, ignorable names,
// nothing copied on error, and the capped listing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/errors.h"
#include "model/named_tensors.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

namespace sft {
namespace {

using model::NamedTensorSource;
using model::TensorMatchRules;
using model::TensorSlot;

std::string load_error(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                       const TensorMatchRules& rules = {}) {
  try {
    model::load_named_tensors(source, slots, rules);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected sft::InputError";
  return "";
}

void expect_contains(const std::string& text, const std::string& needle) {
  EXPECT_NE(text.find(needle), std::string::npos) << "message lacks '" << needle << "': " << text;
}

TEST(NamedTensors, LoadsEveryTensorConvertedToTheDestinationDtype) {
  test::TempDir tmp;
  const auto path = tmp.path() / "w.safetensors";
  const at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3}), b = at::tensor({1.5, -2.0}, at::kDouble);
  model::write_safetensors(path, {{"a", a}, {"b", b}});
  auto file = model::SafetensorsFile::open(path);
  at::Tensor dest_a = at::zeros({2, 3}, at::kFloat), dest_b = at::zeros({2}, at::kFloat);
  model::load_named_tensors(NamedTensorSource::of(*file), {{"a", dest_a}, {"b", dest_b}});
  EXPECT_TRUE(at::equal(dest_a, a));
  EXPECT_TRUE(at::equal(dest_b, b.to(at::kFloat)));
}

TEST(NamedTensors, MissingTensorNamesTheSourceAndTheExpectedShape) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {{"a", at::ones({2})}};
  const std::string message = load_error(NamedTensorSource::of(tensors, "ckpt/w.safetensors"),
                                         {{"a", at::zeros({2})}, {"b", at::zeros({4, 5})}});
  expect_contains(message, "ckpt/w.safetensors: does not match the model:");
  expect_contains(message, "missing tensor 'b' (expected shape [4, 5])");
}

TEST(NamedTensors, MisshapedTensorNamesTheFileAndBothShapes) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {{"a", at::ones({3, 2})}};
  TensorMatchRules rules;
  rules.shape_hint = "(another model?)";
  const std::string message = load_error(NamedTensorSource::of(tensors, "x.safetensors"), {{"a", at::zeros({2, 3})}}, rules);
  expect_contains(message, "tensor 'a' in x.safetensors has shape [3, 2], expected [2, 3] (another model?)");
}

TEST(NamedTensors, UnexpectedTensorNamesTheFileUnlessIgnorable) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"a", at::ones({2})}, {"extra", at::ones({1})}, {"rotary.inv_freq", at::ones({1})}};
  TensorMatchRules rules;
  rules.unexpected_hint = "(other targets?)";
  rules.ignorable = [](const std::string& name) { return name == "rotary.inv_freq"; };
  const std::string message = load_error(NamedTensorSource::of(tensors, "x.safetensors"), {{"a", at::zeros({2})}}, rules);
  expect_contains(message, "unexpected tensor 'extra' in x.safetensors (other targets?)");
  EXPECT_EQ(message.find("inv_freq"), std::string::npos) << message;
}

TEST(NamedTensors, EveryProblemIsReportedTogetherAndNothingIsCopied) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"good", at::ones({2})}, {"wrong", at::ones({3})}, {"stray", at::ones({1})}};
  at::Tensor good = at::zeros({2});
  const std::vector<TensorSlot> slots = {{"good", good}, {"wrong", at::zeros({4})}, {"absent", at::zeros({1})}};
  const NamedTensorSource source = NamedTensorSource::of(tensors, "f.safetensors");
  const std::vector<std::string> problems = model::named_tensor_problems(source, slots, {});
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0], "missing tensor 'absent' (expected shape [1])");
  EXPECT_EQ(problems[1], "tensor 'wrong' in f.safetensors has shape [3], expected [4]");
  EXPECT_EQ(problems[2], "unexpected tensor 'stray' in f.safetensors");
  load_error(source, slots);
  EXPECT_EQ(good.abs().sum().item<float>(), 0.0f) << "a failed load must copy nothing";
}

TEST(NamedTensors, ShardedDirectoryNamesTheShardOfEachTensor) {
  const auto dir = test::golden_dir() / "models" / "llama_sharded";
  const model::CheckpointFiles files = model::CheckpointFiles::open(dir);
  const std::string first = files.tensor_names().front();
  const at::IntArrayRef shape(files.info(first).shape);
  std::vector<int64_t> wrong = shape.vec();
  wrong[0] += 1;
  const std::vector<std::string> problems =
      model::named_tensor_problems(NamedTensorSource::of(files, dir.string()), {{first, at::zeros(wrong)}}, {});
  ASSERT_FALSE(problems.empty());
  expect_contains(problems[0], "tensor '" + first + "' in " + files.file_of(first) + " has shape");
  EXPECT_NE(problems[1].find("unexpected tensor"), std::string::npos) << "the other tensors are unexpected";
}

TEST(NamedTensors, LongListsAreCappedWithACount) {
  std::vector<TensorSlot> slots;
  for (int i = 0; i < 25; ++i) slots.push_back({"t" + std::to_string(i), at::zeros({1})});
  const std::vector<std::pair<std::string, at::Tensor>> none;
  const std::vector<std::string> problems = model::named_tensor_problems(NamedTensorSource::of(none, "f"), slots, {});
  ASSERT_EQ(problems.size(), 21u);
  EXPECT_EQ(problems.back(), "... and 5 more missing tensors");
}

}  // namespace
}  // namespace sft
