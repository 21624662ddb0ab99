// The fixture reader (fixture_io.h) and the committed parity fixtures (tests/fixtures/parity_*.bin, made by
// tests/torch_twin/make_fixture.py): every file parses, holds the expected records with self-consistent
// shapes, and malformed files are rejected with std::runtime_error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fixture_io.h"

namespace smt::test {
namespace {

using Fixture = std::map<std::string, FixtureTensor>;

std::string fixture_path(const std::string& name) { return std::string(SMT_SOURCE_DIR) + "/tests/fixtures/" + name; }

// Value of `key` in [section] of an INI text ("" = top level, before any section); "" when absent.
std::string ini_value(const std::string& text, const std::string& section, const std::string& key) {
  std::istringstream in(text);
  std::string line, current;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      current = line.substr(1, line.find(']') - 1);
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos || current != section) continue;
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t\r") + 1);
      return s;
    };
    if (trim(line.substr(0, eq)) == key) return trim(line.substr(eq + 1));
  }
  return "";
}

int64_t ini_int(const std::string& text, const std::string& section, const std::string& key) {
  const std::string v = ini_value(text, section, key);
  EXPECT_FALSE(v.empty()) << "config lacks " << section << "." << key;
  return v.empty() ? -1 : std::stoll(v);
}

std::vector<std::string> names_with_prefix(const Fixture& fx, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& [name, t] : fx)
    if (name.rfind(prefix, 0) == 0) out.push_back(name.substr(prefix.size()));
  return out;
}

void expect_f64(const Fixture& fx, const std::string& name, const std::vector<int64_t>& dims) {
  const FixtureTensor& t = fixture_at(fx, name);
  EXPECT_EQ(t.dtype, FixtureTensor::kFloat64) << name;
  EXPECT_EQ(t.dims, dims) << name;
  EXPECT_EQ(static_cast<int64_t>(t.f64.size()), t.numel()) << name;
  for (double v : t.f64) ASSERT_TRUE(std::isfinite(v)) << name;
}

