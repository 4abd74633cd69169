// data/tokenizer_regex.cpp: parser and backtracking matcher for data/tokenizer_regex.h.
// Matching works on code points with precomputed categories; a repeat of a single-character matcher
// (the hot case: \p{L}+, \s+, [^\s\p{L}\p{N}]+) is a counted loop, not recursion.
#include "data/tokenizer_regex.h"

#include <stdexcept>

#include "data/unicode.h"

namespace sft::data {
namespace u = unicode;

constexpr uint8_t kSpaceBit = 0x80;

void RegexText::assign(std::string_view utf8) {
  cps.clear();
  cats.clear();
  byte_pos.clear();
  cps.reserve(utf8.size());
  cats.reserve(utf8.size());
  byte_pos.reserve(utf8.size() + 1);
  for (size_t i = 0; i < utf8.size();) {
    size_t len;
    uint32_t cp = u::decode_utf8(utf8.data() + i, utf8.size() - i, &len);
    cps.push_back(cp);
    uint8_t cat = u::category(cp);
    if (u::is_white_space(cp)) cat |= kSpaceBit;
    cats.push_back(cat);
    byte_pos.push_back(i);
    i += len;
  }
  byte_pos.push_back(utf8.size());
}

// ---------------------------------------------------------------- parser
static Regex::Node make_node(Regex::Node::Kind kind) {
  Regex::Node n;
  n.kind = kind;
  return n;
}

class RegexParser {
 public:
  RegexParser(Regex& re, std::string_view pattern) : re_(re), p_(pattern) {}

  void parse() {
    int root = parse_alternation(false);
    re_.root_ = {root};
    if (pos_ != p_.size()) fail("unbalanced ')'");
  }

 private:
  Regex& re_;
  std::string_view p_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("regex " + std::string(p_) + ": " + what + " at offset " + std::to_string(pos_));
  }
  bool at_end() const { return pos_ >= p_.size(); }
  uint32_t peek_cp(size_t* len) const { return u::decode_utf8(p_.data() + pos_, p_.size() - pos_, len); }
  uint32_t next_cp() {
    size_t len;
    uint32_t cp = peek_cp(&len);
    pos_ += len;
    return cp;
  }

  int add(Regex::Node node) {
    re_.nodes_.push_back(std::move(node));
    return static_cast<int>(re_.nodes_.size()) - 1;
  }

  int parse_alternation(bool icase) {
    Regex::Node alt = make_node(Regex::Node::kAlt);
    alt.alts.push_back(parse_sequence(icase));
    while (!at_end() && p_[pos_] == '|') {
      ++pos_;
      alt.alts.push_back(parse_sequence(icase));
    }
    return add(std::move(alt));
  }

  std::vector<int> parse_sequence(bool icase) {
    std::vector<int> seq;
    while (!at_end() && p_[pos_] != '|' && p_[pos_] != ')') {
      if (p_.compare(pos_, 4, "(?i)") == 0) {  // inline flag: applies to the rest of this group
        pos_ += 4;
        icase = true;
        continue;
      }
      int atom = parse_atom(icase);
      atom = parse_quantifier(atom);
      seq.push_back(atom);
    }
    return seq;
  }

  int parse_quantifier(int atom) {
    if (at_end()) return atom;
    int min, max;
    char c = p_[pos_];
    if (c == '*') {
      min = 0, max = -1, ++pos_;
    } else if (c == '+') {
      min = 1, max = -1, ++pos_;
    } else if (c == '?') {
      min = 0, max = 1, ++pos_;
    } else if (c == '{' && pos_ + 1 < p_.size() && isdigit(static_cast<unsigned char>(p_[pos_ + 1]))) {
      ++pos_;
      min = parse_int();
      max = min;
      if (!at_end() && p_[pos_] == ',') {
        ++pos_;
        max = (!at_end() && p_[pos_] == '}') ? -1 : parse_int();
      }
      if (at_end() || p_[pos_] != '}') fail("bad {m,n} quantifier");
      ++pos_;
    } else {
      return atom;
    }
    Regex::Node rep = make_node(Regex::Node::kRepeat);
    rep.index = atom;
    rep.min = min;
    rep.max = max;
    if (!at_end() && p_[pos_] == '?') {
      rep.greedy = false;
      ++pos_;
    } else if (!at_end() && p_[pos_] == '+') {
      rep.possessive = true;
      ++pos_;
    }
    const auto k = re_.nodes_[atom].kind;
    if (rep.possessive && k != Regex::Node::kChar && k != Regex::Node::kClass && k != Regex::Node::kAny) {
      fail("possessive quantifier on a group is not supported");
    }
    return add(std::move(rep));
  }

