// Byte tokenizer: ids 0-255 are bytes, then four specials. An example's text fields are
// encoded as BOS field0 SEP field1 SEP ... EOS.
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
constexpr int32_t kVocabSize = 260;

// Bytes of text as token ids (no specials).
std::vector<int32_t> encode_bytes(std::string_view text);
// BOS f0 SEP f1 ... EOS
std::vector<int32_t> encode_fields(const std::vector<std::string>& fields);
// Inverse of encode_bytes for ids < 256; specials rendered as <pad>, <bos>, <eos>, <sep>.
std::string decode_tokens(const std::vector<int32_t>& tokens);

}  // namespace smt
