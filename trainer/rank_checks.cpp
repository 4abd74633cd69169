// trainer/rank_checks.cpp: config / fingerprint / initial-weight agreement and rank-0 decisions.
#include "trainer/rank_checks.h"

#include <set>
#include <sstream>

#include "common/errors.h"
#include "trainer/checkpoint.h"

namespace sft {
using nlohmann::json;

std::string trainable_weights_sha256(const std::vector<NamedParameter>& params) {
  std::string bytes;
  for (const NamedParameter& p : params) {
    const at::Tensor cpu = p.tensor.detach().to(at::kCPU).contiguous();
    bytes += p.name + c10::str(cpu.sizes()) + c10::toString(cpu.scalar_type());
    bytes.append(static_cast<const char*>(cpu.data_ptr()), static_cast<size_t>(cpu.nbytes()));
  }
  return sha256_hex(bytes.data(), bytes.size());
}

namespace {

// Lines of `a` missing from `b` and the reverse, for a readable config mismatch.
std::string line_differences(const std::string& mine, const std::string& main) {
  auto lines = [](const std::string& text) {
    std::multiset<std::string> out;
    std::stringstream in(text);
    for (std::string line; std::getline(in, line);) out.insert(line);
    return out;
  };
  const auto a = lines(mine), b = lines(main);
  std::string out;
  for (const std::string& line : a) {
    if (!b.count(line)) out += "\n      this rank: " + line;
  }
  for (const std::string& line : b) {
    if (!a.count(line)) out += "\n      rank 0:    " + line;
  }
  return out;
}

}  // namespace

void check_ranks_agree(Collectives& group, const RankIdentity& mine) {
  if (!group.distributed()) return;
  const json published = {{"config_yaml", mine.config_yaml},
                          {"config_sha256", sha256_hex(mine.config_yaml.data(), mine.config_yaml.size())},
                          {"fingerprint", mine.fingerprint},
                          {"weights_sha256", mine.weights_sha256}};
  const std::vector<std::string> all = group.exchange("startup-check", published.dump());
  const json main = json::parse(all[0]);
  std::vector<std::string> problems;
  for (size_t r = 1; r < all.size(); ++r) {
    const json other = json::parse(all[r]);
    const std::string rank = "rank " + std::to_string(r);
    if (other["config_sha256"] != main["config_sha256"]) {
      problems.push_back(rank + ": the resolved config differs from rank 0's:" +
                         line_differences(other["config_yaml"].get<std::string>(), main["config_yaml"].get<std::string>()));
    }
    for (const std::string& change : fingerprint_differences(other["fingerprint"], main["fingerprint"])) {
      problems.push_back(rank + ": its inputs differ from rank 0's: " + change);
    }
    if (other["weights_sha256"] != main["weights_sha256"]) {
      problems.push_back(rank + ": the initial trainable weights differ from rank 0's (sha256 " +
                         other["weights_sha256"].get<std::string>().substr(0, 12) + " vs " +
                         main["weights_sha256"].get<std::string>().substr(0, 12) + ")");
    }
  }
  if (!problems.empty()) {
    std::string message = "the ranks of this job disagree (every rank stops):";
    for (const std::string& p : problems) message += "\n  - " + p;
    throw InputError(message);
  }
}

std::string decide_on_main(Collectives& group, const std::string& key, const std::function<std::string()>& decide) {
  if (!group.distributed()) return decide();
  std::string outcome;
  std::exception_ptr failure;
  if (group.is_main()) {
    try {
      outcome = "ok:" + decide();
    } catch (const InputError& e) {
      outcome = std::string("input-error:") + e.what();
      failure = std::current_exception();
    } catch (const std::exception& e) {
      outcome = std::string("error:") + e.what();
      failure = std::current_exception();
    }
  }
  outcome = group.broadcast_from_main(key, outcome);
  if (failure) std::rethrow_exception(failure);
  if (outcome.rfind("ok:", 0) == 0) return outcome.substr(3);
  if (outcome.rfind("input-error:", 0) == 0) throw InputError(outcome.substr(12));
  throw std::runtime_error("rank 0 failed: " + outcome.substr(6));
}

}  // namespace sft
