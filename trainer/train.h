// trainer/train.h: `sft train`: setup -> the training loop -> final evaluation and export.
// The optimizer step itself is train_step() in train.cpp, one function that reads top to bottom.
// Checkpoints and resume (checkpoint.every_steps, SIGTERM/SIGINT, `resume: auto|never|PATH`,
// --ignore-fingerprint, the --stop-after-steps test hook) are described in trainer/checkpoint.h.
#pragma once
#include <string>
#include <vector>

namespace sft {

int command_train(const std::vector<std::string>& args);

}  // namespace sft
