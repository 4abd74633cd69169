// data/unicode.cpp: lookups into the generated Unicode tables, UTF-8 helpers and the normalization
// forms (decompose, canonical reordering, canonical composition; Hangul done algorithmically).
#include "data/unicode.h"

#include <algorithm>
#include <array>

namespace sft::data::unicode {
namespace {

#include "data/unicode_tables.inc"

constexpr uint32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

Category category_slow(uint32_t cp) {
  // Last range starting at or before cp.
  const auto* begin = kCategoryRanges;
  const auto* end = kCategoryRanges + kCategoryRangeCount;
  const auto* it = std::upper_bound(begin, end, cp, [](uint32_t v, const uint32_t(&r)[2]) { return v < r[0]; });
  return static_cast<Category>((it - 1)[0][1]);
}

// Latin, Greek, Cyrillic, Hebrew, Arabic... are looked up directly: most text lives there.
constexpr uint32_t kDirectLimit = 0x800;
struct DirectCategories {
  std::array<uint8_t, kDirectLimit> table{};
  DirectCategories() {
    for (uint32_t cp = 0; cp < kDirectLimit; ++cp) table[cp] = category_slow(cp);
  }
};

template <size_t N>
const uint32_t* find_pair(const uint32_t (*table)[N], uint32_t count, uint32_t cp) {
  const auto* end = table + count;
  const auto* it = std::lower_bound(table, end, cp, [](const uint32_t(&r)[N], uint32_t v) { return r[0] < v; });
  return (it != end && (*it)[0] == cp) ? *it : nullptr;
}

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const uint32_t* row = find_pair(kCombiningClass, kCombiningClassCount, cp);
  return row ? static_cast<uint8_t>(row[1]) : 0;
}

bool composes_backward(uint32_t cp) {
  if (cp < 0x300) return false;
  if ((cp >= kHangulV && cp < kHangulV + kHangulVCount) || (cp > kHangulT && cp < kHangulT + kHangulTCount)) {
    return true;
  }
  return std::binary_search(kComposesBackward, kComposesBackward + kComposesBackwardCount, cp);
}

// Appends the full decomposition of cp (itself when it has none).
void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp >= kHangulS && cp < kHangulS + kHangulSCount) {
    uint32_t s = cp - kHangulS;
    out.push_back(kHangulL + s / kHangulNCount);
    out.push_back(kHangulV + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount) out.push_back(kHangulT + s % kHangulTCount);
    return;
  }
  if (cp >= 0xA0) {
    const uint32_t* row = compat ? find_pair(kCompatDecomposition, kCompatDecompositionCount, cp)
                                 : find_pair(kCanonicalDecomposition, kCanonicalDecompositionCount, cp);
    if (row) {
      out.insert(out.end(), kDecompositionPool + row[1], kDecompositionPool + row[1] + row[2]);
      return;
    }
  }
  out.push_back(cp);
}

// Whether normalization can never reach across the boundary before cp: cp is a starter that cannot
// compose with what precedes it, and neither can the first character of its decomposition.
bool is_boundary_before(uint32_t cp, bool compat, std::vector<uint32_t>& scratch) {
  if (cp < 0x300) return true;
  if (combining_class(cp) != 0 || composes_backward(cp)) return false;
  scratch.clear();
  decompose(cp, compat, scratch);
  return combining_class(scratch[0]) == 0 && !composes_backward(scratch[0]);
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kHangulL && a < kHangulL + kHangulLCount && b >= kHangulV && b < kHangulV + kHangulVCount) {
    return kHangulS + ((a - kHangulL) * kHangulVCount + (b - kHangulV)) * kHangulTCount;
  }
  if (a >= kHangulS && a < kHangulS + kHangulSCount && (a - kHangulS) % kHangulTCount == 0 && b > kHangulT &&
      b < kHangulT + kHangulTCount) {
    return a + (b - kHangulT);
  }
  const auto* end = kComposition + kCompositionCount;
  const auto* it = std::lower_bound(kComposition, end, std::make_pair(a, b),
                                    [](const uint32_t(&r)[3], const std::pair<uint32_t, uint32_t>& v) {
                                      return r[0] < v.first || (r[0] == v.first && r[1] < v.second);
                                    });
  return (it != end && (*it)[0] == a && (*it)[1] == b) ? (*it)[2] : 0;
}

