// data/dataset.cpp: tokenize a rendered conversation and derive labels from byte ranges.
#include "data/dataset.h"

#include <algorithm>

namespace sft::data {

TokenizedExample tokenize_conversation(const Conversation& conversation, const ChatTemplate& chat_template,
                                       const Tokenizer& tokenizer, const MaskOptions& options) {
  const SpecialTokens& specials = tokenizer.special_tokens();
  RenderedConversation rendered = render_conversation(chat_template, conversation, specials, options.system_prompt);

  // supervised[b] for every byte b of the text (text sizes are small: one flag per byte is simplest).
  std::vector<char> supervised(rendered.text.size(), 0);
  const int last_turn = rendered.num_turns - 1;
  for (const Segment& s : rendered.segments) {
    bool selected = s.kind == SegmentKind::kResponse || (options.train_on_prompt && s.kind == SegmentKind::kPrompt);
    if (options.mask_history && s.turn != last_turn) selected = false;
    if (selected) std::fill(supervised.begin() + s.begin, supervised.begin() + s.end, 1);
  }

  Encoding enc = tokenizer.encode(rendered.text);
  TokenizedExample out;
  out.source = conversation.source;
  const bool add_bos = !rendered.renders_bos && specials.add_bos && specials.bos.has_value();
  out.input_ids.reserve(enc.ids.size() + add_bos);
  out.labels.reserve(enc.ids.size() + add_bos);
  if (add_bos) {
    out.input_ids.push_back(*specials.bos);
    out.labels.push_back(kIgnoreLabel);
  }
  for (size_t i = 0; i < enc.ids.size(); ++i) {
    size_t begin = std::min(enc.offsets[i].first, supervised.size());
    // A zero-width span (e.g. a byte-fallback piece) counts as covering its first byte.
    size_t end = std::min(std::max(enc.offsets[i].second, begin + 1), supervised.size());
    bool target = std::any_of(supervised.begin() + begin, supervised.begin() + end, [](char c) { return c != 0; });
    out.input_ids.push_back(enc.ids[i]);
    out.labels.push_back(target ? enc.ids[i] : kIgnoreLabel);
  }
  return out;
}

int64_t count_targets(const std::vector<int32_t>& labels) {
  int64_t n = 0;
  for (size_t i = 1; i < labels.size(); ++i) n += labels[i] != kIgnoreLabel;
  return n;
}

}  // namespace sft::data
