// tests/data_test_util.h: helpers shared by the data tests (test_data*.cpp): the fixture directory, a
// byte-level tokenizer whose ids can be checked by hand, conversation and template shorthands, and the
// InputError catcher.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "data/formats.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace sft::data::test_support {


inline std::filesystem::path fixture(const std::string& name) { return test::source_dir() / "tests" / "data" / name; }

// A byte-level tokenizer with five special tokens, so masks and lengths can be checked by hand:
// ids 0 <pad>, 1 <s>, 2 </s>, 3 <|im_start|>, 4 <|im_end|>; byte b -> 10 + b.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(bool add_bos = true, std::optional<int32_t> pad = 0) {
    specials_.bos = 1;
    specials_.eos = 2;
    specials_.pad = pad;
    specials_.bos_text = "<s>";
    specials_.eos_text = "</s>";
    specials_.pad_text = pad ? kSpecials[*pad] : "";
    specials_.add_bos = add_bos;
  }
  void set_chat_template(std::optional<std::string> t) { chat_template_ = std::move(t); }

  Encoding encode(std::string_view text) const override {
    Encoding e;
    size_t i = 0;
    while (i < text.size()) {
      bool matched = false;
      for (int32_t id = 0; id < 5; ++id) {
        std::string_view s = kSpecials[id];
        if (text.substr(i, s.size()) == s) {
          e.ids.push_back(id);
          e.offsets.push_back({i, i + s.size()});
          i += s.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      e.ids.push_back(10 + static_cast<unsigned char>(text[i]));
      e.offsets.push_back({i, i + 1});
      ++i;
    }
    return e;
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 5) {
        if (!skip_special) out += kSpecials[id];
      } else {
        out += static_cast<char>(id - 10);
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return 266; }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (int32_t id = 0; id < 5; ++id) {
      if (token == kSpecials[id]) return id;
    }
    if (token.size() == 1) return 10 + static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }
  std::string id_to_token(int32_t id) const override { return decode({id}); }
  bool is_special(int32_t id) const override { return id < 5; }

 private:
  static constexpr const char* kSpecials[5] = {"<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"};
};

inline Conversation convo(std::vector<std::pair<Role, std::string>> turns, std::string source = "mem:1") {
  Conversation c;
  for (auto& [role, text] : turns) c.messages.push_back({role, text});
  c.source = std::move(source);
  return c;
}

inline ChatTemplate named(const std::string& name) { return resolve_template(name, std::nullopt, "unused"); }

inline std::string expect_input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected sft::InputError";
  return "";
}


}  // namespace sft::data::test_support
