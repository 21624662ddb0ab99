// Byte and hashed-word tokenizers (see tokenizer.h). Both share the byte ids 0-255 and the
// specials 256-259; the word tokenizer hashes words above them.
// Invariant: decode_tokens(encode_bytes(s)) == s for every byte string s.
#include "data/tokenizer.h"

#include "core/error.h"

namespace smt {
namespace {

bool is_word_byte(unsigned char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch >= 0x80;
}
bool is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }
// Whitespace and control bytes separate pieces and produce none.
bool is_separator(unsigned char ch) { return ch <= ' ' || ch == 0x7f; }

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (char ch : s) {
    h ^= static_cast<unsigned char>(ch);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

TokenizerKind parse_tokenizer_kind(const std::string& name) {
  if (name == "bytes") return TokenizerKind::kBytes;
  if (name == "words") return TokenizerKind::kWords;
  throw UsageError("unknown data.tokenizer '" + name + "' (expected bytes or words)");
}

Tokenizer make_tokenizer(const std::string& kind, int64_t vocab_size) {
  Tokenizer t;
  t.kind = parse_tokenizer_kind(kind);
  if (t.kind == TokenizerKind::kBytes) {
    SMT_USAGE_CHECK(vocab_size == kVocabSize, "data.tokenizer = bytes needs model.vocab_size = ", kVocabSize, ", got ",
                    vocab_size);
  } else {
    SMT_USAGE_CHECK(vocab_size >= kMinWordVocabSize && vocab_size <= (int64_t{1} << 24),
                    "data.tokenizer = words needs model.vocab_size in [", kMinWordVocabSize,
                    ", 16777216] (byte ids, specials, then the word hash buckets), got ", vocab_size);
  }
  t.vocab_size = static_cast<int32_t>(vocab_size);
  return t;
}

std::vector<int32_t> encode_bytes(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char ch : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(ch)));
  return ids;
}

std::vector<int32_t> encode_fields(const std::vector<std::string>& fields) { return encode_fields(fields, Tokenizer{}); }

std::vector<int32_t> encode_fields(const std::vector<std::string>& fields, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  ids.push_back(kBosToken);
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) ids.push_back(kSepToken);
    const auto piece = tokenizer.kind == TokenizerKind::kBytes ? encode_bytes(fields[i])
                                                                : encode_words(fields[i], tokenizer.vocab_size);
    ids.insert(ids.end(), piece.begin(), piece.end());
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

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> pieces;
  std::string word;
  const size_t n = text.size();
  auto byte_at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  for (size_t i = 0; i < n; ++i) {
    const unsigned char ch = byte_at(i);
    if (is_word_byte(ch)) {
      word.push_back(ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch - 'A' + 'a') : static_cast<char>(ch));
      continue;
    }
    // "1.5", "10,000": a decimal point or thousands separator between digits stays in the word.
    if ((ch == '.' || ch == ',') && !word.empty() && is_digit(static_cast<unsigned char>(word.back())) && i + 1 < n &&
        is_digit(byte_at(i + 1))) {
      word.push_back(static_cast<char>(ch));
      continue;
    }
    if (!word.empty()) pieces.push_back(std::move(word));
    word.clear();
    if (!is_separator(ch)) pieces.emplace_back(1, static_cast<char>(ch));
  }
  if (!word.empty()) pieces.push_back(std::move(word));
  return pieces;
}

int32_t word_piece_id(std::string_view piece, int32_t vocab_size) {
  SMT_CHECK(vocab_size > kVocabSize, "word_piece_id: vocab_size ", vocab_size, " leaves no word buckets above ",
            kVocabSize);
  SMT_CHECK(!piece.empty(), "word_piece_id: empty piece");
  if (piece.size() == 1 && !is_word_byte(static_cast<unsigned char>(piece[0])))
    return static_cast<int32_t>(static_cast<unsigned char>(piece[0]));
  const auto buckets = static_cast<uint64_t>(vocab_size - kVocabSize);
  return kVocabSize + static_cast<int32_t>(fnv1a64(piece) % buckets);
}

std::vector<int32_t> encode_words(std::string_view text, int32_t vocab_size) {
  std::vector<int32_t> ids;
  for (const auto& piece : split_words(text)) ids.push_back(word_piece_id(piece, vocab_size));
  return ids;
}

}  // namespace smt
