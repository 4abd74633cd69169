# model/: architecture, config.json, weights (safetensors + name table), LoRA/freeze transforms.
set(SFT_MODEL_SOURCES
  model/config.cpp
  model/safetensors_header.cpp
  model/safetensors.cpp
  model/named_tensors.cpp
  model/weights.cpp
  model/llama.cpp
  model/checkpointing.cpp
  model/kv_cache.cpp
  model/lora.cpp
  model/lora_init.cpp
  model/quantize.cpp
)
list(APPEND SFT_MODEL_SOURCES model/generate.cpp)  # KV-cache decoding
