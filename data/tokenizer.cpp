// data/tokenizer.cpp: load_tokenizer (backend choice, special tokens and chat template from
// tokenizer_config.json / special_tokens_map.json / config.json / generation_config.json) and the
// added-token matcher shared by both backends.
#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "common/errors.h"
#include "data/tokenizer_internal.h"
#include "data/unicode.h"

namespace sft::data {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace detail {

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns)
    : tokens_(tokens) {
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : p) {
      auto& next = nodes_[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it != next.end() && it->first == c) {
        node = it->second;
      } else {
        int32_t fresh = static_cast<int32_t>(nodes_.size());
        next.insert(it, {c, fresh});
        nodes_.emplace_back();
        node = fresh;
      }
    }
    nodes_[node].token = static_cast<int32_t>(t);
    first_byte_[static_cast<unsigned char>(p[0])] = true;
  }
}

namespace {
// Code point before byte `pos` / at byte `pos` (for the single_word and strip rules).
uint32_t cp_before(std::string_view s, size_t pos) {
  size_t b = pos;
  do {
    --b;
  } while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && pos - b < 4);
  size_t len;
  return unicode::decode_utf8(s.data() + b, pos - b, &len);
}
size_t cp_len_before(std::string_view s, size_t pos) {
  size_t b = pos;
  do {
    --b;
  } while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && pos - b < 4);
  return pos - b;
}
}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<Split>& out) const {
  out.clear();
  if (text.empty()) return;
  if (empty()) {
    out.push_back({-1, 0, text.size()});
    return;
  }
  size_t start_offset = 0, pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest pattern starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto& next = nodes_[node].next;
      unsigned char c = static_cast<unsigned char>(text[i]);
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it == next.end() || it->first != c) break;
      node = it->second;
      if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = i + 1;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    size_t start = pos, stop = best_end;
    if (tok.single_word) {
      bool start_ok = start == 0 || !unicode::is_word(cp_before(text, start));
      size_t len;
      bool stop_ok = stop == text.size() || !unicode::is_word(unicode::decode_utf8(text.data() + stop, text.size() - stop, &len));
      if (!start_ok || !stop_ok) {
        pos = stop;  // matches do not overlap: the search resumes after this one
        continue;
      }
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0 && unicode::is_white_space(cp_before(text, s))) s -= cp_len_before(text, s);
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      size_t len;
      while (stop < text.size() && unicode::is_white_space(unicode::decode_utf8(text.data() + stop, text.size() - stop, &len))) {
        stop += len;
      }
    }
    if (start_offset < start) out.push_back({-1, start_offset, start});
    out.push_back({tok.id, start, stop});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) out.push_back({-1, start_offset, text.size()});
}

}  // namespace detail

