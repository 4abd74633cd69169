// trainer/run_dir.h: the run directory (output_dir) of `sft train`: deciding between a fresh start and a
// resume, wiping a run on --force, small text writes, and trimming JSONL logs on resume. Only rank 0 of
// a multi-process run calls these (rank 0 owns output_dir).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "common/text_file.h"  // write_text_file
#include "trainer/config.h"

namespace sft {

// Decides between a fresh start and a resume, and prepares output_dir accordingly:
//   resume: auto   the newest complete checkpoint in output_dir/checkpoints; none but an existing run:
//                  refuse unless --force (which starts fresh)
//   resume: never  fresh; an existing run is refused unless --force
//   resume: PATH   that checkpoint (output_dir is kept as is)
// Returns the checkpoint to resume from, if any. Throws sft::InputError for a refused run.
std::optional<std::filesystem::path> prepare_output_dir(const Config& config, bool force);


// Keeps the lines of a JSONL log whose "step" is <= `step` (a resumed run rewrites what came after).
void truncate_jsonl_after(const std::filesystem::path& path, int64_t step);

}  // namespace sft
