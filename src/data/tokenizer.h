// Tokenizers. Ids 0-255 are bytes, then four specials (PAD, BOS, EOS, SEP) at 256-259 whatever
// the tokenizer, so padding, batching and the LM targets never depend on it.
//  - bytes (default): every byte of the text is its own id; vocabulary kVocabSize = 260.
//  - words: lower-cased words and single punctuation characters. A punctuation character keeps
//    its byte id; a word is hashed (64-bit FNV-1a) into the buckets [kVocabSize, vocab_size).
// An example's text fields are encoded as BOS field0 SEP field1 SEP ... EOS.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace smt {

constexpr int32_t kPadToken = 256;
constexpr int32_t kBosToken = 257;
constexpr int32_t kEosToken = 258;
constexpr int32_t kSepToken = 259;
constexpr int32_t kVocabSize = 260;          // byte tokenizer (and first word bucket)
constexpr int32_t kMinWordVocabSize = 1024;  // words: at least 764 hash buckets

enum class TokenizerKind { kBytes, kWords };

struct Tokenizer {
  TokenizerKind kind = TokenizerKind::kBytes;
  int32_t vocab_size = kVocabSize;  // ids are in [0, vocab_size)
};

// "bytes" | "words"; anything else throws UsageError.
TokenizerKind parse_tokenizer_kind(const std::string& name);
// The tokenizer of data.tokenizer with model.vocab_size; throws UsageError where they do not fit
// (bytes needs exactly kVocabSize, words at least kMinWordVocabSize).
Tokenizer make_tokenizer(const std::string& kind, int64_t vocab_size);

// Bytes of text as token ids (no specials).
std::vector<int32_t> encode_bytes(std::string_view text);
// BOS f0 SEP f1 ... EOS with the byte tokenizer.
std::vector<int32_t> encode_fields(const std::vector<std::string>& fields);
// BOS f0 SEP f1 ... EOS with the given tokenizer.
std::vector<int32_t> encode_fields(const std::vector<std::string>& fields, const Tokenizer& tokenizer);
// Inverse of encode_bytes for ids < 256; specials rendered as <pad>, <bos>, <eos>, <sep>.
std::string decode_tokens(const std::vector<int32_t>& tokens);

// Word tokenizer pieces. Words are maximal runs of ASCII letters, digits and non-ASCII bytes
// (UTF-8 stays inside words), lower-cased (ASCII); a '.' or ',' between two digits stays in the
// word ("1.5", "10,000"). Every other non-space byte is a one-character piece; whitespace and
// control bytes separate pieces and are dropped.
std::vector<std::string> split_words(std::string_view text);
// Id of one piece: a one-character non-word piece is its byte; anything else is
// kVocabSize + fnv1a64(piece) % (vocab_size - kVocabSize).
int32_t word_piece_id(std::string_view piece, int32_t vocab_size);
// split_words + word_piece_id (no specials).
std::vector<int32_t> encode_words(std::string_view text, int32_t vocab_size);

}  // namespace smt
