// trainer/rank_checks.h: start-up agreement between the ranks of a multi-process run, before the first
// step. Every rank publishes the sha256 of its resolved config, of its run fingerprint (model config,
// tokenizer, data files) and of its initial trainable weights through the store; every rank then
// compares all of them with rank 0's, so on any mismatch EVERY rank throws the same sft::InputError
// (exit 2) naming the rank and what differs. A rank that never publishes (it failed earlier) makes the
// others fail after dist.timeout_s. Nothing happens in a world of one.
#pragma once
#include <nlohmann/json.hpp>
#include <functional>
#include <string>
#include <vector>

#include "trainer/optimizer.h"
#include "trainer/process_group.h"

namespace sft {

struct RankIdentity {
  std::string config_yaml;       // the resolved config (its differing lines are named on a mismatch)
  nlohmann::json fingerprint;    // run_fingerprint()
  std::string weights_sha256;    // trainable_weights_sha256()
};

// sha256 over the names, shapes, dtypes and bytes of the trainable parameters, in order.
std::string trainable_weights_sha256(const std::vector<NamedParameter>& params);

void check_ranks_agree(Collectives& group, const RankIdentity& mine);

// Runs `decide` on rank 0 only and shares its outcome: the returned string, or its sft::InputError (which
// every rank then throws with the same message, so all exit 2), or another error (every rank exits 1).
std::string decide_on_main(Collectives& group, const std::string& key, const std::function<std::string()>& decide);

}  // namespace sft
