// synth/completer.cpp: derive_seed (see completer.h).
#include "synth/completer.h"

namespace sft::synth {

uint64_t derive_seed(uint64_t seed, uint64_t stage, uint64_t step, uint64_t index) {
  auto mix = [](uint64_t z) {  // SplitMix64's finaliser
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  uint64_t h = mix(seed);
  for (uint64_t part : {stage, step, index}) h = mix(h ^ part);
  return h;
}

}  // namespace sft::synth
