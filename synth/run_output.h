// synth/run_output.h: the output of a synth run and its resume cursor.
//   OUT                 the JSONL, one accepted example per line, appended and fsynced at intervals
//   OUT.cursor.json     where the run is: the next step, the output's committed size, every counter and
//                       the run's arguments. Written atomically (temp + fsync + rename) right after the
//                       output is fsynced, so it never points past durable data.
//   OUT.report.json     the final report (also printed): accepted, rejected by reason, tokens, time.
// --resume truncates OUT to the cursor's committed size (dropping lines of an unfinished interval) and
// continues from its step. Every step draws its randomness from (seed, step) alone, so the resumed run
// writes the same lines the uninterrupted run would have: the final files are identical.
#pragma once
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sft::synth {

// Counters of a run, saved in the cursor and reported at the end.
struct Progress {
  int64_t step = 0;      // steps done (the next step to run)
  int64_t accepted = 0;  // lines in the output
  int64_t prompts = 0;   // prompts sent to the model for new instructions/prompts (or responses)
  int64_t candidates = 0;  // candidate examples judged
  int64_t generated_tokens = 0;
  double seconds = 0;    // decoding and filtering time, over every attempt
  std::map<std::string, int64_t> rejected;  // by reason (synth/filters.h reason::*)
  bool complete = false;  // the run reached its goal (else stopped by a limit or a signal)

  int64_t rejected_total() const;
  void reject(const std::string& reason) { ++rejected[reason]; }
};

class RunOutput {
 public:
  // `args`: everything that decides the output (command, models, files, flags); a resume with other
  // args is refused, naming the keys that differ. Throws sft::InputError when OUT exists without
  // --resume/--force, when the cursor is unreadable, or when OUT is shorter than the cursor says.
  // --force deletes OUT and its cursor and report first.
  RunOutput(std::filesystem::path out, nlohmann::json args, bool resume, bool force);
  ~RunOutput();
  RunOutput(const RunOutput&) = delete;
  RunOutput& operator=(const RunOutput&) = delete;

  bool resumed() const { return resumed_; }
  Progress& progress() { return progress_; }
  const Progress& progress() const { return progress_; }
  // The lines the output held when it was opened (after truncation to the cursor), parsed.
  const std::vector<nlohmann::json>& previous_lines() const { return previous_lines_; }

  void write(const nlohmann::json& line);  // one JSONL line, appended (durable at the next commit)
  void commit();                           // fsync OUT, then write the cursor
  // The report: progress plus the paths and args; written to OUT.report.json and returned.
  nlohmann::json finish();

  static std::filesystem::path cursor_path(const std::filesystem::path& out);
  static std::filesystem::path report_path(const std::filesystem::path& out);

 private:
  std::filesystem::path out_;
  nlohmann::json args_;
  Progress progress_;
  std::vector<nlohmann::json> previous_lines_;
  int fd_ = -1;
  int64_t bytes_ = 0;  // bytes written to OUT so far
  bool resumed_ = false;
  std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();
  double seconds_before_ = 0;  // progress.seconds at open
};

nlohmann::json progress_to_json(const Progress& progress);
Progress progress_from_json(const nlohmann::json& json);

// One line of progress: "[synth evol] step 12 | accepted 30/100 | rejected 45 (too_similar 20, ...) | 85 tok/s".
std::string progress_line(const std::string& command, const Progress& progress, int64_t goal);

}  // namespace sft::synth