  int parse_int() {
    int v = 0;
    bool any = false;
    while (!at_end() && isdigit(static_cast<unsigned char>(p_[pos_]))) {
      v = v * 10 + (p_[pos_++] - '0');
      any = true;
    }
    if (!any) fail("expected a number");
    return v;
  }

  int parse_atom(bool icase) {
    char c = p_[pos_];
    if (c == '(') {
      ++pos_;
      Regex::Node::Kind kind = Regex::Node::kAlt;
      bool negative = false;
      if (!at_end() && p_[pos_] == '?') {
        ++pos_;
        if (at_end()) fail("bad group");
        char g = p_[pos_];
        if (g == ':') {
          ++pos_;
        } else if (g == '=' || g == '!') {
          kind = Regex::Node::kLookahead;
          negative = g == '!';
          ++pos_;
        } else if (g == 'i' || g == '-') {
          bool on = g == 'i';
          if (g == '-') ++pos_;
          if (at_end() || p_[pos_] != 'i') fail("only the i flag is supported");
          ++pos_;
          if (at_end() || p_[pos_] != ':') fail("bad flag group");
          ++pos_;
          icase = on;
        } else {
          fail("unsupported group (?" + std::string(1, g));
        }
      }
      int inner = parse_alternation(icase);
      if (at_end() || p_[pos_] != ')') fail("missing ')'");
      ++pos_;
      if (kind == Regex::Node::kLookahead) {
        Regex::Node look = make_node(Regex::Node::kLookahead);
        look.negative = negative;
        look.alts.push_back({inner});
        return add(std::move(look));
      }
      return inner;
    }
    if (c == '[') return add_class(parse_class(icase));
    if (c == '.') {
      ++pos_;
      return add(make_node(Regex::Node::kAny));
    }
    if (c == '^') {
      ++pos_;
      return add(make_node(Regex::Node::kLineStart));
    }
    if (c == '$') {
      ++pos_;
      return add(make_node(Regex::Node::kLineEnd));
    }
    if (c == '*' || c == '+' || c == '?' || c == ')') fail("nothing to repeat");
    if (c == '\\') {
      Regex::CharClass cls;
      uint32_t literal;
      if (parse_escape(cls, &literal, false)) return add_class(std::move(cls));
      return add_char(literal, icase);
    }
    return add_char(next_cp(), icase);
  }

  int add_char(uint32_t cp, bool icase) {
    Regex::Node n = make_node(Regex::Node::kChar);
    n.icase = icase;
    n.ch = icase ? u::simple_fold(cp) : cp;
    return add(std::move(n));
  }

  int add_class(Regex::CharClass cls) {
    re_.classes_.push_back(std::move(cls));
    Regex::Node n = make_node(Regex::Node::kClass);
    n.index = static_cast<int>(re_.classes_.size()) - 1;
    return add(std::move(n));
  }

  // Parses a backslash escape. Returns true and fills `cls` for class escapes (\s, \p{L}, ...), or
  // false with `*literal` for a single character. Anchors (\A, \z) outside classes become nodes via
  // the literal path being impossible, so they are handled here by throwing inside classes.
  bool parse_escape(Regex::CharClass& cls, uint32_t* literal, bool in_class) {
    ++pos_;  // backslash
    if (at_end()) fail("trailing backslash");
    char e = p_[pos_++];
    using Item = Regex::CharClass::Item;
    switch (e) {
      case 's': cls.items.push_back({Item::kSpace, false, 0, 0}); return true;
      case 'S': cls.items.push_back({Item::kSpace, true, 0, 0}); return true;
      case 'd': cls.items.push_back({Item::kCategories, false, u::bit(u::kNd), 0}); return true;
      case 'D': cls.items.push_back({Item::kCategories, true, u::bit(u::kNd), 0}); return true;
      case 'w': cls.items.push_back({Item::kWord, false, 0, 0}); return true;
      case 'W': cls.items.push_back({Item::kWord, true, 0, 0}); return true;
      case 'p':
      case 'P': {
        bool negated = e == 'P';
        std::string name;
        if (!at_end() && p_[pos_] == '{') {
          size_t close = p_.find('}', pos_);
          if (close == std::string_view::npos) fail("unterminated \\p{");
          name = std::string(p_.substr(pos_ + 1, close - pos_ - 1));
          pos_ = close + 1;
        } else if (!at_end()) {
          name = std::string(1, p_[pos_++]);
        }
        if (!name.empty() && name[0] == '^') {
          negated = !negated;
          name.erase(0, 1);
        }
        cls.items.push_back({Item::kCategories, negated, category_mask(name), 0});
        return true;
      }
      case 'n': *literal = '\n'; return false;
      case 'r': *literal = '\r'; return false;
      case 't': *literal = '\t'; return false;
      case 'f': *literal = '\f'; return false;
      case 'v': *literal = '\v'; return false;
      case 'a': *literal = 0x07; return false;
      case 'e': *literal = 0x1B; return false;
      case '0': *literal = 0; return false;
      case 'x': {
        std::string hex;
        if (!at_end() && p_[pos_] == '{') {
          size_t close = p_.find('}', pos_);
          if (close == std::string_view::npos) fail("unterminated \\x{");
          hex = std::string(p_.substr(pos_ + 1, close - pos_ - 1));
          pos_ = close + 1;
        } else {
          hex = std::string(p_.substr(pos_, 2));
          pos_ += 2;
        }
        *literal = parse_hex(hex);
        return false;
      }
      case 'u': {
        *literal = parse_hex(std::string(p_.substr(pos_, 4)));
        pos_ += 4;
        return false;
      }
      default:
        if (isalnum(static_cast<unsigned char>(e))) {
          fail(std::string("unsupported escape \\") + e + (in_class ? " in a class" : ""));
        }
        *literal = static_cast<unsigned char>(e);
        return false;
    }
  }

