// trainer/run_lock.cpp: the output_dir flock.
#include "trainer/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <stdexcept>

#include "common/errors.h"

namespace sft {

OutputDirLock::OutputDirLock(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const std::filesystem::path path = dir / ".sft.lock";
  fd_ = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
  if (fd_ < 0) throw std::runtime_error(path.string() + ": cannot open the run lock");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd_);
    throw InputError("output_dir '" + dir.string() + "' is in use by another running `sft train` (" + path.string() +
                     " is locked)");
  }
}

OutputDirLock::~OutputDirLock() { ::close(fd_); }

}  // namespace sft
