// synth/command.cpp: `sft synth`: flags -> options for the four pipelines, the run output, the model(s),
// progress lines on stderr and the final report on stdout. SIGINT/SIGTERM stop after the current step,
// commit, and exit 0 with the cursor in place for --resume.
#include "synth/command.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "synth/chat_model.h"
#include "synth/evol.h"
#include "synth/label.h"
#include "synth/self_instruct.h"
#include "trainer/cli.h"
#include "trainer/generate_command.h"
#include "trainer/stop_signals.h"

namespace sft {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kUsage =
    "sft synth self-instruct --model DIR --seeds FILE.jsonl --num N --out FILE.jsonl [--shots 8] "
    "[--generated-shots 2] [--per-prompt 8] [--max-prompts N] [--max-similarity 0.7] [--min-words 4] [--max-words 150]\n"
    "       sft synth evol --model DIR --input FILE.jsonl --rounds R --out FILE.jsonl [--judge] [--max-similarity 0.9]\n"
    "       sft synth distill --teacher DIR --input prompts.jsonl --out FILE.jsonl [--cot]\n"
    "       sft synth backtranslate --model BACKWARD_DIR --input texts.jsonl --out FILE.jsonl [--score FORWARD_DIR "
    "[--min-score 4]]\n"
    "  every subcommand: [--seed S] [--batch B] [--temperature T] [--top-p P] [--max-new-tokens N] "
    "[--response-temperature T] [--response-max-new-tokens N] [--keep-truncated] [--template NAME] [--system TEXT] "
    "[--dtype float32] [--threads N] [--fsync-every STEPS] [--resume | --force]";

const std::set<std::string> kValueFlags = {
    "--model", "--teacher", "--seeds", "--input", "--out", "--num", "--rounds", "--shots", "--generated-shots",
    "--per-prompt", "--max-prompts", "--max-similarity", "--min-words", "--max-words", "--score", "--min-score",
    "--seed", "--batch", "--temperature", "--top-p", "--max-new-tokens", "--response-temperature",
    "--response-max-new-tokens", "--template", "--system", "--dtype", "--threads", "--fsync-every"};
const std::set<std::string> kSwitches = {"--judge", "--cot", "--keep-truncated", "--resume", "--force"};
// Flags that do not change what is written: a resume may change them.
const std::set<std::string> kNotFingerprinted = {"--threads", "--fsync-every", "--resume", "--force"};

// The flags one subcommand accepts (beyond the common ones).
const std::map<std::string, std::set<std::string>>& subcommand_flags() {
  static const std::map<std::string, std::set<std::string>> table = {
      {"self-instruct", {"--model", "--seeds", "--num", "--shots", "--generated-shots", "--per-prompt", "--max-prompts",
                         "--max-similarity", "--min-words", "--max-words"}},
      {"evol", {"--model", "--input", "--rounds", "--judge", "--max-similarity"}},
      {"distill", {"--teacher", "--input", "--cot"}},
      {"backtranslate", {"--model", "--input", "--score", "--min-score"}},
  };
  return table;
}

const std::set<std::string> kCommonFlags = {
    "--out", "--seed", "--batch", "--temperature", "--top-p", "--max-new-tokens", "--response-temperature",
    "--response-max-new-tokens", "--keep-truncated", "--template", "--system", "--dtype", "--threads",
    "--fsync-every", "--resume", "--force"};

class SynthFlags {
 public:
  SynthFlags(const std::string& sub, const std::vector<std::string>& args)
      : sub_(sub), cli_("synth " + sub, args, kValueFlags, kSwitches) {
    if (!cli_.positional().empty() || !cli_.overrides().empty()) {
      const std::string extra = !cli_.positional().empty() ? cli_.positional()[0] : cli_.overrides()[0];
      throw InputError("sft synth " + sub + ": unexpected argument '" + extra + "'\nusage: " + kUsage);
    }
    const std::set<std::string>& own = subcommand_flags().at(sub);
    for (const std::string& flag : kValueFlags) check_allowed(flag, own);
    for (const std::string& flag : kSwitches) check_allowed(flag, own);
  }
  std::string required(const std::string& flag) const { return cli_.required(flag); }
  std::optional<std::string> value(const std::string& flag) const { return cli_.value(flag); }
  bool has(const std::string& flag) const { return cli_.has(flag); }
  int64_t integer(const std::string& flag, int64_t fallback, int64_t min, int64_t max = INT64_MAX) const {
    const int64_t v = cli_.integer(flag, fallback);
    if (v < min || v > max) {
      throw InputError("sft synth " + sub_ + ": " + flag + " must be " +
                       (max == INT64_MAX ? ">= " + std::to_string(min)
                                         : "in " + std::to_string(min) + ".." + std::to_string(max)) +
                       " (got " + std::to_string(v) + ")");
    }
    return v;
  }
  double number(const std::string& flag, double fallback, double min, double max) const {
    const double v = cli_.number(flag, fallback);
    if (!(v >= min && v <= max)) {
      throw InputError("sft synth " + sub_ + ": " + flag + " must be in [" + std::to_string(min) + ", " +
                       std::to_string(max) + "] (got " + std::to_string(v) + ")");
    }
    return v;
  }
  // Every flag given that decides the output, as the run's arguments (the resume fingerprint).
  json fingerprint() const {
    json args = {{"command", sub_}};
    for (const std::string& flag : kValueFlags) {
      if (!kNotFingerprinted.count(flag) && cli_.value(flag)) args[flag] = *cli_.value(flag);
    }
    for (const std::string& flag : kSwitches) {
      if (!kNotFingerprinted.count(flag) && cli_.has(flag)) args[flag] = true;
    }
    return args;
  }