  uint32_t parse_hex(const std::string& hex) {
    if (hex.empty() || hex.size() > 6) fail("bad hex escape");
    uint32_t v = 0;
    for (char h : hex) {
      if (!isxdigit(static_cast<unsigned char>(h))) fail("bad hex escape");
      v = v * 16 + (isdigit(static_cast<unsigned char>(h)) ? h - '0' : (tolower(h) - 'a' + 10));
    }
    return v;
  }

  uint32_t category_mask(const std::string& name) {
    static constexpr struct {
      const char* name;
      uint32_t mask;
    } kNames[] = {
        {"L", u::kMaskLetter}, {"Letter", u::kMaskLetter}, {"Lu", u::bit(u::kLu)}, {"Ll", u::bit(u::kLl)},
        {"Lt", u::bit(u::kLt)}, {"Lm", u::bit(u::kLm)}, {"Lo", u::bit(u::kLo)},
        {"M", u::kMaskMark}, {"Mark", u::kMaskMark}, {"Mn", u::bit(u::kMn)}, {"Mc", u::bit(u::kMc)},
        {"Me", u::bit(u::kMe)}, {"N", u::kMaskNumber}, {"Number", u::kMaskNumber}, {"Nd", u::bit(u::kNd)},
        {"Nl", u::bit(u::kNl)}, {"No", u::bit(u::kNo)},
        {"P", u::bit(u::kPc) | u::bit(u::kPd) | u::bit(u::kPs) | u::bit(u::kPe) | u::bit(u::kPi) |
                  u::bit(u::kPf) | u::bit(u::kPo)},
        {"Punctuation", u::bit(u::kPc) | u::bit(u::kPd) | u::bit(u::kPs) | u::bit(u::kPe) | u::bit(u::kPi) |
                            u::bit(u::kPf) | u::bit(u::kPo)},
        {"Pc", u::bit(u::kPc)}, {"Pd", u::bit(u::kPd)}, {"Ps", u::bit(u::kPs)}, {"Pe", u::bit(u::kPe)},
        {"Pi", u::bit(u::kPi)}, {"Pf", u::bit(u::kPf)}, {"Po", u::bit(u::kPo)},
        {"S", u::bit(u::kSm) | u::bit(u::kSc) | u::bit(u::kSk) | u::bit(u::kSo)},
        {"Symbol", u::bit(u::kSm) | u::bit(u::kSc) | u::bit(u::kSk) | u::bit(u::kSo)},
        {"Sm", u::bit(u::kSm)}, {"Sc", u::bit(u::kSc)}, {"Sk", u::bit(u::kSk)}, {"So", u::bit(u::kSo)},
        {"Z", u::bit(u::kZs) | u::bit(u::kZl) | u::bit(u::kZp)},
        {"Separator", u::bit(u::kZs) | u::bit(u::kZl) | u::bit(u::kZp)},
        {"Zs", u::bit(u::kZs)}, {"Zl", u::bit(u::kZl)}, {"Zp", u::bit(u::kZp)},
        {"C", u::bit(u::kCc) | u::bit(u::kCf) | u::bit(u::kCs) | u::bit(u::kCo) | u::bit(u::kCn)},
        {"Other", u::bit(u::kCc) | u::bit(u::kCf) | u::bit(u::kCs) | u::bit(u::kCo) | u::bit(u::kCn)},
        {"Cc", u::bit(u::kCc)}, {"Cf", u::bit(u::kCf)}, {"Cs", u::bit(u::kCs)}, {"Co", u::bit(u::kCo)},
        {"Cn", u::bit(u::kCn)},
    };
    for (const auto& n : kNames) {
      if (name == n.name) return n.mask;
    }
    fail("unsupported property \\p{" + name + "}");
  }

