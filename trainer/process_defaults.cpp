// trainer/process_defaults.cpp: the OpenMP wait policy and malloc tuning that `sft` applies at start, and
// their report for `sft --version`. Measured in scripts/bench_runtime.sh; the decision is in README
// "Training throughput": libgomp's own spin-then-sleep wait when the machine is idle at start (2x the
// tokens/s of a passive wait there), passive when other processes already keep a core busy (libgomp's
// spinning threads then take the time slices the working threads need: 4-14x slower).
#include "trainer/process_defaults.h"

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace sft {
namespace {

// Set by us (never by users) when the OpenMP default came from sft: its value is the report's reason
// ("passive: 1.2 of 2 cores busy at start"), so the re-executed process can say why.
constexpr const char* kOpenMpDefaultMarker = "SFT_OPENMP_DEFAULTED";
// How long the start-up look at /proc/stat lasts: 10 scheduler ticks at 100 Hz, per core.
constexpr auto kBusySample = std::chrono::milliseconds(100);
// Fixed thresholds: glibc's default mmap threshold starts at 128 KiB and adapts, and its trim threshold
// (2x that) hands the top of the heap back to the kernel after every step, so the next step's
// activations fault in freshly zeroed pages again (clear_page_erms in the profile). 32 MiB is glibc's
// largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); 1 GiB of free heap top is kept.
constexpr int kMallocMmapThreshold = 32 << 20;
constexpr int kMallocTrimThreshold = 1 << 30;

bool env_set(const char* name) {
  const char* value = std::getenv(name);
  return value && *value;
}

// Which malloc serves this process: jemalloc or tcmalloc when linked or preloaded, else glibc's.
std::string allocator_name() {
  using Mallctl = int (*)(const char*, void*, size_t*, void*, size_t);
  if (auto mallctl = reinterpret_cast<Mallctl>(dlsym(RTLD_DEFAULT, "mallctl"))) {
    const char* version = nullptr;
    size_t size = sizeof(version);
    if (mallctl("version", &version, &size, nullptr, 0) == 0 && version) return std::string("jemalloc ") + version;
    return "jemalloc";
  }
  using TcVersion = const char* (*)(int*, int*, const char**);
  if (auto tc_version = reinterpret_cast<TcVersion>(dlsym(RTLD_DEFAULT, "tc_version"))) {
    const char* version = tc_version(nullptr, nullptr, nullptr);
    return version ? std::string(version) : std::string("tcmalloc");
  }
  return std::string("glibc ") + gnu_get_libc_version();
}

// mallopt tuning applies to glibc's malloc only, and SFT_MALLOC_TUNING=off turns it off.
bool malloc_tuning_wanted() {
  const char* value = std::getenv("SFT_MALLOC_TUNING");
  if (value && std::strcmp(value, "off") == 0) return false;
  return allocator_name().rfind("glibc", 0) == 0;
}

std::string read_proc_stat() {
  std::ifstream in("/proc/stat");
  std::string first_line;
  std::getline(in, first_line);
  return first_line;
}

std::string format_cores(double cores) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", cores);
  return text;
}

}  // namespace

std::optional<double> busy_cores_between(const std::string& stat_before, const std::string& stat_after,
                                         long online_cores) {
  // "cpu  user nice system idle iowait irq softirq steal guest guest_nice", in ticks since boot.
  auto parse = [](const std::string& line, long long& total, long long& idle) {
    std::istringstream in(line);
    std::string label;
    if (!(in >> label) || label != "cpu") return false;
    long long field = 0;
    total = idle = 0;
    for (int i = 0; i < 8 && in >> field; ++i) {  // guest time is already inside user and nice
      total += field;
      if (i == 3 || i == 4) idle += field;  // idle, iowait
    }
    return total > 0;
  };
  long long total0 = 0, idle0 = 0, total1 = 0, idle1 = 0;
  if (online_cores < 1 || !parse(stat_before, total0, idle0) || !parse(stat_after, total1, idle1)) return {};
  const long long total = total1 - total0, idle = idle1 - idle0;
  if (total <= 0 || idle < 0 || idle > total) return {};
  return static_cast<double>(total - idle) / static_cast<double>(total) * static_cast<double>(online_cores);
}