// Normalizes one chunk of code points in place: decompose, reorder marks by class, compose.
void normalize_chunk(std::vector<uint32_t>& cps, bool compat, bool compose, std::vector<uint32_t>& buf) {
  buf.clear();
  for (uint32_t cp : cps) decompose(cp, compat, buf);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < buf.size();) {
    if (combining_class(buf[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < buf.size() && combining_class(buf[j]) != 0) ++j;
    std::stable_sort(buf.begin() + i, buf.begin() + j,
                     [](uint32_t x, uint32_t y) { return combining_class(x) < combining_class(y); });
    i = j;
  }
  if (compose && !buf.empty()) {
    size_t starter = 0, out = 1;
    int last_class = combining_class(buf[0]) == 0 ? 0 : 256;
    for (size_t i = 1; i < buf.size(); ++i) {
      uint32_t ch = buf[i];
      int ch_class = combining_class(ch);
      // Composable when not blocked: no mark of the same or higher class sits between them.
      uint32_t composite = (last_class < ch_class || last_class == 0) ? compose_pair(buf[starter], ch) : 0;
      if (composite) {
        buf[starter] = composite;
        continue;
      }
      if (ch_class == 0) starter = out;
      last_class = ch_class;
      buf[out++] = ch;
    }
    buf.resize(out);
  }
  cps.swap(buf);
}

}  // namespace

Category category(uint32_t cp) {
  static const DirectCategories direct;  // a constant table, built once
  if (cp < kDirectLimit) return static_cast<Category>(direct.table[cp]);
  if (cp >= 0x110000) return kCn;
  return category_slow(cp);
}

bool is_white_space(uint32_t cp) {
  for (const auto& r : kWhiteSpace) {
    if (cp < r[0]) return false;
    if (cp <= r[1]) return true;
  }
  return false;
}

bool is_word(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  uint32_t c = bit(category(cp));
  return (c & (kMaskLetter | kMaskMark | bit(kNd) | bit(kNl) | bit(kPc))) != 0;
}

uint32_t simple_fold(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const uint32_t* row = find_pair(kCaseFold, kCaseFoldCount, cp);
  return row ? row[1] : cp;
}

const char* table_version() { return kUnicodeVersion; }

// Length of the valid UTF-8 sequence at s (1..4), or 0 with *valid_prefix set to how many of its
// leading bytes could still begin a valid sequence (the "maximal subpart").
static size_t utf8_sequence(const unsigned char* s, size_t n, size_t* valid_prefix) {
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

uint32_t decode_utf8(const char* s, size_t n, size_t* length) {
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

size_t utf8_length(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
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

bool normalize(std::string_view in, NormalForm form, std::string& out, std::vector<NormalizedRun>& runs) {
  runs.clear();
  bool ascii = std::all_of(in.begin(), in.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) {
    out.assign(in.data(), in.size());
    return false;
  }
  const bool compat = form == NormalForm::kNFKC || form == NormalForm::kNFKD;
  const bool compose = form == NormalForm::kNFC || form == NormalForm::kNFKC;
  out.clear();
  out.reserve(in.size() + 8);
  std::vector<uint32_t> chunk, buf, scratch;
  std::string piece;
  size_t chunk_begin = 0;
  bool changed = false;
  // Flushes the chunk [chunk_begin, end): normalize it and copy or record a rewritten run.
  auto flush = [&](size_t end) {
    if (chunk.empty()) return;
    normalize_chunk(chunk, compat, compose, buf);
    piece.clear();
    for (uint32_t cp : chunk) append_utf8(piece, cp);
    std::string_view original = in.substr(chunk_begin, end - chunk_begin);
    if (piece != original) {
      runs.push_back({chunk_begin, end, out.size(), out.size() + piece.size()});
      changed = true;
    }
    out += piece;
    chunk.clear();
  };
  for (size_t i = 0; i < in.size();) {
    size_t len;
    uint32_t cp = decode_utf8(in.data() + i, in.size() - i, &len);
    if (cp == kReplacementChar && len == 1 && static_cast<unsigned char>(in[i]) >= 0x80) {
      // Invalid UTF-8 byte: passed through untouched, and it ends the chunk.
      flush(i);
      out.push_back(in[i]);
      chunk_begin = i + 1;
      i += 1;
      continue;
    }
    if (is_boundary_before(cp, compat, scratch)) {
      flush(i);
      chunk_begin = i;
    }
    chunk.push_back(cp);
    i += len;
  }
  flush(in.size());
  if (!changed) out.assign(in.data(), in.size());
  return changed;
}

}  // namespace sft::data::unicode
