# data/ tokenizers: the loader, the SentencePiece backend and the tokenizer.json backend with its
# pipeline components (data/tokenizer/, one per file, as HF `tokenizers` is organised).
set(SFT_TOKENIZER_SOURCES
  data/tokenizer.cpp
  data/tokenizer_hf.cpp
  data/tokenizer_sp.cpp
  data/tokenizer/added_tokens.cpp
  data/tokenizer/bpe_model.cpp
  data/tokenizer/byte_level.cpp
  data/tokenizer/decoders.cpp
  data/tokenizer/json_fields.cpp
  data/tokenizer/normalized_text.cpp
  data/tokenizer/normalizers.cpp
  data/tokenizer/pre_tokenizers.cpp
  data/tokenizer/regex.cpp
  data/tokenizer/unicode.cpp
)
