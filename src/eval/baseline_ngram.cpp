// Hashed n-gram logistic regression (see baseline_ngram.h).
#include "eval/baseline_ngram.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <deque>
#include <numeric>

#include "core/error.h"
#include "data/tokenizer.h"

namespace smt {

namespace {

// FNV-1a 64 over a kind tag and the bytes; a final mix spreads the low bits.
uint64_t hash_gram(char kind, const char* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  h = (h ^ static_cast<uint8_t>(kind)) * 1099511628211ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ static_cast<uint8_t>(data[i])) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

bool is_word_byte(unsigned char c) { return std::isalnum(c) || c >= 128 || c == '\''; }

// Row-wise softmax cross-entropy of rows against labels with weights w ([num_used, C] + bias [C]),
// l2 penalty on the weights; fills grad. Returns the objective.
double objective(const std::vector<SparseRow>& rows, const std::vector<int32_t>& labels,
                 const std::vector<std::vector<uint32_t>>& local_idx, size_t C, size_t num_used, double l2,
                 const std::vector<double>& w, std::vector<double>& grad) {
  std::fill(grad.begin(), grad.end(), 0.0);
  const double* bias = w.data() + num_used * C;
  double* gbias = grad.data() + num_used * C;
  std::vector<double> z(C);
  double loss = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& li = local_idx[i];
    const auto& val = rows[i].val;
    for (size_t c = 0; c < C; ++c) z[c] = bias[c];
    for (size_t j = 0; j < li.size(); ++j) {
      const double* wr = w.data() + static_cast<size_t>(li[j]) * C;
      for (size_t c = 0; c < C; ++c) z[c] += val[j] * wr[c];
    }
    const double zmax = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (size_t c = 0; c < C; ++c) sum += std::exp(z[c] - zmax);
    const double lse = zmax + std::log(sum);
    loss += lse - z[static_cast<size_t>(labels[i])];
    for (size_t c = 0; c < C; ++c) z[c] = std::exp(z[c] - lse) - (c == static_cast<size_t>(labels[i]) ? 1.0 : 0.0);
    for (size_t c = 0; c < C; ++c) gbias[c] += z[c];
    for (size_t j = 0; j < li.size(); ++j) {
      double* gr = grad.data() + static_cast<size_t>(li[j]) * C;
      for (size_t c = 0; c < C; ++c) gr[c] += val[j] * z[c];
    }
  }
  const double inv_n = 1.0 / static_cast<double>(rows.size());
  double reg = 0;
  for (size_t k = 0; k < num_used * C; ++k) {
    grad[k] = grad[k] * inv_n + l2 * w[k];
    reg += w[k] * w[k];
  }
  for (size_t c = 0; c < C; ++c) gbias[c] *= inv_n;
  return loss * inv_n + 0.5 * l2 * reg;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

std::string example_text(const Example& example) {
  std::string out;
  out.reserve(example.tokens.size());
  for (int32_t t : example.tokens) {
    if (t >= 0 && t < 256) out.push_back(static_cast<char>(t));
    else if (t == kSepToken) out.push_back('\n');
  }
  return out;
}

SparseRow ngram_features(const std::string& text, const NgramBaselineConfig& config) {
  SMT_CHECK(config.hash_bits >= 4 && config.hash_bits <= 30, "ngram baseline: hash_bits ", config.hash_bits,
            " outside [4, 30]");
  SMT_CHECK(config.char_min >= 1 && config.char_max >= config.char_min, "ngram baseline: bad char n-gram range");
  std::string lower(text);
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  std::vector<std::pair<uint32_t, float>> feats;
  const uint64_t mask = (uint64_t{1} << config.hash_bits) - 1;
  auto add = [&](char kind, const char* p, size_t n) {
    const uint64_t h = hash_gram(kind, p, n);
    feats.emplace_back(static_cast<uint32_t>(h & mask), (h >> 63) ? -1.0f : 1.0f);
  };
  // words: unigrams and bigrams
  std::vector<std::string> words;
  for (size_t i = 0; i < lower.size();) {
    if (!is_word_byte(static_cast<unsigned char>(lower[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < lower.size() && is_word_byte(static_cast<unsigned char>(lower[j]))) ++j;
    words.push_back(lower.substr(i, j - i));
    i = j;
  }
  for (size_t i = 0; i < words.size(); ++i) {
    add('w', words[i].data(), words[i].size());
    if (i + 1 < words.size()) {
      const std::string bi = words[i] + ' ' + words[i + 1];
      add('b', bi.data(), bi.size());
    }
  }
  for (int n = config.char_min; n <= config.char_max; ++n)
    for (size_t i = 0; i + static_cast<size_t>(n) <= lower.size(); ++i) add('c', lower.data() + i, static_cast<size_t>(n));
  std::sort(feats.begin(), feats.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  SparseRow row;
  double norm2 = 0;
  for (size_t i = 0; i < feats.size();) {
    size_t j = i;
    float v = 0;
    while (j < feats.size() && feats[j].first == feats[i].first) v += feats[j++].second;
    if (v != 0) {
      row.idx.push_back(feats[i].first);
      row.val.push_back(v);
      norm2 += static_cast<double>(v) * v;
    }
    i = j;
  }
  if (norm2 > 0) {
    const double inv = 1.0 / std::sqrt(norm2);
    for (float& v : row.val) v = static_cast<float>(v * inv);
  }
  return row;
}

void NgramLogisticRegression::fit(const std::vector<SparseRow>& rows, const std::vector<int32_t>& labels,
                                  int num_classes) {
  SMT_CHECK(num_classes >= 2, "ngram baseline: need at least 2 classes, got ", num_classes);
  SMT_CHECK(!rows.empty() && rows.size() == labels.size(), "ngram baseline: ", rows.size(), " rows, ",
            labels.size(), " labels");
  for (int32_t y : labels) SMT_CHECK(y >= 0 && y < num_classes, "ngram baseline: label ", y, " out of range");
  num_classes_ = num_classes;
  const auto C = static_cast<size_t>(num_classes);
  used_buckets_.clear();
  for (const auto& r : rows) used_buckets_.insert(used_buckets_.end(), r.idx.begin(), r.idx.end());
  std::sort(used_buckets_.begin(), used_buckets_.end());
  used_buckets_.erase(std::unique(used_buckets_.begin(), used_buckets_.end()), used_buckets_.end());
  const size_t U = used_buckets_.size();
  std::vector<std::vector<uint32_t>> local(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    local[i].reserve(rows[i].idx.size());
    for (uint32_t b : rows[i].idx)
      local[i].push_back(static_cast<uint32_t>(std::lower_bound(used_buckets_.begin(), used_buckets_.end(), b) -
                                               used_buckets_.begin()));
  }
  const size_t P = U * C + C;
  w_.assign(P, 0.0);
  std::vector<double> g(P), w_new(P), g_new(P), dir(P);
  double f = objective(rows, labels, local, C, U, config_.l2, w_, g);
  std::deque<std::vector<double>> s_hist, y_hist;
  std::deque<double> rho_hist;
  iterations_ = 0;
  for (int it = 0; it < config_.max_iterations; ++it) {
    // two-loop recursion: dir = -H g
    dir = g;
    std::vector<double> alpha(s_hist.size());
    for (size_t m = s_hist.size(); m-- > 0;) {
      alpha[m] = rho_hist[m] * dot(s_hist[m], dir);
      for (size_t k = 0; k < P; ++k) dir[k] -= alpha[m] * y_hist[m][k];
    }
    double gamma = 1.0;
    if (!s_hist.empty()) gamma = dot(s_hist.back(), y_hist.back()) / dot(y_hist.back(), y_hist.back());
    else gamma = 1.0 / std::max(1e-12, std::sqrt(dot(g, g)));
    for (double& v : dir) v *= gamma;
    for (size_t m = 0; m < s_hist.size(); ++m) {
      const double beta = rho_hist[m] * dot(y_hist[m], dir);
      for (size_t k = 0; k < P; ++k) dir[k] += s_hist[m][k] * (alpha[m] - beta);
    }
    for (double& v : dir) v = -v;
    double slope = dot(g, dir);
    if (slope >= 0) {  // not a descent direction: restart from steepest descent
      s_hist.clear();
      y_hist.clear();
      rho_hist.clear();
      for (size_t k = 0; k < P; ++k) dir[k] = -g[k];
      slope = dot(g, dir);
    }
    if (slope > -1e-20) break;  // gradient vanished
    // backtracking Armijo line search
    double step = 1.0, f_new = f;
    bool accepted = false;
    for (int ls = 0; ls < 30; ++ls) {
      for (size_t k = 0; k < P; ++k) w_new[k] = w_[k] + step * dir[k];
      f_new = objective(rows, labels, local, C, U, config_.l2, w_new, g_new);
      if (f_new <= f + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
      step *= 0.5;
    }
    if (!accepted) break;
    std::vector<double> s(P), y(P);
    for (size_t k = 0; k < P; ++k) {
      s[k] = w_new[k] - w_[k];
      y[k] = g_new[k] - g[k];
    }
    const double sy = dot(s, y);
    if (sy > 1e-12) {
      s_hist.push_back(std::move(s));
      y_hist.push_back(std::move(y));
      rho_hist.push_back(1.0 / sy);
      if (static_cast<int>(s_hist.size()) > config_.lbfgs_memory) {
        s_hist.pop_front();
        y_hist.pop_front();
        rho_hist.pop_front();
      }
    }
    const double decrease = f - f_new;
    w_.swap(w_new);
    g.swap(g_new);
    f = f_new;
    iterations_ = it + 1;
    if (decrease < config_.tolerance * std::max(1.0, std::abs(f))) break;
  }
  final_loss_ = f;
}

void NgramLogisticRegression::fit(const Dataset& train) {
  std::vector<SparseRow> rows(train.examples.size());
  std::vector<int32_t> labels(train.examples.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i] = ngram_features(example_text(train.examples[i]), config_);
    labels[i] = train.examples[i].label;
  }
  fit(rows, labels, train.num_classes());
}

std::vector<double> NgramLogisticRegression::predict_proba(const std::vector<SparseRow>& rows) const {
  SMT_CHECK(num_classes_ > 0, "ngram baseline: predict before fit");
  const auto C = static_cast<size_t>(num_classes_);
  const size_t U = used_buckets_.size();
  std::vector<double> out(rows.size() * C);
  for (size_t i = 0; i < rows.size(); ++i) {
    double* z = out.data() + i * C;
    for (size_t c = 0; c < C; ++c) z[c] = w_[U * C + c];
    for (size_t j = 0; j < rows[i].idx.size(); ++j) {
      const auto it = std::lower_bound(used_buckets_.begin(), used_buckets_.end(), rows[i].idx[j]);
      if (it == used_buckets_.end() || *it != rows[i].idx[j]) continue;  // bucket unseen in training: weight 0
      const double* wr = w_.data() + static_cast<size_t>(it - used_buckets_.begin()) * C;
      for (size_t c = 0; c < C; ++c) z[c] += rows[i].val[j] * wr[c];
    }
    const double zmax = *std::max_element(z, z + C);
    double sum = 0;
    for (size_t c = 0; c < C; ++c) sum += (z[c] = std::exp(z[c] - zmax));
    for (size_t c = 0; c < C; ++c) z[c] /= sum;
  }
  return out;
}

std::vector<double> NgramLogisticRegression::predict_proba(const Dataset& data) const {
  std::vector<SparseRow> rows(data.examples.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = ngram_features(example_text(data.examples[i]), config_);
  return predict_proba(rows);
}

}  // namespace smt
