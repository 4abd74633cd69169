// data/tokenizer.cpp: load_tokenizer (backend choice, special tokens and chat template from
// tokenizer_config.json / special_tokens_map.json / config.json / generation_config.json) and, for
// tokenizer.json, the rebuild transformers' tokenizer classes make of it.
#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "common/errors.h"
#include "data/tokenizer_internal.h"

namespace sft::data {
namespace fs = std::filesystem;
using json = nlohmann::json;

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

// The JSON files beside the tokenizer, each absent or an object.
struct ConfigFiles {
  fs::path tc_path, stm_path, cfg_path, gen_path;
  std::optional<json> tc, stm, cfg, gen;  // tokenizer_config, special_tokens_map, config, generation_config
};

ConfigFiles read_config_files(const fs::path& dir) {
  ConfigFiles f;
  f.tc_path = dir / "tokenizer_config.json";
  f.stm_path = dir / "special_tokens_map.json";
  f.cfg_path = dir / "config.json";
  f.gen_path = dir / "generation_config.json";
  f.tc = read_json(f.tc_path);
  f.stm = read_json(f.stm_path);
  f.cfg = read_json(f.cfg_path);
  f.gen = read_json(f.gen_path);
  return f;
}

void apply_config(detail::TokenizerBase& tok, const fs::path& dir, const ConfigFiles& files) {
  SpecialTokens& sp = tok.mutable_specials();
  const auto& [tc_path, stm_path, cfg_path, gen_path, tc, stm, cfg, gen] = files;

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

// ---------------------------------------------------------------- what transformers builds
// transformers 5's AutoTokenizer does not always run tokenizer.json as written: the tokenizer class it
// picks may keep only the file's vocabulary, merges, added tokens and post-processor and build the
// rest itself. Training ids must equal apply_chat_template's, so TokenizerPipeline::kTransformers
// (what load_tokenizer gives the trainer) rebuilds the file the same way before the backend sees it;
// kTokenizerJson leaves it as HF `tokenizers` runs it. Only LlamaTokenizer's rebuild changes ids for
// the files we know: Mistral-7B's and Llama-2-HF's tokenizer.json prepend "▁" with a Prepend
// normalizer, i.e. after every special token too ("<s> [INST]" -> <s> ▁ ▁[ INST ...), while
// LlamaTokenizer's Metaspace pre-tokenizer adds it only where the text does not already start with a
// space. Qwen2Tokenizer and GPT2Tokenizer rebuild too, but into what their files already hold;
// TokenizerTransformers.* in tests/test_tokenizer.cpp checks every real tokenizer against AutoTokenizer.
// References are to transformers 5.24.

std::string string_or(const std::optional<json>& j, const char* key, const std::string& fallback) {
  if (!j || !j->contains(key) || !(*j)[key].is_string()) return fallback;
  return (*j)[key].get<std::string>();
}

// TokenizersBackend._tokenizer_json_has_byte_level searches the file for "ByteLevel"; we look for it
// as a component type.
bool declares_byte_level(const json& j) {
  if (j.is_object()) {
    auto type = j.find("type");
    if (type != j.end() && *type == "ByteLevel") return true;
    for (const auto& [key, value] : j.items()) {
      if (key != "model" && key != "added_tokens" && declares_byte_level(value)) return true;
    }
  } else if (j.is_array()) {
    for (const json& v : j) {
      if (declares_byte_level(v)) return true;
    }
  }
  return false;
}

// Whether AutoTokenizer.from_pretrained (models/auto/tokenization_auto.py) instantiates LlamaTokenizer:
// the class tokenizer_config.json (else config.json) names, "Fast" suffix ignored, unless
//  - tokenizer.json is byte-level: it then loads TokenizersBackend (the file as written);
//  - config.json's model_type registers a tokenizer that wins over the named class: mistral, mixtral
//    and phi3 register TokenizersBackend (MistralCommonBackend for mistral when the mistral-common
//    package is installed; scripts/requirements.txt does not install it), qwen2 is on transformers'
//    list of models with a wrong hub class and gets Qwen2Tokenizer, which we do not emulate.
bool transformers_builds_llama_tokenizer(const json& root, const fs::path& path, const ConfigFiles& files) {
  std::string cls = string_or(files.tc, "tokenizer_class", string_or(files.cfg, "tokenizer_class", ""));
  if (cls.size() > 4 && cls.compare(cls.size() - 4, 4, "Fast") == 0) cls.resize(cls.size() - 4);
  if (cls != "LlamaTokenizer" || declares_byte_level(root)) return false;
  const std::string model_type = string_or(files.cfg, "model_type", "");
  if (model_type == "mistral" || model_type == "mixtral" || model_type == "phi3") return false;
  if (model_type == "qwen2") {
    throw InputError(files.cfg_path.string() + ": model_type qwen2 with tokenizer_class LlamaTokenizer in " +
                     files.tc_path.string() + ": transformers would load Qwen2Tokenizer over " + path.string() +
                     ", which sft.cpp does not emulate");
  }
  return true;
}

bool bool_or(const std::optional<json>& j, const char* key, bool fallback) {
  if (!j || !j->contains(key) || !(*j)[key].is_boolean()) return fallback;
  return (*j)[key].get<bool>();
}

// An added-token entry as tokenizer.json writes it, from tokenizer_config.json's form of one.
json added_token_entry(int64_t id, const json& t, const fs::path& file, const std::string& where) {
  if (!t.is_object() || !t.contains("content") || !t["content"].is_string()) {
    throw InputError(file.string() + ": " + where + " must be an object with a string \"content\"");
  }
  const bool special = t.value("special", false);
  return json{{"id", id},
              {"content", t["content"]},
              {"single_word", t.value("single_word", false)},
              {"lstrip", t.value("lstrip", false)},
              {"rstrip", t.value("rstrip", false)},
              {"normalized", t.value("normalized", !special)},
              {"special", special}};
}

// LlamaTokenizer.__init__ (models/llama/tokenization_llama.py), given the file's vocabulary and merges
// by TokenizersBackend.convert_to_native_format (tokenization_utils_tokenizers.py):
//   model          BPE(vocab, merges, fuse_unk=True, byte_fallback=True): no unk_token, no dropout;
//   normalizer     none;
//   pre_tokenizer  Metaspace("▁", prepend_scheme, split=False), where _get_prepend_scheme
//                  (tokenization_utils_base.py) gives add_prefix_space (default true) ? (legacy
//                  (default false) ? "always" : "first") : "never";
//   decoder        Replace("▁", " "), ByteFallback, Fuse, and Strip(" ", 1, 0) when add_prefix_space;
//   post-processor the file's (load_tokenizer applies add_bos_token/add_eos_token on top, as HF does).
// Added tokens: PreTrainedTokenizerBase._from_pretrained takes tokenizer_config.json's
// added_tokens_decoder (the file's added_tokens only when it has none), and TokenizersBackend.__init__
// adds any named special token (bos, eos, unk, pad, additional_special_tokens) still missing, as special.
void rebuild_as_llama_tokenizer(json& root, const ConfigFiles& files) {
  const bool add_prefix_space = bool_or(files.tc, "add_prefix_space", true);
  const bool legacy = bool_or(files.tc, "legacy", false);
  const char* scheme = !add_prefix_space ? "never" : legacy ? "always" : "first";
  const std::string metaspace = "\u2581";
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", metaspace}, {"prepend_scheme", scheme},
                           {"split", false}};
  json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", metaspace}}}, {"content", " "}},
                               {{"type", "ByteFallback"}},
                               {{"type", "Fuse"}}});
  if (add_prefix_space) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  root["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  if (root.contains("model") && root["model"].is_object()) {
    json& model = root["model"];
    model["unk_token"] = nullptr;
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    model["dropout"] = nullptr;
    model["ignore_merges"] = false;
    model["continuing_subword_prefix"] = nullptr;
    model["end_of_word_suffix"] = nullptr;
  }

  if (files.tc && files.tc->contains("added_tokens_decoder")) {
    const json& decoder = (*files.tc)["added_tokens_decoder"];
    if (!decoder.is_object()) throw InputError(files.tc_path.string() + ": added_tokens_decoder must be an object");
    std::vector<std::pair<int64_t, json>> tokens;
    for (const auto& [key, t] : decoder.items()) {
      const std::string where = "added_tokens_decoder[\"" + key + "\"]";
      int64_t id = -1;
      try {
        size_t used = 0;
        id = std::stoll(key, &used);
        if (used != key.size()) id = -1;
      } catch (const std::exception&) {
        id = -1;
      }
      if (id < 0) throw InputError(files.tc_path.string() + ": " + where + ": the key must be a token id");
      tokens.emplace_back(id, added_token_entry(id, t, files.tc_path, where));
    }
    std::sort(tokens.begin(), tokens.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    root["added_tokens"] = json::array();
    for (auto& [id, entry] : tokens) root["added_tokens"].push_back(std::move(entry));
  }
  if (!root.contains("added_tokens") || !root["added_tokens"].is_array()) root["added_tokens"] = json::array();
  json& added = root["added_tokens"];
  auto add_if_missing = [&](const json& t, const std::string& where) {
    if (t.is_null()) return;
    json entry = t.is_string() ? json{{"content", t}, {"special", true}} : t;
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
      throw InputError(files.tc_path.string() + ": " + where + " must be a string or an AddedToken object");
    }
    entry["special"] = true;
    for (const json& a : added) {
      if (a.is_object() && a.value("content", "") == entry["content"]) return;
    }
    // The id is assigned on load: the vocabulary's when the content is in it, else the next free one.
    added.push_back(added_token_entry(0, entry, files.tc_path, where));
  };
  if (files.tc) {
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
      if (files.tc->contains(key)) add_if_missing((*files.tc)[key], key);
    }
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
      if (files.tc->contains(key) && (*files.tc)[key].is_array()) {
        for (const json& t : (*files.tc)[key]) add_if_missing(t, key);
      }
    }
  }
}

void rebuild_as_transformers_does(json& root, const fs::path& path, const ConfigFiles& files) {
  if (transformers_builds_llama_tokenizer(root, path, files)) rebuild_as_llama_tokenizer(root, files);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir, TokenizerPipeline pipeline) {
  if (!fs::is_directory(dir)) throw InputError(dir.string() + ": tokenizer directory does not exist");
  const ConfigFiles files = read_config_files(dir);
  std::unique_ptr<detail::TokenizerBase> tok;
  if (fs::is_regular_file(dir / "tokenizer.json")) {
    const fs::path path = dir / "tokenizer.json";
    json root = detail::read_tokenizer_json(path);
    if (pipeline == TokenizerPipeline::kTransformers) rebuild_as_transformers_does(root, path, files);
    tok = detail::load_hf_tokenizer(root, path.string());
  } else if (fs::is_regular_file(dir / "tokenizer.model")) {
    tok = detail::load_sp_tokenizer(dir / "tokenizer.model");
  } else {
    throw InputError(dir.string() + ": no tokenizer.json or tokenizer.model in this directory");
  }
  apply_config(*tok, dir, files);
  return tok;
}

}  // namespace sft::data
