// trainer/generate_command.cpp: `sft generate`. Loads the model (and a PEFT adapter), turns each
// prompt into ids with the chat template, decodes with model/generate.h and writes the result:
// streamed text for --prompt, comma-separated ids for --prompt-ids (one line per prompt; several prompts,
// separated by ';', decode as one batch), one JSONL line per input line for --input (--batch-size lines
// decoded together). Timing goes to stderr so stdout stays the answer.
#include "trainer/generate_command.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/errors.h"
#include "common/text_file.h"
#include "model/generate.h"
#include "model/weights.h"
#include "trainer/cli.h"
#include "trainer/export.h"

namespace sft {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kUsage =
    "usage: sft generate --model DIR [--adapter DIR] [--template NAME] (--prompt TEXT | --input FILE.jsonl | "
    "--prompt-ids 1,2,3[;4,5,...]) [--batch-size N] [--temperature T] [--top-p P] [--top-k K] [--max-new-tokens N] [--seed S] "
    "[--system TEXT] [--out FILE] [--tokenizer DIR] [--dtype float32] [--attention auto] [--threads N] [--no-cache] [--ignore-eos]";

std::string string_field(const json& object, const std::string& key, const std::string& source) {
  auto it = object.find(key);
  if (it == object.end()) return "";
  if (!it->is_string()) throw InputError(source + ": field \"" + key + "\" must be a string");
  return it->get<std::string>();
}

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    try {
      size_t used = 0;
      long long id = std::stoll(item, &used);
      if (used != item.size() || id < 0 || id > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(static_cast<int32_t>(id));
    } catch (const std::exception&) {
      throw InputError(flag + ": '" + item + "' is not a token id (non-negative integer)");
    }
  }
  if (ids.empty()) throw InputError(flag + ": give at least one token id");
  return ids;
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out;
}

bool is_stop(const model::GenerationOptions& options, int32_t id) {
  return std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
}

// The new ids without a final stop token: what is shown as the answer.
std::vector<int32_t> answer_ids(const std::vector<int32_t>& ids, const model::GenerationOptions& options) {
  if (!ids.empty() && is_stop(options, ids.back())) return {ids.begin(), ids.end() - 1};
  return ids;
}

// Streams the text of a growing id sequence: each call decodes everything so far and prints what is
// new, holding back a trailing U+FFFD (an incomplete UTF-8 character whose next bytes are coming).
class TextStreamer {
 public:
  TextStreamer(const data::Tokenizer& tokenizer, std::ostream& out) : tokenizer_(tokenizer), out_(out) {}
  void push(int32_t id) {
    ids_.push_back(id);
    print(false);
  }
  void finish() { print(true); }

 private:
  void print(bool final) {
    std::string text = tokenizer_.decode(ids_, /*skip_special_tokens=*/false);
    static const std::string kReplacement = "\xEF\xBF\xBD";
    size_t ready = text.size();
    if (!final && ready >= kReplacement.size() && text.compare(ready - kReplacement.size(), kReplacement.size(),
                                                               kReplacement) == 0) {
      ready -= kReplacement.size();
    }
    if (ready > printed_ && text.compare(0, printed_, printed_text_) == 0) {
      out_ << text.substr(printed_, ready - printed_) << std::flush;
      printed_text_ = text.substr(0, ready);
      printed_ = ready;
    }
  }

  const data::Tokenizer& tokenizer_;
  std::ostream& out_;
  std::vector<int32_t> ids_;
  std::string printed_text_;
  size_t printed_ = 0;
};

// Wall-clock timing of one generate() call: time to the first token (prefill) and the rate after it.
struct Timing {
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now(), first, last;
  int64_t tokens = 0;
  void on_token() {
    last = Clock::now();
    if (tokens++ == 0) first = last;
  }
  std::string summary(int64_t prompt_tokens) const {
    std::ostringstream s;
    s << std::fixed << std::setprecision(4) << "[generate] prompt " << prompt_tokens << " tokens, " << tokens
      << " new tokens";
    if (tokens > 0) {
      double first_s = std::chrono::duration<double>(first - start).count();
      s << ", first token " << first_s << " s";
      if (tokens > 1) {
        double rest_s = std::chrono::duration<double>(last - first).count();
        s << ", then " << std::setprecision(2) << (tokens - 1) / rest_s << " tokens/s (" << std::setprecision(3)
          << 1000.0 * rest_s / (tokens - 1) << " ms/token)";
      }
    }
    return s.str();
  }
};

std::string jsonl_line(const json& line) { return line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }

}  // namespace

