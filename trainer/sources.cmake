# trainer/: config, command line, commands, the training loop, checkpoints, metrics.
set(SFT_TRAINER_SOURCES
  trainer/config.cpp
  trainer/cli.cpp
  trainer/commands.cpp
  trainer/setup.cpp
  trainer/optimizer.cpp
  trainer/step_in_backward.cpp
  trainer/evaluate.cpp
  trainer/metrics.cpp
  trainer/export.cpp
  trainer/train.cpp
  trainer/eval_command.cpp
)
list(APPEND SFT_TRAINER_SOURCES trainer/generate_command.cpp)  # sft generate
list(APPEND SFT_TRAINER_SOURCES trainer/checkpoint.cpp trainer/merge_command.cpp)  # checkpoints, sft merge
# Multi-process training (issue 11): torchrun's environment, the c10d process group, gradient buckets.
list(APPEND SFT_TRAINER_SOURCES trainer/process_group.cpp trainer/grad_sync.cpp trainer/run_dir.cpp trainer/run_lock.cpp trainer/stop_signals.cpp
     trainer/trainer_state.cpp trainer/rank_checks.cpp)
# ProcessGroupGloo.hpp is compiled out unless USE_C10D_GLOO is set (torch builds it in); its gloo headers
# come from Debian's libgloo-dev. ProcessGroupNCCL.hpp needs USE_C10D_NCCL and nccl.h from the
# nvidia-nccl wheel that torch installs beside itself (set in CMakeLists.txt when CUDA is on).
set(SFT_PROCESS_GROUP_SOURCE trainer/process_group.cpp)
list(APPEND SFT_TRAINER_SOURCES trainer/launch.cpp trainer/launch_process.cpp)  # sft launch
list(APPEND SFT_TRAINER_SOURCES trainer/train_logs.cpp trainer/version.cpp)  # run logs (JSONL + TensorBoard), sft --version
list(APPEND SFT_TRAINER_SOURCES trainer/process_defaults.cpp)  # OpenMP wait policy + malloc tuning at start
# trainer/tensorboard.cpp is its own library (sft_tensorboard, CMakeLists.txt): it must not see LibTorch's protobuf headers.
