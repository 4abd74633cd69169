// common/text_file.h: the one checked writer of text outputs (JSON, YAML, JSONL). Opening, every write
// and the final flush are checked; a failure throws std::runtime_error naming the file and the reason
// (errno's text, e.g. "No space left on device"), so no output is ever silently short.
#pragma once
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sft {

// A text file written piece by piece (a JSONL log, examples, decoded outputs).
class TextFileWriter {
 public:
  enum class Mode { kTruncate, kAppend };

  explicit TextFileWriter(const std::filesystem::path& path, Mode mode = Mode::kTruncate)
      : path_(path) {
    errno = 0;
    out_.open(path, std::ios::binary | (mode == Mode::kAppend ? std::ios::app : std::ios::trunc));
    if (!out_) fail("cannot open for writing");
  }

  void write(std::string_view text) {
    errno = 0;
    out_.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!out_) fail("cannot write");
  }
  // Pushes what was written to the OS (a killed process then keeps it).
  void flush() {
    errno = 0;
    out_.flush();
    if (!out_) fail("cannot write");
  }
  void close() {
    errno = 0;
    out_.close();
    if (!out_) fail("cannot write");
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    const int saved = errno;
    throw std::runtime_error(path_.string() + ": " + what + (saved ? std::string(" (") + std::strerror(saved) + ")" : ""));
  }

  std::filesystem::path path_;
  std::ofstream out_;
};

// Writes `text` as the whole of `path` (replacing it), checked as above.
inline void write_text_file(const std::filesystem::path& path, std::string_view text) {
  TextFileWriter out(path);
  out.write(text);
  out.close();
}

}  // namespace sft
