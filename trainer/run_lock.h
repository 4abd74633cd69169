// trainer/run_lock.h: one run per output_dir. Two processes saving and pruning the same checkpoints/
// would delete each other's files. An flock on output_dir/.sft.lock is released by the kernel when the
// process dies (even by SIGKILL), so a crashed run never leaves a stale lock behind. In a multi-process
// run only rank 0 takes it (rank 0 owns output_dir); the other ranks write only their own files inside
// a checkpoint's temp dir, which rank 0 created for them.
#pragma once
#include <filesystem>

namespace sft {

class OutputDirLock {
 public:
  // Throws sft::InputError when another process holds the lock.
  explicit OutputDirLock(const std::filesystem::path& dir);
  ~OutputDirLock();
  OutputDirLock(const OutputDirLock&) = delete;
  OutputDirLock& operator=(const OutputDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace sft