void check_committed_fixture(const std::string& file) {
  SCOPED_TRACE(file);
  const Fixture fx = read_fixture(fixture_path(file));

  const FixtureTensor& config = fixture_at(fx, "config");
  ASSERT_EQ(config.dtype, FixtureTensor::kString);
  ASSERT_EQ(config.dims, std::vector<int64_t>{static_cast<int64_t>(config.str.size())});
  const std::string& ini = config.str;
  EXPECT_NE(ini.find("[model]"), std::string::npos);
  EXPECT_NE(ini.find("[train]"), std::string::npos);
  EXPECT_FALSE(ini_value(ini, "", "seed").empty());
  const std::string head = ini_value(ini, "model", "head");
  ASSERT_TRUE(head == "classifier" || head == "lm") << head;
  const int64_t L = ini_int(ini, "model", "layers"), d = ini_int(ini, "model", "d_model");
  const int64_t E = ini_int(ini, "model", "experts"), k = ini_int(ini, "model", "top_k");
  const int64_t f = ini_int(ini, "model", "expert_hidden"), C = ini_int(ini, "model", "num_classes");
  const int64_t moe_every = ini_int(ini, "model", "moe_every"), steps = ini_int(ini, "train", "steps");
  for (const char* key : {"capacity_factor", "attention", "causal", "block_size", "window", "random_blocks",
                          "stride_blocks", "global_blocks", "heads"})
    EXPECT_FALSE(ini_value(ini, "model", key).empty()) << key;
  for (const char* key : {"lr", "min_lr_ratio", "warmup", "weight_decay", "clip", "beta1", "beta2",
                          "aux_loss_coeff", "z_loss_coeff"})
    EXPECT_FALSE(ini_value(ini, "train", key).empty()) << key;

  const FixtureTensor& tokens = fixture_at(fx, "tokens");
  ASSERT_EQ(tokens.dtype, FixtureTensor::kInt64);
  ASSERT_EQ(tokens.dims.size(), 2u);
  const int64_t B = tokens.dims[0], N = tokens.dims[1], T = B * N;
  EXPECT_EQ(ini_int(ini, "train", "batch_size"), B);
  EXPECT_EQ(ini_int(ini, "train", "seq_len"), N);
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(tokens.i64[b * N], 257) << "row " << b << " starts with BOS";
    bool padding = false;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t t = tokens.i64[b * N + n];
      ASSERT_TRUE(t >= 0 && t < 260);
      if (padding) {
        EXPECT_EQ(t, 256) << "right padding only";
      }
      padding = padding || t == 256;
    }
  }

  if (head == "classifier") {
    const FixtureTensor& labels = fixture_at(fx, "labels");
    ASSERT_EQ(labels.dims, std::vector<int64_t>{B});
    for (int64_t y : labels.i64) EXPECT_TRUE(y >= 0 && y < C);
    expect_f64(fx, "logits", {B, C});
  } else {
    EXPECT_EQ(fx.count("labels"), 0u);
    expect_f64(fx, "logits", {B, N, 260});
    for (const char* p : {"grad.classifier.w", "grad.classifier.b"})  // unused by the LM head
      for (double g : fixture_at(fx, p).f64) EXPECT_EQ(g, 0.0) << p;
  }
  expect_f64(fx, "param.classifier.w", {d, C});  // present with either head (README table)
  expect_f64(fx, "param.classifier.b", {C});
  for (const char* s : {"loss", "task_loss", "aux_loss", "z_loss"}) expect_f64(fx, s, {1});
  const double total = fixture_at(fx, "task_loss").f64[0] + fixture_at(fx, "aux_loss").f64[0] +
                       fixture_at(fx, "z_loss").f64[0];
  EXPECT_NEAR(fixture_at(fx, "loss").f64[0], total, 1e-12);

  // parameters: the README table; every param.X has grad.X and final_param.X of the same shape
  expect_f64(fx, "param.embedding", {260, d});
  expect_f64(fx, "param.final_norm", {d});
  const auto params = names_with_prefix(fx, "param.");
  EXPECT_EQ(params, names_with_prefix(fx, "grad."));
  EXPECT_EQ(params, names_with_prefix(fx, "final_param."));
  for (const auto& p : params) {
    const auto& dims = fixture_at(fx, "param." + p).dims;
    expect_f64(fx, "param." + p, dims);
    expect_f64(fx, "grad." + p, dims);
    expect_f64(fx, "final_param." + p, dims);
  }
  int64_t num_moe = 0;
  for (int64_t l = 0; l < L; ++l) {
    const std::string pre = "param.layers." + std::to_string(l) + ".";
    const bool moe = l % moe_every == moe_every - 1;
    const int64_t El = moe ? E : 1;
    for (const char* w : {"wq", "wk", "wv", "wo"}) expect_f64(fx, pre + w, {d, d});
    expect_f64(fx, pre + "attn_norm", {d});
    expect_f64(fx, pre + "ffn_norm", {d});
    expect_f64(fx, pre + "experts.w1", {El, d, f});
    expect_f64(fx, pre + "experts.b1", {El, f});
    expect_f64(fx, pre + "experts.w2", {El, f, d});
    expect_f64(fx, pre + "experts.b2", {El, d});
    const std::string ls = std::to_string(l);
    EXPECT_EQ(fx.count(pre + "router"), moe ? 1u : 0u);
    EXPECT_EQ(fx.count("router_topk_idx." + ls), moe ? 1u : 0u);
    EXPECT_EQ(fx.count("tokens_per_expert." + ls), moe ? 1u : 0u);
    const FixtureTensor& bm = fixture_at(fx, "block_mask." + ls);
    ASSERT_EQ(bm.dims.size(), 2u);
    EXPECT_EQ(bm.dims[1], 4);
    if (!moe) continue;
    ++num_moe;
    expect_f64(fx, pre + "router", {d, E});
    const FixtureTensor& idx = fixture_at(fx, "router_topk_idx." + ls);
    ASSERT_EQ(idx.dims, (std::vector<int64_t>{T, k}));
    std::vector<int64_t> routed(E, 0);
    for (int64_t e : idx.i64) {
      ASSERT_TRUE(e >= 0 && e < E);
      ++routed[e];
    }
    EXPECT_EQ(fixture_at(fx, "routed_per_expert." + ls).i64, routed);
    const FixtureTensor& kept = fixture_at(fx, "tokens_per_expert." + ls);
    ASSERT_EQ(kept.dims, std::vector<int64_t>{E});
    for (int64_t e = 0; e < E; ++e) EXPECT_LE(kept.i64[e], routed[e]);
  }
  EXPECT_GT(num_moe, 0);
  for (const char* s : {"adamw_loss", "adamw_lr", "adamw_grad_norm", "adamw_clip_scale"}) expect_f64(fx, s, {steps});
  EXPECT_DOUBLE_EQ(fixture_at(fx, "adamw_loss").f64[0], fixture_at(fx, "loss").f64[0]);
}

TEST(FixtureIo, ClassifierFixture) { check_committed_fixture("parity_classifier.bin"); }
TEST(FixtureIo, LmFixture) { check_committed_fixture("parity_lm.bin"); }
TEST(FixtureIo, SparseFixture) { check_committed_fixture("parity_sparse.bin"); }
TEST(FixtureIo, RandomFixture) { check_committed_fixture("parity_random.bin"); }

