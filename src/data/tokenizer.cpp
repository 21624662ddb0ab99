// Byte tokenizer: each byte of the text is its own id (0-255); specials PAD/BOS/EOS/SEP follow.
// Invariant: decode_tokens(encode_bytes(s)) == s for every byte string s.
#include "data/tokenizer.h"

#include "core/error.h"

namespace smt {

std::vector<int32_t> encode_bytes(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char ch : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(ch)));
  return ids;
}

std::vector<int32_t> encode_fields(const std::vector<std::string>& fields) {
  size_t total = 2;
  for (const auto& f : fields) total += f.size() + 1;
  std::vector<int32_t> ids;
  ids.reserve(total);
  ids.push_back(kBosToken);
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) ids.push_back(kSepToken);
    for (char ch : fields[i]) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(ch)));
  }
  ids.push_back(kEosToken);
  return ids;
}

std::string decode_tokens(const std::vector<int32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) {
    if (t >= 0 && t < 256) {
      out.push_back(static_cast<char>(static_cast<unsigned char>(t)));
    } else if (t == kPadToken) {
      out += "<pad>";
    } else if (t == kBosToken) {
      out += "<bos>";
    } else if (t == kEosToken) {
      out += "<eos>";
    } else if (t == kSepToken) {
      out += "<sep>";
    } else {
      throw Error(detail::concat("decode_tokens: token id ", t, " outside the vocabulary [0, ", kVocabSize, ")"));
    }
  }
  return out;
}

}  // namespace smt
