// trainer/metrics.cpp: JSONL writers and the progress display.
#include "trainer/metrics.h"

#include <unistd.h>

#include <iostream>

namespace sft {

JsonlWriter::JsonlWriter(const std::filesystem::path& path, bool append)
    : out_(std::in_place, path, append ? TextFileWriter::Mode::kAppend : TextFileWriter::Mode::kTruncate) {}

void JsonlWriter::write(const nlohmann::json& line) {
  if (!out_) throw std::logic_error("JsonlWriter: write on a writer that was never opened");
  out_->write(line.dump() + "\n");
  out_->flush();
}

ProgressDisplay::ProgressDisplay(int64_t total_steps, bool enabled)
    : total_steps_(total_steps), bar_(enabled && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()), last_plain_(start_) {}

void ProgressDisplay::update(int64_t step, double loss, double lr, double tokens_per_s) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = step > 0 ? elapsed / step * (total_steps_ - step) : 0.0;
  char text[256];
  std::snprintf(text, sizeof(text), "step %lld/%lld  loss %.4f  lr %.3e  %.0f tok/s  eta %.0fs",
                static_cast<long long>(step), static_cast<long long>(total_steps_), loss, lr, tokens_per_s, eta);
  if (bar_) {
    const int width = 24;
    const int filled = total_steps_ ? static_cast<int>(width * step / total_steps_) : width;
    std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << text << "   "
              << std::flush;
  } else if (std::chrono::duration<double>(now - last_plain_).count() >= 10.0 || step == total_steps_ || step == 1) {
    std::cerr << text << "\n";
    last_plain_ = now;
  }
}

void ProgressDisplay::message(const std::string& line) {
  if (bar_) std::cerr << "\r\033[K";
  std::cerr << line << "\n";
}

void ProgressDisplay::finish() {
  if (bar_) std::cerr << "\n";
}

}  // namespace sft
