// trainer/train.h: `sft train`: setup -> the training loop -> final evaluation and export.
// The optimizer step itself is train_step() in train.cpp, one function that reads top to bottom.
#pragma once
#include <string>
#include <vector>

namespace sft {

int command_train(const std::vector<std::string>& args);

}  // namespace sft
