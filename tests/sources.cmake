# tests/: one GoogleTest executable (sft_tests); golden data comes from scripts/make_golden*.py.
set(SFT_TEST_SOURCES
  tests/test_util.cpp
  tests/test_safetensors.cpp
  tests/test_model.cpp
  tests/test_tokenizer.cpp
  tests/test_data.cpp
  tests/test_attention.cpp
  tests/test_attention_cuda.cpp
  tests/test_config.cpp
  tests/test_train.cpp
  tests/test_cli.cpp
)
list(APPEND SFT_TEST_SOURCES tests/test_generate.cpp)
list(APPEND SFT_TEST_SOURCES tests/test_checkpoint.cpp)
list(APPEND SFT_TEST_SOURCES tests/launch_test_util.cpp tests/test_launch.cpp tests/test_launch_signals.cpp)  # sft launch
list(APPEND SFT_TEST_SOURCES tests/test_fused_ops.cpp)  # fused RMSNorm / SwiGLU / RoPE / linear CE
