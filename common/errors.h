// common/errors.h: the two error kinds every area throws. InputError means the user's input (a file, a
// config key, a tensor in a checkpoint) is wrong: `main` prints it and exits 2. Anything else exits 1.
// Messages always name the culprit: file[:line], key or tensor.
#pragma once
#include <stdexcept>
#include <string>

namespace sft {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace sft
