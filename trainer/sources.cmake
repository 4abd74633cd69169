# trainer/: config, command line, commands, the training loop, checkpoints, metrics.
set(SFT_TRAINER_SOURCES
  trainer/config.cpp
  trainer/cli.cpp
  trainer/commands.cpp
  trainer/setup.cpp
  trainer/optimizer.cpp
  trainer/evaluate.cpp
  trainer/metrics.cpp
  trainer/export.cpp
  trainer/train.cpp
  trainer/eval_command.cpp
)
list(APPEND SFT_TRAINER_SOURCES trainer/generate_command.cpp)  # sft generate
list(APPEND SFT_TRAINER_SOURCES trainer/checkpoint.cpp trainer/merge_command.cpp)  # checkpoints, sft merge
list(APPEND SFT_TRAINER_SOURCES trainer/launch.cpp trainer/launch_process.cpp)  # sft launch
list(APPEND SFT_TRAINER_SOURCES trainer/train_logs.cpp trainer/version.cpp)  # run logs (JSONL + TensorBoard), sft --version
# trainer/tensorboard.cpp is its own library (sft_tensorboard, CMakeLists.txt): it must not see LibTorch's protobuf headers.
