# data/: JSONL formats, chat templates, tokenize + mask, packing, resumable sampler, data report.
include(data/tokenizer_sources.cmake)  # SFT_TOKENIZER_SOURCES
set(SFT_DATA_SOURCES
  ${SFT_TOKENIZER_SOURCES}
  data/data_options.cpp
  data/formats.cpp
  data/text_source.cpp
  data/template.cpp
  data/dataset.cpp
  data/report.cpp
  data/packing.cpp
  data/loader.cpp
  data/pipeline.cpp
)
list(APPEND SFT_DATA_SOURCES data/tokenized.cpp)  # pre-tokenized format (lead)