bool wants_passive_wait(double busy_cores) { return busy_cores >= kBusyCoresForPassiveWait; }

void apply_process_defaults(char** argv) {
  if (malloc_tuning_wanted()) {
    mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kMallocTrimThreshold);
  }
  // The user's choice, or our own decision already made (then we are the re-executed image).
  if (env_set("OMP_WAIT_POLICY") || env_set("GOMP_SPINCOUNT") || env_set(kOpenMpDefaultMarker)) return;
  // How busy the machine is before we do anything: other processes' CPU time over kBusySample.
  const std::string before = read_proc_stat();
  std::this_thread::sleep_for(kBusySample);
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  const std::optional<double> busy = busy_cores_between(before, read_proc_stat(), online);
  const std::string of_cores = busy ? format_cores(*busy) + " of " + std::to_string(online) + " cores busy at start"
                                    : std::string("/proc/stat unreadable");
  if (!busy || !wants_passive_wait(*busy)) {
    // Idle: libgomp's own default (spin, then sleep) is what LibTorch already runs with; nothing to redo.
    setenv(kOpenMpDefaultMarker, ("libgomp's default, spin then sleep (sft's default on an idle machine: " + of_cores +
                                  "; set OMP_WAIT_POLICY or GOMP_SPINCOUNT to choose)").c_str(), 1);
    return;
  }
  // Busy: once, before LibTorch does any work; the re-executed process finds the marker and goes on.
  setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv(kOpenMpDefaultMarker, ("passive (sft's default on a busy machine: " + of_cores +
                                "; set OMP_WAIT_POLICY or GOMP_SPINCOUNT to choose)").c_str(), 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): run with libgomp's defaults, and do not claim otherwise.
  unsetenv("OMP_WAIT_POLICY");
  unsetenv(kOpenMpDefaultMarker);
}

void release_free_heap_pages() {
  if (allocator_name().rfind("glibc", 0) == 0) malloc_trim(0);
}

void remove_process_default_variables(std::map<std::string, std::string>& env) {
  if (env.count(kOpenMpDefaultMarker) == 0) return;  // OMP_WAIT_POLICY, if any, is the user's
  env.erase(kOpenMpDefaultMarker);
  env.erase("OMP_WAIT_POLICY");
}

std::string process_defaults_report() {
  std::string openmp = "OpenMP (libgomp) wait policy: ";
  if (env_set(kOpenMpDefaultMarker)) {
    openmp += std::getenv(kOpenMpDefaultMarker);
  } else if (env_set("OMP_WAIT_POLICY") || env_set("GOMP_SPINCOUNT")) {
    openmp += std::string("from the environment: OMP_WAIT_POLICY=") +
              (env_set("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "unset") +
              " GOMP_SPINCOUNT=" + (env_set("GOMP_SPINCOUNT") ? std::getenv("GOMP_SPINCOUNT") : "unset");
  } else {
    openmp += "libgomp's default (sft could not re-execute itself with its passive default)";
  }
  std::string memory = "malloc: " + allocator_name();
  if (malloc_tuning_wanted()) {
    memory += ", mmap threshold " + std::to_string(kMallocMmapThreshold >> 20) + " MiB, trim threshold " +
              std::to_string(kMallocTrimThreshold >> 20) + " MiB (sft's mallopt; SFT_MALLOC_TUNING=off: glibc's)";
  } else if (allocator_name().rfind("glibc", 0) == 0) {
    memory += ", glibc's own thresholds (SFT_MALLOC_TUNING=off)";
  }
  return openmp + "\n" + memory + "\n";
}

}  // namespace sft