 private:
  void check_allowed(const std::string& flag, const std::set<std::string>& own) const {
    if (cli_.has(flag) && !own.count(flag) && !kCommonFlags.count(flag)) {
      throw InputError("sft synth " + sub_ + ": " + flag + " is not an option of this subcommand\nusage: " + kUsage);
    }
  }
  std::string sub_;
  CommandLine cli_;
};

synth::DecodeSettings decoding(const SynthFlags& flags, const std::string& prefix, synth::DecodeSettings defaults) {
  defaults.temperature = flags.number("--" + prefix + "temperature", defaults.temperature, 0.0, 100.0);
  defaults.max_new_tokens = flags.integer("--" + prefix + "max-new-tokens", defaults.max_new_tokens, 1, 1 << 20);
  return defaults;
}

synth::ChatModelOptions model_options(const SynthFlags& flags, const std::string& dir) {
  synth::ChatModelOptions options;
  options.model_dir = dir;
  options.template_name = flags.value("--template").value_or("auto");
  options.dtype = flags.value("--dtype").value_or("float32");
  options.system_prompt = flags.value("--system");
  return options;
}

// The prompts of an --input/--seeds file: each line's last user turn, with the turns before it.
std::vector<GenerationInput> read_prompts(const fs::path& path, const std::string& flag) {
  if (!fs::is_regular_file(path)) throw InputError(flag + ": " + path.string() + " does not exist");
  std::ifstream in(path, std::ios::binary);
  std::string line;
  bool any = false;
  while (!any && std::getline(in, line)) any = line.find_first_not_of(" \t\r") != std::string::npos;
  if (!any) throw InputError(flag + ": " + path.string() + " is empty (no prompts)");
  return read_generation_inputs(path);
}

// Progress on stderr: redrawn in place on a terminal, one line per step otherwise.
struct ProgressPrinter {
  std::string command;
  int64_t goal = 0;
  bool tty = ::isatty(2) == 1;
  void operator()(const synth::Progress& progress) const {
    std::cerr << (tty ? "\r\033[K" : "") << synth::progress_line(command, progress, goal) << (tty ? "" : "\n")
              << std::flush;
  }
};

int finish(const std::string& command, synth::RunOutput& output, const StopSignals& stop, const ProgressPrinter& printer) {
  const json report = output.finish();
  if (printer.tty) std::cerr << "\n";
  std::cout << report.dump(2) << std::endl;
  if (!report["complete"].get<bool>()) {
    std::cerr << "sft synth " << command << ": "
              << (stop.requested() ? "stopped by a signal" : "stopped before the goal (--max-prompts reached)")
              << "; the same command with --resume continues it" << std::endl;
  }
  return 0;
}

template <class Run>
int run_pipeline(const std::string& command, const SynthFlags& flags, int64_t goal, Run run) {
  StopSignals stop;
  synth::RunOutput output(flags.required("--out"), flags.fingerprint(), flags.has("--resume"), flags.has("--force"));
  if (output.resumed()) {
    std::cerr << "[synth " << command << "] resuming at step " << output.progress().step << " with "
              << output.progress().accepted << " lines" << std::endl;
  }
  ProgressPrinter printer{command, goal};
  run(output, [&] { return stop.requested(); }, printer);
  return finish(command, output, stop, printer);
}

struct Common {
  uint64_t seed;
  int64_t batch;
  int64_t commit_every;
  bool keep_truncated;
};

// The common settings into a pipeline's options (every options struct has these four members).
template <class Options>
void apply(const Common& common, Options& o) {
  o.seed = common.seed;
  o.batch = common.batch;
  o.commit_every = common.commit_every;
  o.keep_truncated = common.keep_truncated;
}

Common common_flags(const SynthFlags& flags) {
  if (flags.has("--resume") && flags.has("--force")) throw InputError("sft synth: give --resume or --force, not both");
  flags.required("--out");
  const int64_t threads = flags.integer("--threads", 0, 0);
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  return {static_cast<uint64_t>(flags.integer("--seed", 0, 0)), flags.integer("--batch", 4, 1, 4096),
          flags.integer("--fsync-every", 1, 1), flags.has("--keep-truncated")};
}

int self_instruct(const SynthFlags& flags) {
  const Common common = common_flags(flags);
  synth::SelfInstructOptions o;
  if (!flags.has("--num")) throw InputError("sft synth self-instruct: --num is required (instructions to write)");
  o.num = flags.integer("--num", 0, 1);
  o.shots = flags.integer("--shots", o.shots, 1, 64);
  o.generated_shots = flags.integer("--generated-shots", o.generated_shots, 0, o.shots);
  o.new_per_prompt = flags.integer("--per-prompt", o.new_per_prompt, 1, 64);
  o.max_prompts = flags.integer("--max-prompts", 0, 0);
  o.max_similarity = flags.number("--max-similarity", o.max_similarity, 0.0, 1.0);
  o.limits.min_words = static_cast<size_t>(flags.integer("--min-words", 4, 1));
  o.limits.max_words = static_cast<size_t>(flags.integer("--max-words", 150, static_cast<int64_t>(o.limits.min_words)));
  o.instruction_decoding = decoding(flags, "", o.instruction_decoding);
  o.instruction_decoding.top_p = flags.number("--top-p", o.instruction_decoding.top_p, 1e-6, 1.0);
  o.response_decoding = decoding(flags, "response-", o.response_decoding);
  apply(common, o);
  const std::string model_dir = flags.required("--model");
  synth::check_model_dir(model_dir, "--model");
  for (const GenerationInput& input : read_prompts(flags.required("--seeds"), "--seeds")) {
    o.seeds.push_back(input.messages.back().content);
  }
  return run_pipeline("self-instruct", flags, o.num, [&](synth::RunOutput& output, auto stop, auto& printer) {
    synth::ChatModel model(model_options(flags, model_dir), "--model");
    synth::run_self_instruct(model, o, output, stop, printer);
  });
}

int evol(const SynthFlags& flags) {
  const Common common = common_flags(flags);
  synth::EvolOptions o;
  if (!flags.has("--rounds")) throw InputError("sft synth evol: --rounds is required");
  o.rounds = flags.integer("--rounds", o.rounds, 1, 100);
  o.limits.max_similarity = flags.number("--max-similarity", o.limits.max_similarity, 0.0, 1.0);
  o.judge = flags.has("--judge");
  o.rewrite_decoding = decoding(flags, "", o.rewrite_decoding);
  o.rewrite_decoding.top_p = flags.number("--top-p", o.rewrite_decoding.top_p, 1e-6, 1.0);
  o.response_decoding = decoding(flags, "response-", o.response_decoding);
  apply(common, o);
  const std::string model_dir = flags.required("--model");
  synth::check_model_dir(model_dir, "--model");
  for (const GenerationInput& input : read_prompts(flags.required("--input"), "--input")) {
    o.inputs.push_back({input.messages.back().content, input.source});
  }
  const int64_t goal = 0;  // no fixed count: every input through every round
  return run_pipeline("evol", flags, goal, [&](synth::RunOutput& output, auto stop, auto& printer) {
    synth::ChatModel model(model_options(flags, model_dir), "--model");
    synth::run_evol(model, o, output, stop, printer);
  });
}

int distill(const SynthFlags& flags) {
  const Common common = common_flags(flags);
  if (flags.has("--response-temperature") || flags.has("--response-max-new-tokens")) {
    throw InputError("sft synth distill: the teacher's answers are the responses: use --temperature and --max-new-tokens");
  }
  synth::DistillOptions o;
  o.cot = flags.has("--cot");
  o.decoding = decoding(flags, "", o.decoding);
  o.decoding.top_p = flags.number("--top-p", o.decoding.top_p, 1e-6, 1.0);
  apply(common, o);
  const std::string teacher_dir = flags.required("--teacher");
  synth::check_model_dir(teacher_dir, "--teacher");
  for (const GenerationInput& input : read_prompts(flags.required("--input"), "--input")) {
    o.inputs.push_back({input.messages, input.source});
  }
  return run_pipeline("distill", flags, static_cast<int64_t>(o.inputs.size()),
                      [&](synth::RunOutput& output, auto stop, auto& printer) {
                        synth::ChatModel teacher(model_options(flags, teacher_dir), "--teacher");
                        synth::run_distill(teacher, o, output, stop, printer);
                      });
}

int backtranslate(const SynthFlags& flags) {
  const Common common = common_flags(flags);
  if (flags.has("--response-temperature") || flags.has("--response-max-new-tokens")) {
    throw InputError("sft synth backtranslate: the texts are the responses: use --temperature and --max-new-tokens "
                     "for the generated prompts");
  }
  synth::BacktranslateOptions o;
  o.decoding = decoding(flags, "", o.decoding);
  o.decoding.top_p = flags.number("--top-p", o.decoding.top_p, 1e-6, 1.0);
  o.min_score = flags.integer("--min-score", o.min_score, 1, 5);
  if (flags.has("--min-score") && !flags.has("--score")) {
    throw InputError("sft synth backtranslate: --min-score needs --score FORWARD_DIR (the model that rates the pairs)");
  }
  apply(common, o);
  const std::string model_dir = flags.required("--model");
  synth::check_model_dir(model_dir, "--model");
  const std::optional<std::string> scorer_dir = flags.value("--score");
  if (scorer_dir) synth::check_model_dir(*scorer_dir, "--score");
  const fs::path input = flags.required("--input");
  if (!fs::is_regular_file(input)) throw InputError("--input: " + input.string() + " does not exist");
  o.texts = synth::read_texts(input);
  return run_pipeline("backtranslate", flags, static_cast<int64_t>(o.texts.size()),
                      [&](synth::RunOutput& output, auto stop, auto& printer) {
                        synth::ChatModel backward(model_options(flags, model_dir), "--model");
                        std::unique_ptr<synth::ChatModel> scorer;
                        if (scorer_dir) scorer = std::make_unique<synth::ChatModel>(model_options(flags, *scorer_dir), "--score");
                        synth::run_backtranslate(backward, scorer.get(), o, output, stop, printer);
                      });
}

}  // namespace

const char* synth_usage() { return kUsage; }
const char* synth_summary() {
  return "make SFT data with a model: self-instruct, evol, distill, backtranslate (resumable, filtered, reported)";
}

int command_synth(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    throw InputError(std::string("sft synth: give a subcommand\nusage: ") + kUsage);
  }
  const std::string sub = args[0];
  if (!subcommand_flags().count(sub)) {
    throw InputError("sft synth: unknown subcommand '" + sub + "' (self-instruct, evol, distill, backtranslate)\nusage: " + kUsage);
  }
  const SynthFlags flags(sub, std::vector<std::string>(args.begin() + 1, args.end()));
  if (sub == "self-instruct") return self_instruct(flags);
  if (sub == "evol") return evol(flags);
  if (sub == "distill") return distill(flags);
  return backtranslate(flags);
}

}  // namespace sft
