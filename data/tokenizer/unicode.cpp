// data/tokenizer/unicode.cpp: UTF-8 helpers, White_Space / Number on utf8proc's categories, and the
// chunked normalization of data/tokenizer/unicode.h (utf8proc decomposes, reorders and composes).
#include "data/tokenizer/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <stdexcept>

#include "data/tokenizer/unicode_alignment.h"

namespace sft::data::tokenizer {
namespace {

// Hangul syllables are composed algorithmically (no table entry): vowel and trailing jamo compose
// onto what precedes them.
constexpr uint32_t kHangulVFirst = 0x1161, kHangulVLast = 0x1175;
constexpr uint32_t kHangulTFirst = 0x11A8, kHangulTLast = 0x11C2;
constexpr uint32_t kHangulSFirst = 0xAC00, kHangulSLast = 0xD7A3;

int combining_class(uint32_t cp) { return utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class; }

// Length of the valid UTF-8 sequence at s (1..4), or 0 with *valid_prefix set to how many of its
// leading bytes could still begin a valid sequence (the "maximal subpart" Rust's lossy decoding uses).
size_t utf8_sequence(const unsigned char* s, size_t n, size_t* valid_prefix) {
  unsigned char b0 = s[0];
  *valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (k >= n) return 0;
    unsigned char b = s[k];
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    *valid_prefix = k + 1;
  }
  return need + 1;
}

}  // namespace

uint32_t decode_utf8(const char* s, size_t n, size_t* length) {
  // Our own decoder: utf8proc_iterate would do, but it is a library call per character in the BPE
  // loop, and it does not say how long an invalid sequence is.
  const auto* u = reinterpret_cast<const unsigned char*>(s);
  if (u[0] < 0x80) {
    *length = 1;
    return u[0];
  }
  size_t prefix;
  size_t len = utf8_sequence(u, n, &prefix);
  if (len == 0) {
    *length = 1;
    return kReplacementChar;
  }
  *length = len;
  if (len == 2) return ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
  if (len == 3) return ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
  return ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
}

void append_utf8(std::string& out, uint32_t cp) {
  utf8proc_uint8_t buf[4];
  utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    size_t prefix;
    size_t len = utf8_sequence(u + i, bytes.size() - i, &prefix);
    if (len) {
      out.append(bytes.data() + i, len);
      i += len;
    } else {
      append_utf8(out, kReplacementChar);
      i += prefix;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0, prefix; i < bytes.size();) {
    size_t len = utf8_sequence(u + i, bytes.size() - i, &prefix);
    if (!len) return false;
    i += len;
  }
  return true;
}

void decode_all(std::string_view s, std::vector<uint32_t>& cps, std::vector<size_t>& byte_pos) {
  for (size_t i = 0; i < s.size();) {
    size_t len;
    cps.push_back(decode_utf8(s.data() + i, s.size() - i, &len));
    byte_pos.push_back(i);
    i += len;
  }
  byte_pos.push_back(s.size());
}

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= '\t' && cp <= '\r');
  if (cp == 0x85) return true;  // NEL: White_Space although its category is Cc
  utf8proc_category_t c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  utf8proc_category_t c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO ||
         alignment::contains(alignment::kExtraNumbers, cp);
}

bool is_word(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return alignment::contains(alignment::kExtraLetters, cp);
  }
}

// ---------------------------------------------------------------- normalization
UnicodeNormalization::UnicodeNormalization(NormalForm form) : form_(form) {
  const bool compat = form == NormalForm::kNFKC || form == NormalForm::kNFKD;
  const bool compose = form == NormalForm::kNFC || form == NormalForm::kNFKC;
  options_ = UTF8PROC_STABLE | (compose ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE) | (compat ? UTF8PROC_COMPAT : 0);
  // The second character of every primary composite: a canonical pair decomposition of a starter
  // that is not excluded from composition. (utf8proc keeps this in an internal table.)
  for (uint32_t cp = 0xC0; cp < 0x110000; ++cp) {
    const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
    if (p->decomp_type != 0 || p->decomp_seqindex == UINT16_MAX || p->comp_exclusion || p->combining_class != 0) {
      continue;
    }
    utf8proc_int32_t parts[8];
    int boundclass = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), parts, 8, UTF8PROC_DECOMPOSE,
                                                 &boundclass);
    if (n >= 2 && combining_class(static_cast<uint32_t>(parts[0])) == 0) {
      composes_backward_.push_back(static_cast<uint32_t>(parts[n - 1]));
    }
  }
  for (uint32_t cp = kHangulVFirst; cp <= kHangulVLast; ++cp) composes_backward_.push_back(cp);
  for (uint32_t cp = kHangulTFirst; cp <= kHangulTLast; ++cp) composes_backward_.push_back(cp);
  std::sort(composes_backward_.begin(), composes_backward_.end());
  composes_backward_.erase(std::unique(composes_backward_.begin(), composes_backward_.end()), composes_backward_.end());
}

