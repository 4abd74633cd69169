# tests/: one GoogleTest executable (sft_tests); golden data comes from scripts/make_golden*.py.
set(SFT_TEST_SOURCES
  tests/test_main.cpp
  tests/test_util.cpp
  tests/test_cuda_plugin.cpp
  tests/test_safetensors.cpp
  tests/test_safetensors_bad_input.cpp
  tests/test_model.cpp
  tests/test_named_tensors.cpp
  tests/test_tokenizer.cpp
  tests/test_tokenizer_components.cpp
  tests/test_data.cpp
  tests/test_data_formats.cpp
  tests/test_data_template.cpp
  tests/test_data_loader.cpp
  tests/test_attention.cpp
  tests/test_attention_cuda.cpp
  tests/test_attention_choice.cpp
  tests/test_config.cpp
  tests/test_train.cpp
  tests/test_train_freeze.cpp
  tests/test_train_precision.cpp
  tests/test_train_in_backward.cpp
  tests/test_lora_group.cpp
  tests/test_adapters.cpp
  tests/test_cli.cpp
)
list(APPEND SFT_TEST_SOURCES tests/test_generate.cpp tests/test_generate_batch.cpp)
list(APPEND SFT_TEST_SOURCES tests/test_checkpoint.cpp)
list(APPEND SFT_TEST_SOURCES tests/test_dist.cpp)  # multi-process pieces (the rest: tests/python/test_dist_torchrun.py)
list(APPEND SFT_TEST_SOURCES tests/launch_test_util.cpp tests/test_launch.cpp tests/test_launch_signals.cpp)  # sft launch
list(APPEND SFT_TEST_SOURCES tests/test_data_files.cpp tests/test_tensorboard.cpp)  # .json/.gz data; TensorBoard files
list(APPEND SFT_TEST_SOURCES tests/test_sdpa_cpu.cpp)  # `attention: sdpa` on CPU: LibTorch's flash kernel per document
list(APPEND SFT_TEST_SOURCES tests/test_fused_ops.cpp)  # fused RMSNorm / SwiGLU / RoPE / linear CE
list(APPEND SFT_TEST_SOURCES tests/test_fused_projections.cpp)  # q/k/v and gate/up (and LoRA A) as one GEMM
list(APPEND SFT_TEST_SOURCES tests/test_qlora_nf4.cpp tests/test_qlora.cpp tests/test_qlora_load.cpp)  # QLoRA: NF4 kernels, transform, training, merge, loading
list(APPEND SFT_TEST_SOURCES tests/test_dropout_linear.cpp)  # dropout fused into LoRA's A (Philox mask, never stored)
list(APPEND SFT_TEST_SOURCES tests/test_process_defaults.cpp)  # OpenMP default: busy cores at start
list(APPEND SFT_TEST_SOURCES tests/test_synth.cpp tests/test_synth_pipeline.cpp tests/test_synth_direction.cpp)  # sft synth
