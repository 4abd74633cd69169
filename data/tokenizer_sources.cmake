# data/ tokenizers: SentencePiece backend and the native tokenizer.json implementation (data/tokenizer/).
set(SFT_TOKENIZER_SOURCES
  data/tokenizer.cpp
  data/tokenizer_hf.cpp
  data/tokenizer_sp.cpp
  data/tokenizer/regex.cpp
  data/tokenizer/unicode.cpp
)
