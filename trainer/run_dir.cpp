// trainer/run_dir.cpp: output_dir preparation, text writes and JSONL trimming for `sft train`.
#include "trainer/run_dir.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "trainer/checkpoint.h"

namespace sft {
namespace fs = std::filesystem;
namespace {

bool dir_holds_run(const fs::path& dir) { return fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "checkpoints"); }

void wipe_run(const fs::path& dir) {
  for (const char* name : {"metrics.jsonl", "eval.jsonl", "data_report.json", "config.yaml"}) fs::remove(dir / name);
  fs::remove_all(dir / "checkpoints");
  fs::remove_all(dir / "adapter");
  fs::remove_all(dir / "model");
  fs::remove_all(dir / "tensorboard");
}

}  // namespace

std::optional<fs::path> prepare_output_dir(const Config& config, bool force) {
  const fs::path dir = config.output_dir;
  const bool has_run = dir_holds_run(dir);
  std::optional<fs::path> checkpoint;
  if (config.resume != "auto" && config.resume != "never") {
    checkpoint = fs::path(config.resume);
    if (!fs::is_directory(*checkpoint)) {
      throw InputError("resume: '" + config.resume + "' is not a checkpoint directory (use auto, never or a path)");
    }
  } else if (config.resume == "auto" && !force) {
    if (auto newest = newest_complete_checkpoint(dir / "checkpoints")) checkpoint = newest->path;
  }
  if (!checkpoint && has_run) {
    if (!force) {
      throw InputError("output_dir '" + dir.string() + "' already holds a run" +
                       (config.resume == "auto" ? " but no complete checkpoint to resume from" : "") +
                       "; pass --force to overwrite it (or set output_dir elsewhere)");
    }
    wipe_run(dir);
  }
  fs::create_directories(dir);
  return checkpoint;
}

void truncate_jsonl_after(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    // A torn last line (killed mid-write) is dropped along with later steps.
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= step) {
      kept += line + "\n";
    }
  }
  in.close();
  const fs::path tmp = path.string() + ".tmp";
  write_text_file(tmp, kept);
  fs::rename(tmp, path);
}

}  // namespace sft
