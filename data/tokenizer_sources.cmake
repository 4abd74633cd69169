# data/ tokenizers: SentencePiece backend and the native tokenizer.json implementation.
set(SFT_TOKENIZER_SOURCES
  data/tokenizer.cpp
  data/tokenizer_hf.cpp
  data/tokenizer_sp.cpp
  data/tokenizer_regex.cpp
  data/unicode.cpp
)