std::vector<GenerationInput> read_generation_inputs(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open --input file");
  std::vector<GenerationInput> inputs;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    GenerationInput input;
    input.source = path.string() + ":" + std::to_string(line_no);
    const std::string& source = input.source;
    if (data::find_invalid_utf8(line) != std::string::npos) throw InputError(source + ": not valid UTF-8");
    json object;
    try {
      object = json::parse(line);
    } catch (const json::parse_error& e) {
      throw InputError(source + ": malformed JSON: " + e.what());
    }
    if (!object.is_object()) throw InputError(source + ": a line must be a JSON object");
    std::vector<data::Message>& messages = input.messages;
    const std::string system = string_field(object, "system", source);
    if (object.contains("messages") || object.contains("conversations")) {
      const bool sharegpt = !object.contains("messages");
      const std::string list_key = sharegpt ? "conversations" : "messages";
      const json& turns = object[list_key];
      if (!turns.is_array()) throw InputError(source + ": field \"" + list_key + "\" must be an array");
      if (sharegpt && !system.empty()) messages.push_back({data::Role::kSystem, system});
      for (size_t i = 0; i < turns.size(); ++i) {
        const std::string where = source + ": " + list_key + "[" + std::to_string(i) + "]";
        if (!turns[i].is_object()) throw InputError(where + " must be an object");
        const std::string role = string_field(turns[i], sharegpt ? "from" : "role", where);
        const std::string text = string_field(turns[i], sharegpt ? "value" : "content", where);
        if (role == "system") {
          messages.push_back({data::Role::kSystem, text});
        } else if (role == "user" || (sharegpt && role == "human")) {
          messages.push_back({data::Role::kUser, text});
        } else if (role == "assistant" || (sharegpt && role == "gpt")) {
          messages.push_back({data::Role::kAssistant, text});
        } else {
          throw InputError(where + ": unknown role \"" + role + "\"");
        }
      }
      if (!messages.empty() && messages.back().role == data::Role::kAssistant) {
        input.reference = messages.back().content;
        messages.pop_back();
      }
    } else if (object.contains("instruction")) {
      if (!system.empty()) messages.push_back({data::Role::kSystem, system});
      std::string user = string_field(object, "instruction", source);
      const std::string extra = string_field(object, "input", source);
      if (!extra.empty()) user += "\n" + extra;
      messages.push_back({data::Role::kUser, user});
      if (object.contains("output")) input.reference = string_field(object, "output", source);
    } else if (object.contains("prompt")) {
      if (!system.empty()) messages.push_back({data::Role::kSystem, system});
      messages.push_back({data::Role::kUser, string_field(object, "prompt", source)});
      for (const char* key : {"response", "completion"}) {
        if (object.contains(key) && !input.reference) input.reference = string_field(object, key, source);
      }
    } else {
      throw InputError(source + ": expected a \"prompt\", \"instruction\", \"messages\" or \"conversations\" field");
    }
    // Valid when the conversation plus the answer to generate is a valid conversation.
    std::vector<data::Message> with_answer = messages;
    with_answer.push_back({data::Role::kAssistant, ""});
    std::string reason;
    const std::string problem = data::check_conversation(with_answer, &reason);
    if (!problem.empty()) throw InputError(source + ": " + problem + " (the prompt must end with a user turn)");
    inputs.push_back(std::move(input));
  }
  if (in.bad()) throw InputError(path.string() + ": read error");
  if (inputs.empty()) throw InputError(path.string() + ": --input file has no lines");
  return inputs;
}

std::vector<int32_t> generation_prompt_ids(const data::ChatTemplate& chat_template, const data::Tokenizer& tokenizer,
                                           const std::vector<data::Message>& messages,
                                           const std::optional<std::string>& system_prompt) {
  // Render the conversation with an empty answer and cut before the answer's response segment: what
  // remains ends with the assistant-turn opening ("<|im_start|>assistant\n", "[/INST]", ...).
  data::Conversation conversation;
  conversation.messages = messages;
  conversation.messages.push_back({data::Role::kAssistant, ""});
  const data::SpecialTokens& specials = tokenizer.special_tokens();
  data::RenderedConversation rendered =
      data::render_conversation(chat_template, conversation, specials, system_prompt);
  size_t cut = rendered.text.size();
  for (const data::Segment& segment : rendered.segments) {
    if (segment.kind == data::SegmentKind::kResponse) cut = segment.begin;  // the last one wins
  }
  std::vector<int32_t> ids;
  if (!rendered.renders_bos && specials.add_bos && specials.bos) ids.push_back(*specials.bos);
  std::vector<int32_t> text_ids = tokenizer.encode_ids(std::string_view(rendered.text).substr(0, cut));
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  return ids;
}

