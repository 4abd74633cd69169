// trainer/process_defaults.cpp: the OpenMP wait policy and malloc tuning that `sft` applies at start, and
// their report for `sft --version`. Measured in scripts/bench_runtime.sh; the decision is in README
// "Training throughput".
#include "trainer/process_defaults.h"

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace sft {
namespace {

// Set by us (never by users) when the OpenMP default came from sft, so the report can say so.
constexpr const char* kOpenMpDefaultMarker = "SFT_OPENMP_DEFAULTED";
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

}  // namespace

void apply_process_defaults(char** argv) {
  if (malloc_tuning_wanted()) {
    mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kMallocTrimThreshold);
  }
  if (env_set("OMP_WAIT_POLICY") || env_set("GOMP_SPINCOUNT")) return;  // the user's choice, or already re-executed
  // Once, before LibTorch does any work: the re-executed process finds OMP_WAIT_POLICY set and goes on.
  setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv(kOpenMpDefaultMarker, "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): run with libgomp's defaults, and do not claim otherwise.
  unsetenv("OMP_WAIT_POLICY");
  unsetenv(kOpenMpDefaultMarker);
}

void remove_process_default_variables(std::map<std::string, std::string>& env) {
  if (env.count(kOpenMpDefaultMarker) == 0) return;  // OMP_WAIT_POLICY, if any, is the user's
  env.erase(kOpenMpDefaultMarker);
  env.erase("OMP_WAIT_POLICY");
}

std::string process_defaults_report() {
  std::string openmp = "OpenMP (libgomp) wait policy: ";
  if (env_set(kOpenMpDefaultMarker) && env_set("OMP_WAIT_POLICY")) {
    openmp += "passive (sft's default; set OMP_WAIT_POLICY or GOMP_SPINCOUNT to choose)";
  } else if (env_set("OMP_WAIT_POLICY") || env_set("GOMP_SPINCOUNT")) {
    openmp += std::string("from the environment: OMP_WAIT_POLICY=") +
              (env_set("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "unset") +
              " GOMP_SPINCOUNT=" + (env_set("GOMP_SPINCOUNT") ? std::getenv("GOMP_SPINCOUNT") : "unset");
  } else {
    openmp += "libgomp's default (sft could not re-execute itself)";
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