namespace {

// Reads an optional JSON file; InputError naming it when it exists but is malformed.
std::optional<json> read_json(const fs::path& path) {
  if (!fs::is_regular_file(path)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open");
  try {
    json j = json::parse(in);
    if (!j.is_object()) throw InputError(path.string() + ": top level must be an object");
    return j;
  } catch (const json::exception& e) {
    throw InputError(path.string() + ": malformed JSON: " + e.what());
  }
}

// A token given as "text", {"content": "text", ...} or null.
std::optional<std::string> token_text(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw InputError(file.string() + ": " + key + " must be a string, an AddedToken object or null");
}

// eos_token_id may be one id or a list (Llama-3 instruct lists several end-of-turn ids).
std::vector<int32_t> id_list(const json& v, const fs::path& file, const std::string& key) {
  std::vector<int32_t> ids;
  if (v.is_null()) return ids;
  if (v.is_number_integer()) {
    ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const json& x : v) {
      if (!x.is_number_integer()) throw InputError(file.string() + ": " + key + " must hold integers");
      ids.push_back(x.get<int32_t>());
    }
  } else {
    throw InputError(file.string() + ": " + key + " must be an integer or a list of integers");
  }
  return ids;
}

void apply_config(detail::TokenizerBase& tok, const fs::path& dir) {
  SpecialTokens& sp = tok.mutable_specials();
  const fs::path tc_path = dir / "tokenizer_config.json";
  const fs::path stm_path = dir / "special_tokens_map.json";
  const fs::path cfg_path = dir / "config.json";
  const fs::path gen_path = dir / "generation_config.json";
  std::optional<json> tc = read_json(tc_path);
  std::optional<json> stm = read_json(stm_path);
  std::optional<json> cfg = read_json(cfg_path);
  std::optional<json> gen = read_json(gen_path);

  struct Slot {
    const char* key;
    std::optional<int32_t>* id;
    std::string* text;
    const char* config_key;
    int32_t model_id;
  };
  std::string unk_text;
  const Slot slots[] = {
      {"bos_token", &sp.bos, &sp.bos_text, "bos_token_id", tok.model_bos()},
      {"eos_token", &sp.eos, &sp.eos_text, "eos_token_id", tok.model_eos()},
      {"pad_token", &sp.pad, &sp.pad_text, "pad_token_id", tok.model_pad()},
      {"unk_token", &sp.unk, &unk_text, nullptr, tok.model_unk()},
  };
  for (const Slot& s : slots) {
    bool decided = false;  // tokenizer files named it (possibly as null)
    for (const auto* src : {&tc, &stm}) {
      if (decided || !*src || !(*src)->contains(s.key)) continue;
      const fs::path& file = src == &tc ? tc_path : stm_path;
      decided = true;
      std::optional<std::string> text = token_text((**src)[s.key], file, s.key);
      if (!text) break;
      std::optional<int32_t> id = tok.token_to_id(*text);
      if (!id) throw InputError(file.string() + ": " + s.key + " '" + *text + "' is not in the tokenizer vocabulary");
      *s.id = *id;
      *s.text = *text;
    }
    if (!decided && s.config_key && cfg && cfg->contains(s.config_key)) {
      std::vector<int32_t> ids = id_list((*cfg)[s.config_key], cfg_path, s.config_key);
      if (!ids.empty()) *s.id = ids[0];
      decided = !ids.empty();
    }
    if (!decided && s.model_id >= 0) *s.id = s.model_id;
    if (s.id->has_value() && s.text->empty()) {
      if (**s.id < 0 || **s.id >= tok.vocab_size()) {
        throw InputError((decided ? cfg_path : dir).string() + ": " + s.key + " id " + std::to_string(**s.id) +
                         " is outside the vocabulary");
      }
      *s.text = tok.id_to_token(**s.id);
    }
  }

  sp.add_bos = tok.default_add_bos() && sp.bos.has_value();
  sp.add_eos = tok.default_add_eos() && sp.eos.has_value();
  if (tc) {
    if (tc->contains("add_bos_token") && (*tc)["add_bos_token"].is_boolean()) sp.add_bos = (*tc)["add_bos_token"].get<bool>();
    if (tc->contains("add_eos_token") && (*tc)["add_eos_token"].is_boolean()) sp.add_eos = (*tc)["add_eos_token"].get<bool>();
  }
  if (sp.add_bos && !sp.bos) throw InputError(tc_path.string() + ": add_bos_token is true but there is no bos_token");
  if (sp.add_eos && !sp.eos) throw InputError(tc_path.string() + ": add_eos_token is true but there is no eos_token");

  // Every id that ends generation: the tokenizer's eos, then the model's and generation config's lists.
  if (sp.eos) sp.eos_ids.push_back(*sp.eos);
  for (const auto& [j, path] : {std::make_pair(&cfg, cfg_path), std::make_pair(&gen, gen_path)}) {
    if (!*j || !(*j)->contains("eos_token_id")) continue;
    for (int32_t id : id_list((**j)["eos_token_id"], path, "eos_token_id")) {
      if (std::find(sp.eos_ids.begin(), sp.eos_ids.end(), id) == sp.eos_ids.end()) sp.eos_ids.push_back(id);
    }
  }

  // Chat template: a string, or a list of {name, template} (take "default"), or chat_template.jinja.
  if (tc && tc->contains("chat_template") && !(*tc)["chat_template"].is_null()) {
    const json& ct = (*tc)["chat_template"];
    if (ct.is_string()) {
      tok.set_chat_template(ct.get<std::string>());
    } else if (ct.is_array()) {
      for (const json& entry : ct) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
            !entry["template"].is_string()) {
          throw InputError(tc_path.string() + ": chat_template list entries must be {name, template}");
        }
        if (entry["name"] == "default") tok.set_chat_template(entry["template"].get<std::string>());
      }
    } else {
      throw InputError(tc_path.string() + ": chat_template must be a string or a list of {name, template}");
    }
  } else if (fs::is_regular_file(dir / "chat_template.jinja")) {
    std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
    tok.set_chat_template(std::string(std::istreambuf_iterator<char>(in), {}));
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw InputError(dir.string() + ": tokenizer directory does not exist");
  std::unique_ptr<detail::TokenizerBase> tok;
  if (fs::is_regular_file(dir / "tokenizer.json")) {
    tok = detail::load_hf_tokenizer(dir / "tokenizer.json");
  } else if (fs::is_regular_file(dir / "tokenizer.model")) {
    tok = detail::load_sp_tokenizer(dir / "tokenizer.model");
  } else {
    throw InputError(dir.string() + ": no tokenizer.json or tokenizer.model in this directory");
  }
  apply_config(*tok, dir);
  return tok;
}

}  // namespace sft::data