TEST(FixtureIo, LmFixtureDropsAndClips) {
  const Fixture fx = read_fixture(fixture_path("parity_lm.bin"));
  int64_t kept = 0, routed = 0;
  for (const auto& l : names_with_prefix(fx, "tokens_per_expert.")) {
    for (int64_t v : fixture_at(fx, "tokens_per_expert." + l).i64) kept += v;
    for (int64_t v : fixture_at(fx, "routed_per_expert." + l).i64) routed += v;
  }
  EXPECT_LT(kept, routed) << "capacity 1.0 must drop some assignments";
  bool clipped = false;
  for (double s : fixture_at(fx, "adamw_clip_scale").f64) clipped = clipped || s < 1.0;
  EXPECT_TRUE(clipped);
}

// --- malformed files -------------------------------------------------------------------------------

struct Bytes {
  std::string s = "SMTFIX01";
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& i64(int64_t v) { return raw(&v, 8); }
  Bytes& f64(double v) { return raw(&v, 8); }
  Bytes& str(const std::string& v) { return raw(v.data(), v.size()); }
  Bytes& raw(const void* p, size_t n) {
    s.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& header(const std::string& name, uint32_t dtype, std::vector<int64_t> dims) {
    u32(static_cast<uint32_t>(name.size())).str(name).u32(dtype).u32(static_cast<uint32_t>(dims.size()));
    for (int64_t d : dims) i64(d);
    return *this;
  }
};

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "smt_fixture_io_" + name + ".bin";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(FixtureIo, RoundTripsEveryDtype) {
  Bytes b;
  b.header("a", 0, {2, 3});
  for (int i = 0; i < 6; ++i) b.f64(0.5 * i - 1.0);
  b.header("ids", 1, {4}).i64(-1).i64(0).i64(7).i64(int64_t{1} << 40);
  b.header("config", 2, {9}).str("[model]\nx");
  b.header("empty", 0, {0, 5});
  b.header("scalar", 1, {});
  b.i64(42);
  const Fixture fx = read_fixture(write_temp("roundtrip", b.s));
  ASSERT_EQ(fx.size(), 5u);
  EXPECT_EQ(fx.at("a").dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(fx.at("a").f64, (std::vector<double>{-1.0, -0.5, 0.0, 0.5, 1.0, 1.5}));
  EXPECT_EQ(fx.at("a").name, "a");
  EXPECT_EQ(fx.at("ids").i64, (std::vector<int64_t>{-1, 0, 7, int64_t{1} << 40}));
  EXPECT_EQ(fx.at("config").str, "[model]\nx");
  EXPECT_EQ(fx.at("empty").numel(), 0);
  EXPECT_EQ(fx.at("scalar").i64, std::vector<int64_t>{42});
  EXPECT_THROW(fixture_at(fx, "missing"), std::runtime_error);
  EXPECT_EQ(read_fixture(write_temp("magic_only", "SMTFIX01")).size(), 0u);
}

TEST(FixtureIo, RejectsMalformedFiles) {
  EXPECT_THROW(read_fixture(fixture_path("no_such_fixture.bin")), std::runtime_error);
  EXPECT_THROW(read_fixture(write_temp("empty", "")), std::runtime_error);
  EXPECT_THROW(read_fixture(write_temp("bad_magic", "SMTFIX02")), std::runtime_error);

  Bytes good;
  good.header("x", 0, {2}).f64(1).f64(2);
  ASSERT_NO_THROW(read_fixture(write_temp("good", good.s)));
  for (size_t cut = 9; cut < good.s.size(); ++cut)  // every truncation point inside the record
    EXPECT_THROW(read_fixture(write_temp("cut", good.s.substr(0, cut))), std::runtime_error) << cut;

  Bytes dtype;
  dtype.header("x", 3, {1}).f64(1);
  EXPECT_THROW(read_fixture(write_temp("dtype", dtype.s)), std::runtime_error);
  Bytes dup;
  dup.header("x", 1, {1}).i64(1).header("x", 1, {1}).i64(2);
  EXPECT_THROW(read_fixture(write_temp("dup", dup.s)), std::runtime_error);
  Bytes neg;
  neg.header("x", 1, {-1});
  EXPECT_THROW(read_fixture(write_temp("neg", neg.s)), std::runtime_error);
  Bytes huge;
  huge.header("x", 0, {int64_t{1} << 40, int64_t{1} << 40}).f64(0);
  EXPECT_THROW(read_fixture(write_temp("huge", huge.s)), std::runtime_error);
  Bytes str2d;
  str2d.header("s", 2, {1, 1}).str("a");
  EXPECT_THROW(read_fixture(write_temp("str2d", str2d.s)), std::runtime_error);
  Bytes noname;
  noname.u32(0).u32(0).u32(0);
  EXPECT_THROW(read_fixture(write_temp("noname", noname.s)), std::runtime_error);
}

}  // namespace
}  // namespace smt::test
