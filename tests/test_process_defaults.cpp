// tests/test_process_defaults.cpp: the start-up decision behind sft's OpenMP default
// (trainer/process_defaults.cpp): busy cores from two /proc/stat lines, and the passive-or-spin rule.
// The end-to-end check (libgomp's own report of what it parsed) is tests/python/test_process_defaults.py.
#include <gtest/gtest.h>

#include "trainer/process_defaults.h"

namespace sft {
namespace {

// user nice system idle iowait irq softirq steal guest guest_nice
constexpr const char* kBefore = "cpu  1000 10 500 8000 100 0 20 0 0 0";

TEST(ProcessDefaults, BusyCoresAreTheNonIdleShareTimesTheOnlineCores) {
  // +60 user, +10 system, +120 idle, +10 iowait: 70 busy of 200 ticks on 2 cores = 0.7 cores.
  const auto busy = busy_cores_between(kBefore, "cpu  1060 10 510 8120 110 0 20 0 0 0", 2);
  ASSERT_TRUE(busy.has_value());
  EXPECT_NEAR(*busy, 0.7, 1e-12);
  EXPECT_TRUE(wants_passive_wait(*busy));
  // Guest time is already counted in user: a guest column that moved changes nothing.
  const auto with_guest = busy_cores_between(kBefore, "cpu  1060 10 510 8120 110 0 20 0 50 0", 2);
  ASSERT_TRUE(with_guest.has_value());
  EXPECT_NEAR(*with_guest, 0.7, 1e-12);
}

TEST(ProcessDefaults, AnIdleMachineKeepsLibgompsSpin) {
  // 4 busy ticks of 200 on 2 cores (the sampling sft itself, a shell): 0.04 cores.
  const auto busy = busy_cores_between(kBefore, "cpu  1003 10 501 8190 106 0 20 0 0 0", 2);
  ASSERT_TRUE(busy.has_value());
  EXPECT_NEAR(*busy, 0.04, 1e-12);
  EXPECT_FALSE(wants_passive_wait(*busy));
  EXPECT_FALSE(wants_passive_wait(kBusyCoresForPassiveWait - 0.01));
  EXPECT_TRUE(wants_passive_wait(kBusyCoresForPassiveWait));
}

TEST(ProcessDefaults, UnparsableOrTimelessSamplesGiveNoAnswer) {
  EXPECT_FALSE(busy_cores_between(kBefore, kBefore, 2).has_value());               // no tick passed
  EXPECT_FALSE(busy_cores_between("", kBefore, 2).has_value());                    // empty /proc/stat
  EXPECT_FALSE(busy_cores_between("cpu0 1 2 3 4 5", kBefore, 2).has_value());      // a per-core line
  EXPECT_FALSE(busy_cores_between(kBefore, "cpu  900 10 500 8000 100 0 20 0 0 0", 2).has_value());  // clock went back
  EXPECT_FALSE(busy_cores_between(kBefore, "cpu  1060 10 510 8120 110 0 20 0 0 0", 0).has_value());  // no cores
}

}  // namespace
}  // namespace sft