int command_generate(const std::vector<std::string>& args) {
  CommandLine cli("generate", args,
                  {"--model", "--adapter", "--template", "--prompt", "--prompt-ids", "--input", "--temperature",
                   "--top-p", "--top-k", "--max-new-tokens", "--seed", "--system", "--out", "--tokenizer", "--dtype",
                   "--attention", "--threads", "--batch-size"},
                  {"--no-cache", "--ignore-eos"});
  if (!cli.positional().empty()) throw InputError("sft generate: unexpected argument '" + cli.positional()[0] + "'\n" + kUsage);
  const fs::path model_dir = cli.required("--model");
  if (!fs::is_directory(model_dir)) throw InputError("--model: " + model_dir.string() + " is not a directory");
  const int sources = cli.has("--prompt") + cli.has("--input") + cli.has("--prompt-ids");
  if (sources != 1) {
    throw InputError(std::string("sft generate: give exactly one of --prompt, --input or --prompt-ids (got ") +
                     (sources ? "several" : "none") + ")\n" + kUsage);
  }

  model::GenerationOptions options;
  options.max_new_tokens = cli.integer("--max-new-tokens", options.max_new_tokens);
  options.temperature = cli.number("--temperature", options.temperature);
  options.top_k = cli.integer("--top-k", options.top_k);
  options.top_p = cli.number("--top-p", options.top_p);
  const int64_t seed = cli.integer("--seed", 0);
  options.use_cache = !cli.has("--no-cache");
  options.attention = kernels::parse_attention_impl(cli.value("--attention").value_or("auto"));
  if (options.max_new_tokens < 1) throw InputError("--max-new-tokens must be >= 1");
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature)) {
    throw InputError("--temperature must be >= 0 (0 = greedy)");
  }
  if (options.top_k < 0) throw InputError("--top-k must be >= 0 (0 = off)");
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) throw InputError("--top-p must be in (0, 1]");
  if (seed < 0) throw InputError("--seed must be >= 0");
  const int64_t batch_size = cli.integer("--batch-size", 1);  // --input lines decoded together
  if (batch_size < 1) throw InputError("--batch-size must be >= 1");
  options.seed = static_cast<uint64_t>(seed);
  const at::ScalarType dtype = model::parse_dtype(cli.value("--dtype").value_or("float32"), "--dtype");
  const int64_t threads = cli.integer("--threads", 0);  // 0: LibTorch's default (all cores)
  if (threads < 0) throw InputError("--threads must be >= 0 (0 = all cores)");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));

  // The tokenizer: required for text prompts; optional with --prompt-ids (adds its stop ids and text).
  const fs::path tokenizer_dir = cli.value("--tokenizer").value_or(model_dir.string());
  std::unique_ptr<data::Tokenizer> tokenizer;
  const bool has_tokenizer_files =
      fs::exists(tokenizer_dir / "tokenizer.json") || fs::exists(tokenizer_dir / "tokenizer.model");
  if (!cli.has("--prompt-ids") || has_tokenizer_files) tokenizer = data::load_tokenizer(tokenizer_dir);

  model::CausalLM lm = model::load_pretrained(model_dir, dtype, at::kCPU);
  if (auto adapter = cli.value("--adapter")) {
    if (!fs::is_directory(*adapter)) throw InputError("--adapter: " + *adapter + " is not a directory");
    load_peft_adapter(lm, *adapter);
  }
  lm->eval();
  // --ignore-eos (benchmarks): always decode max_new_tokens.
  if (!cli.has("--ignore-eos")) options.stop_ids = model::default_stop_ids(lm->config(), tokenizer.get());
  const int64_t vocab = lm->config().vocab_size;

  std::optional<TextFileWriter> out_file;
  if (auto out = cli.value("--out")) {
    try {
      out_file.emplace(*out);
    } catch (const std::runtime_error& e) {
      throw InputError(std::string("--out: ") + e.what());
    }
  }

  if (auto text = cli.value("--prompt-ids")) {
    std::vector<std::vector<int32_t>> prompts;
    std::stringstream lists(*text);
    for (std::string list; std::getline(lists, list, ';');) prompts.push_back(parse_id_list(list, "--prompt-ids"));
    if (prompts.empty()) throw InputError("--prompt-ids: give at least one token id");
    for (const std::vector<int32_t>& prompt : prompts) {
      for (int32_t id : prompt) {
        if (id >= vocab) {
          throw InputError("--prompt-ids: token id " + std::to_string(id) + " is outside the embedding (vocab_size " +
                           std::to_string(vocab) + ")");
        }
      }
    }
    std::vector<std::vector<int32_t>> outputs;
    if (prompts.size() == 1) {
      Timing timing;
      outputs.push_back(model::generate(lm, prompts[0], options, [&](int32_t) { timing.on_token(); }));
      std::cerr << timing.summary(static_cast<int64_t>(prompts[0].size())) << std::endl;
    } else {  // one batch; every sequence with the same seed, as if decoded alone
      const auto start = std::chrono::steady_clock::now();
      outputs = model::generate_batch(lm, prompts, options);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      int64_t prompt_tokens = 0, new_tokens = 0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        prompt_tokens += static_cast<int64_t>(prompts[i].size());
        new_tokens += static_cast<int64_t>(outputs[i].size());
      }
      std::cerr << "[generate] batch of " << prompts.size() << " prompts (" << prompt_tokens << " prompt tokens), "
                << new_tokens << " new tokens in " << std::fixed << std::setprecision(3) << seconds << " s ("
                << std::setprecision(2) << new_tokens / seconds << " new tokens/s)" << std::endl;
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::cout << join_ids(outputs[i]) << "\n";
      if (out_file) {
        json line = {{"prompt_ids", prompts[i]}, {"output_ids", outputs[i]}};
        if (tokenizer) line["output"] = tokenizer->decode(answer_ids(outputs[i], options));
        out_file->write(jsonl_line(line));
      }
    }
    std::cout << std::flush;
    if (out_file) out_file->close();
    return 0;
  }

  const data::ChatTemplate chat_template =
      data::resolve_template(cli.value("--template").value_or("auto"), tokenizer->chat_template(),
                             (tokenizer_dir / "tokenizer_config.json").string(), "--template");
  const std::optional<std::string> system = cli.value("--system");

  if (auto prompt_text = cli.value("--prompt")) {
    const std::vector<int32_t> prompt =
        generation_prompt_ids(chat_template, *tokenizer, {{data::Role::kUser, *prompt_text}}, system);
    TextStreamer streamer(*tokenizer, std::cout);
    Timing timing;
    std::vector<int32_t> ids = model::generate(lm, prompt, options, [&](int32_t id) {
      timing.on_token();
      if (!is_stop(options, id)) streamer.push(id);
    });
    streamer.finish();
    std::cout << std::endl;
    std::cerr << timing.summary(static_cast<int64_t>(prompt.size())) << std::endl;
    if (out_file) {
      out_file->write(jsonl_line({{"prompt", *prompt_text},
                                  {"output", tokenizer->decode(answer_ids(ids, options))},
                                  {"output_ids", ids}}));
      out_file->close();
    }
    return 0;
  }

  const fs::path input_path = *cli.value("--input");
  const std::vector<GenerationInput> inputs = read_generation_inputs(input_path);
  int64_t prompt_tokens = 0, new_tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t first = 0; first < inputs.size(); first += static_cast<size_t>(batch_size)) {
    const size_t last = std::min(inputs.size(), first + static_cast<size_t>(batch_size));
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = first; i < last; ++i) {
      prompts.push_back(generation_prompt_ids(chat_template, *tokenizer, inputs[i].messages, system));
      prompt_tokens += static_cast<int64_t>(prompts.back().size());
    }
    const std::vector<std::vector<int32_t>> outputs = model::generate_batch(lm, prompts, options);
    for (size_t i = first; i < last; ++i) {
      const std::vector<int32_t>& ids = outputs[i - first];
      new_tokens += static_cast<int64_t>(ids.size());
      json line = {{"prompt", inputs[i].messages.back().content},
                   {"output", tokenizer->decode(answer_ids(ids, options))},
                   {"output_ids", ids}};
      if (inputs[i].reference) line["reference"] = *inputs[i].reference;
      if (out_file) {
        out_file->write(jsonl_line(line));
      } else {
        std::cout << jsonl_line(line);
      }
    }
    if (out_file) {
      out_file->flush();
    } else {
      std::cout << std::flush;
    }
  }
  if (out_file) out_file->close();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "[generate] " << inputs.size() << " prompts (" << prompt_tokens << " prompt tokens), " << new_tokens
            << " new tokens in " << std::fixed << std::setprecision(2) << seconds << " s" << std::endl;
  return 0;
}

}  // namespace sft
