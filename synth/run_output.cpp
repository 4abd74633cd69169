// synth/run_output.cpp: the output file, its resume cursor and the report (see run_output.h).
#include "synth/run_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "common/errors.h"

namespace sft::synth {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

[[noreturn]] void system_error(const std::string& what, const fs::path& path) {
  throw std::runtime_error(what + " " + path.string() + ": " + std::strerror(errno));
}

void fsync_path(const fs::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) system_error("cannot open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) system_error("cannot fsync", path);
}

// Writes `text` to `path` atomically: a temp file beside it, fsynced, renamed, the directory fsynced.
void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
    file << text;
    file.flush();
    if (!file) system_error("cannot write", tmp);
  }
  fsync_path(tmp, O_RDONLY);
  fs::rename(tmp, path);
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::vector<std::string> differing_keys(const json& saved, const json& now) {
  std::vector<std::string> keys;
  for (auto it = now.begin(); it != now.end(); ++it) {
    if (!saved.contains(it.key()) || saved[it.key()] != it.value()) keys.push_back(it.key());
  }
  for (auto it = saved.begin(); it != saved.end(); ++it) {
    if (!now.contains(it.key())) keys.push_back(it.key());
  }
  return keys;
}

}  // namespace

int64_t Progress::rejected_total() const {
  int64_t total = 0;
  for (const auto& [reason, n] : rejected) total += n;
  return total;
}

json progress_to_json(const Progress& p) {
  return {{"step", p.step},         {"accepted", p.accepted},   {"prompts", p.prompts},
          {"candidates", p.candidates}, {"generated_tokens", p.generated_tokens},
          {"seconds", p.seconds},   {"rejected", p.rejected},   {"rejected_total", p.rejected_total()},
          {"complete", p.complete}};
}

Progress progress_from_json(const json& j) {
  Progress p;
  p.step = j.at("step").get<int64_t>();
  p.accepted = j.at("accepted").get<int64_t>();
  p.prompts = j.at("prompts").get<int64_t>();
  p.candidates = j.at("candidates").get<int64_t>();
  p.generated_tokens = j.at("generated_tokens").get<int64_t>();
  p.seconds = j.at("seconds").get<double>();
  p.rejected = j.at("rejected").get<std::map<std::string, int64_t>>();
  p.complete = j.at("complete").get<bool>();
  return p;
}

fs::path RunOutput::cursor_path(const fs::path& out) { return out.string() + ".cursor.json"; }
fs::path RunOutput::report_path(const fs::path& out) { return out.string() + ".report.json"; }

RunOutput::RunOutput(fs::path out, json args, bool resume, bool force) : out_(std::move(out)), args_(std::move(args)) {
  const fs::path cursor = cursor_path(out_);
  if (force) {
    fs::remove(out_);
    fs::remove(cursor);
    fs::remove(report_path(out_));
  }
  int64_t keep_bytes = 0;
  if (resume && fs::exists(cursor)) {
    json saved;
    try {
      std::ifstream in(cursor);
      saved = json::parse(in);
      progress_ = progress_from_json(saved.at("progress"));
      keep_bytes = saved.at("output_bytes").get<int64_t>();
    } catch (const std::exception& e) {
      throw InputError(cursor.string() + ": unreadable resume cursor (" + e.what() + "); use --force to start over");
    }
    const std::vector<std::string> keys = differing_keys(saved.value("args", json::object()), args_);
    if (!keys.empty()) {
      std::string list;
      for (const std::string& key : keys) list += (list.empty() ? "" : ", ") + key;
      throw InputError(out_.string() + ": --resume with other arguments than the run it continues (" + list +
                       "); give the same ones, or --force to start over");
    }
    if (!fs::exists(out_) || static_cast<int64_t>(fs::file_size(out_)) < keep_bytes) {
      throw InputError(out_.string() + ": shorter than its resume cursor says (" + std::to_string(keep_bytes) +
                       " bytes): the output was changed; use --force to start over");
    }
    resumed_ = true;
  } else if (fs::exists(out_)) {
    throw InputError(out_.string() + ": the output exists; pass --resume to continue it or --force to start over" +
                     std::string(resume ? " (it has no resume cursor " + cursor.string() + ")" : ""));
  }
  if (!out_.parent_path().empty()) fs::create_directories(out_.parent_path());
  fd_ = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError("--out: cannot write " + out_.string() + ": " + std::strerror(errno));
  // Lines after the cursor's size come from an interval that was never committed: the resumed run
  // writes them again.
  if (::ftruncate(fd_, keep_bytes) != 0 || ::lseek(fd_, keep_bytes, SEEK_SET) != keep_bytes) {
    system_error("cannot truncate", out_);
  }
  bytes_ = keep_bytes;
  if (resumed_) {
    std::ifstream in(out_, std::ios::binary);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      try {
        previous_lines_.push_back(json::parse(line));
      } catch (const json::parse_error&) {
        throw InputError(out_.string() + ":" + std::to_string(line_no) + ": not a JSON line; use --force to start over");
      }
    }
  }
  progress_.complete = false;
  seconds_before_ = progress_.seconds;
  // A fresh run gets its cursor at once, so a run killed before its first interval still resumes.
  if (!resumed_) commit();
}

RunOutput::~RunOutput() {
  if (fd_ >= 0) ::close(fd_);
}

void RunOutput::write(const json& line) {
  const std::string text = dump(line) + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) system_error("cannot write", out_);
    done += static_cast<size_t>(n);
  }
  bytes_ += static_cast<int64_t>(text.size());
}

void RunOutput::commit() {
  if (::fsync(fd_) != 0) system_error("cannot fsync", out_);
  progress_.seconds =
      seconds_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_).count();
  write_atomically(cursor_path(out_), dump({{"version", 1}, {"output_bytes", bytes_}, {"args", args_},
                                            {"progress", progress_to_json(progress_)}}) + "\n");
}

json RunOutput::finish() {
  commit();
  json report = progress_to_json(progress_);
  report["output"] = out_.string();
  report["args"] = args_;
  write_atomically(report_path(out_), report.dump(2) + "\n");
  return report;
}

std::string progress_line(const std::string& command, const Progress& p, int64_t goal) {
  std::ostringstream line;
  line << "[synth " << command << "] step " << p.step << " | accepted " << p.accepted;
  if (goal > 0) line << "/" << goal;
  line << " | rejected " << p.rejected_total();
  if (!p.rejected.empty()) {
    line << " (";
    bool first = true;
    for (const auto& [reason, n] : p.rejected) {
      line << (first ? "" : ", ") << reason << " " << n;
      first = false;
    }
    line << ")";
  }
  if (p.seconds > 0) line << " | " << std::fixed << std::setprecision(1) << p.generated_tokens / p.seconds << " tok/s";
  return line.str();
}

}  // namespace sft::synth