  Regex::CharClass parse_class(bool icase) {
    using Item = Regex::CharClass::Item;
    ++pos_;  // '['
    Regex::CharClass cls;
    cls.icase = icase;
    if (!at_end() && p_[pos_] == '^') {
      cls.negated = true;
      ++pos_;
    }
    bool first = true;
    while (true) {
      if (at_end()) fail("unterminated character class");
      char c = p_[pos_];
      if (c == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      if (c == '[') {
        Regex::CharClass nested = parse_class(icase);
        re_.classes_.push_back(std::move(nested));
        cls.items.push_back({Item::kClass, false, static_cast<uint32_t>(re_.classes_.size() - 1), 0});
        continue;
      }
      if (c == '&' && pos_ + 1 < p_.size() && p_[pos_ + 1] == '&') fail("class intersection is not supported");
      uint32_t lo;
      if (c == '\\') {
        if (parse_escape(cls, &lo, true)) continue;
      } else {
        lo = next_cp();
      }
      uint32_t hi = lo;
      if (pos_ + 1 < p_.size() && p_[pos_] == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        if (p_[pos_] == '\\') {
          Regex::CharClass ignored;
          if (parse_escape(ignored, &hi, true)) fail("bad class range");
        } else {
          hi = next_cp();
        }
        if (hi < lo) fail("bad class range");
      }
      cls.items.push_back({Item::kRange, false, lo, hi});
    }
    return cls;
  }
};

Regex::Regex(std::string_view pattern) {
  RegexParser parser(*this, pattern);
  parser.parse();
}

// ---------------------------------------------------------------- matcher
class RegexMatcher {
 public:
  RegexMatcher(const Regex& re, const RegexText& text) : re_(re), t_(text), n_(text.cps.size()) {}

  // Longest-by-priority match starting exactly at `start` (Oniguruma semantics); end in *end.
  bool match_at(size_t start, size_t* end) {
    if (!seq(re_.root_, 0, start, nullptr)) return false;
    *end = accept_pos_;
    return true;
  }

 private:
  // A continuation: what to match after the current sub-sequence finishes.
  struct Cont {
    const std::vector<int>* seq;  // nullptr: repeat frame
    size_t idx;
    const Cont* next;
    const Regex::Node* repeat;  // repeat frame: the kRepeat node
    int count;                  // iterations done so far
    size_t start;               // position where this iteration started
  };

  const Regex& re_;
  const RegexText& t_;
  const size_t n_;
  size_t accept_pos_ = 0;

  bool class_match(const Regex::CharClass& cls, uint32_t cp, uint8_t cat) const {
    bool hit = class_items(cls, cp, cat);
    if (!hit && cls.icase) {
      uint32_t folded = unicode::simple_fold(cp);
      if (folded != cp) hit = class_items(cls, folded, unicode::category(folded));
    }
    return hit != cls.negated;
  }

  bool class_items(const Regex::CharClass& cls, uint32_t cp, uint8_t cat) const {
    using Item = Regex::CharClass::Item;
    for (const Item& it : cls.items) {
      bool r;
      switch (it.kind) {
        case Item::kRange: r = cp >= it.lo && cp <= it.hi; break;
        case Item::kCategories: r = (it.lo >> (cat & 0x7F)) & 1u; break;
        case Item::kSpace: r = (cat & kSpaceBit) != 0; break;
        case Item::kWord: r = unicode::is_word(cp); break;
        default: r = class_match(re_.classes_[it.lo], cp, cat); break;
      }
      if (r != it.negated) return true;
    }
    return false;
  }

  bool single(const Regex::Node& n, size_t pos) const {
    if (pos >= n_) return false;
    uint32_t cp = t_.cps[pos];
    switch (n.kind) {
      case Regex::Node::kChar: return cp == n.ch || (n.icase && unicode::simple_fold(cp) == n.ch);
      case Regex::Node::kClass: return class_match(re_.classes_[n.index], cp, t_.cats[pos]);
      default: return cp != '\n';  // kAny
    }
  }