bool UnicodeNormalization::composes_backward(uint32_t cp) const {
  return std::binary_search(composes_backward_.begin(), composes_backward_.end(), cp);
}

// Whether normalization can never reach across the boundary before cp: cp is a starter that cannot
// compose with what precedes it, and neither can the first character of its decomposition.
bool UnicodeNormalization::is_boundary_before(uint32_t cp) const {
  if (cp < 0x300) return true;
  if (combining_class(cp) != 0 || composes_backward(cp)) return false;
  utf8proc_int32_t parts[32];
  int boundclass = 0;
  const bool compat = form_ == NormalForm::kNFKC || form_ == NormalForm::kNFKD;
  utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), parts, 32,
                                               static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0)),
                                               &boundclass);
  if (n < 1) return true;
  auto first = static_cast<uint32_t>(parts[0]);
  return combining_class(first) == 0 && !composes_backward(first);
}

bool UnicodeNormalization::unchanged_alone(uint32_t cp) const {
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  if (p->combining_class != 0) return false;
  const bool compat = form_ == NormalForm::kNFKC || form_ == NormalForm::kNFKD;
  const bool decompose = form_ == NormalForm::kNFD || form_ == NormalForm::kNFKD;
  if (decompose && cp >= kHangulSFirst && cp <= kHangulSLast) return false;
  return p->decomp_seqindex == UINT16_MAX || (!compat && p->decomp_type != 0);
}

void UnicodeNormalization::normalize_chunk(std::string_view chunk, std::string& out) const {
  size_t first_length;
  uint32_t first = decode_utf8(chunk.data(), chunk.size(), &first_length);
  if (first_length == chunk.size() && unchanged_alone(first)) {  // most chunks: one character, kept
    out.append(chunk);
    return;
  }
  // Decompose + canonical reordering, then composition, as utf8proc_map does (without its malloc).
  utf8proc_int32_t local[64];
  std::vector<utf8proc_int32_t> heap;
  utf8proc_int32_t* buf = local;
  utf8proc_ssize_t capacity = 64;
  const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(chunk.data());
  const auto size = static_cast<utf8proc_ssize_t>(chunk.size());
  const auto options = static_cast<utf8proc_option_t>(options_);
  utf8proc_ssize_t n = utf8proc_decompose(bytes, size, buf, capacity, options);
  if (n > capacity) {
    heap.resize(static_cast<size_t>(n));
    buf = heap.data();
    n = utf8proc_decompose(bytes, size, buf, n, options);
  }
  if (n < 0) throw std::runtime_error(std::string("utf8proc: ") + utf8proc_errmsg(n));
  n = utf8proc_normalize_utf32(buf, n, options);
  for (utf8proc_ssize_t i = 0; i < n; ++i) append_utf8(out, static_cast<uint32_t>(buf[i]));
}

bool UnicodeNormalization::normalize(std::string_view in, std::string& out, std::vector<NormalizedRun>& runs) const {
  runs.clear();
  if (std::all_of(in.begin(), in.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    out.assign(in.data(), in.size());
    return false;
  }
  out.clear();
  out.reserve(in.size() + 8);
  std::string piece;
  size_t chunk_begin = 0;
  bool changed = false;
  // Normalizes the chunk [chunk_begin, end) and copies it, or records a rewritten run.
  auto flush = [&](size_t end) {
    if (end == chunk_begin) return;
    std::string_view original = in.substr(chunk_begin, end - chunk_begin);
    piece.clear();
    normalize_chunk(original, piece);
    if (piece != original) {
      runs.push_back({chunk_begin, end, out.size(), out.size() + piece.size()});
      changed = true;
    }
    out += piece;
  };
  // Copies [chunk_begin, end) unchanged and starts the next chunk after it.
  auto pass_through = [&](size_t begin, size_t end) {
    flush(begin);
    out.append(in.data() + begin, end - begin);
    chunk_begin = end;
  };
  for (size_t i = 0; i < in.size();) {
    size_t len;
    uint32_t cp = decode_utf8(in.data() + i, in.size() - i, &len);
    if (cp == kReplacementChar && len == 1 && static_cast<unsigned char>(in[i]) >= 0x80) {
      pass_through(i, i + 1);  // an invalid UTF-8 byte is kept as it is, and it ends the chunk
    } else if (alignment::contains(alignment::kNormalizationPassThrough, cp)) {
      pass_through(i, i + len);  // unknown to the reference's normalizer: it changes nothing there
    } else if (is_boundary_before(cp)) {
      flush(i);
      chunk_begin = i;
    }
    i += len;
  }
  flush(in.size());
  if (!changed) out.assign(in.data(), in.size());
  return changed;
}

}  // namespace sft::data::tokenizer