  static bool is_single(const Regex::Node& n) {
    return n.kind == Regex::Node::kChar || n.kind == Regex::Node::kClass || n.kind == Regex::Node::kAny;
  }

  bool cont(const Cont* k, size_t pos) {
    if (!k) {
      accept_pos_ = pos;
      return true;
    }
    if (k->seq) return seq(*k->seq, k->idx, pos, k->next);
    // End of one iteration of a general repeat. An empty iteration cannot make progress: stop looping.
    if (pos == k->start) return false;
    return repeat(*k->repeat, k->count, pos, k->next);
  }

  // General repeat (child is a group): `count` iterations done, now at pos; `after` follows the repeat.
  bool repeat(const Regex::Node& n, int count, size_t pos, const Cont* after) {
    const Regex::Node& child = re_.nodes_[n.index];
    bool can_more = n.max < 0 || count < n.max;
    Cont iter{nullptr, 0, after, &n, count + 1, pos};
    std::vector<int> one{n.index};
    (void)child;
    if (n.greedy) {
      if (can_more && seq(one, 0, pos, &iter)) return true;
      return count >= n.min && cont(after, pos);
    }
    if (count >= n.min && cont(after, pos)) return true;
    return can_more && seq(one, 0, pos, &iter);
  }

  bool seq(const std::vector<int>& s, size_t i, size_t pos, const Cont* k) {
    while (true) {
      if (i == s.size()) return cont(k, pos);
      const Regex::Node& n = re_.nodes_[s[i]];
      switch (n.kind) {
        case Regex::Node::kChar:
        case Regex::Node::kClass:
        case Regex::Node::kAny:
          if (!single(n, pos)) return false;
          ++pos, ++i;
          continue;
        case Regex::Node::kLineStart:
          if (pos != 0 && t_.cps[pos - 1] != '\n') return false;
          ++i;
          continue;
        case Regex::Node::kLineEnd:
          if (pos != n_ && t_.cps[pos] != '\n') return false;
          ++i;
          continue;
        case Regex::Node::kTextStart:
          if (pos != 0) return false;
          ++i;
          continue;
        case Regex::Node::kTextEnd:
          if (pos != n_) return false;
          ++i;
          continue;
        case Regex::Node::kAlt: {
          if (n.alts.size() == 1) {
            Cont c{&s, i + 1, k, nullptr, 0, 0};
            return seq(n.alts[0], 0, pos, &c);
          }
          Cont c{&s, i + 1, k, nullptr, 0, 0};
          for (const auto& alt : n.alts) {
            if (seq(alt, 0, pos, &c)) return true;
          }
          return false;
        }
        case Regex::Node::kLookahead: {
          size_t saved = accept_pos_;
          bool found = seq(n.alts[0], 0, pos, nullptr);
          accept_pos_ = saved;
          if (found == n.negative) return false;
          ++i;
          continue;
        }
        case Regex::Node::kRepeat: {
          const Regex::Node& child = re_.nodes_[n.index];
          if (!is_single(child)) {
            Cont after{&s, i + 1, k, nullptr, 0, 0};
            return repeat(n, 0, pos, &after);
          }
          // Count how far the single-character matcher runs, then back off.
          size_t limit = n.max < 0 ? n_ - pos : std::min<size_t>(n.max, n_ - pos);
          size_t run = 0;
          while (run < limit && single(child, pos + run)) ++run;
          if (run < static_cast<size_t>(n.min)) return false;
          if (n.possessive) {
            pos += run, ++i;
            continue;
          }
          if (n.greedy) {
            for (size_t r = run + 1; r-- > static_cast<size_t>(n.min);) {
              if (seq(s, i + 1, pos + r, k)) return true;
            }
          } else {
            for (size_t r = n.min; r <= run; ++r) {
              if (seq(s, i + 1, pos + r, k)) return true;
            }
          }
          return false;
        }
      }
    }
  }
};

void Regex::find_all(const RegexText& text, std::vector<std::pair<size_t, size_t>>& matches) const {
  matches.clear();
  RegexMatcher m(*this, text);
  const size_t n = text.cps.size();
  size_t pos = 0;
  while (pos < n) {
    size_t end;
    if (m.match_at(pos, &end) && end > pos) {
      matches.emplace_back(pos, end);
      pos = end;
    } else {
      ++pos;
    }
  }
}

}  // namespace sft::data
