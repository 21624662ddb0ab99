// Evaluation views (LIAR six-way/binary, synthetic families), their JSON, and the SVG writer.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "eval/report.h"
#include "eval/svg_plot.h"

namespace smt {
namespace {

Dataset liar_like(int n) {
  Dataset d;
  d.name = "liar:test";
  d.class_names = {"pants-fire", "false", "barely-true", "half-true", "mostly-true", "true"};
  for (int i = 0; i < n; ++i) {
    Example e;
    e.label = i % 6;
    d.examples.push_back(e);
  }
  return d;
}

std::vector<double> probs_for(int n, int C, int shift) {
  // row i: 0.7 on class (i + shift) % C, the rest spread evenly
  std::vector<double> p(static_cast<size_t>(n * C), 0.3 / (C - 1));
  for (int i = 0; i < n; ++i) p[static_cast<size_t>(i * C + (i + shift) % C)] = 0.7;
  return p;
}

int count(const std::string& s, const std::string& what) {
  int c = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++c;
  return c;
}

TEST(EvalViews, LiarSixWayGivesSixAndCollapsedBinary) {
  const Dataset d = liar_like(12);
  // shift 1: class c predicted as c+1: six-way all wrong; binary wrong only at c = 2 (-> 3) and c = 5 (-> 0)
  const auto views = build_views(probs_for(12, 6, 1), 6, d, EvalSourceKind::kLiar);
  ASSERT_EQ(views.size(), 2u);
  EXPECT_EQ(views[0].name, "liar6");
  EXPECT_EQ(views[0].metrics.accuracy, 0.0);
  EXPECT_EQ(views[1].name, "liar2");
  EXPECT_EQ(views[1].class_names, (std::vector<std::string>{"false", "true"}));
  EXPECT_DOUBLE_EQ(views[1].metrics.accuracy, 8.0 / 12);
  EXPECT_EQ(views[1].metrics.confusion, (std::vector<std::vector<int64_t>>{{4, 2}, {2, 4}}));
  EXPECT_GE(views[1].metrics.auc, 0.0);
  for (size_t i = 0; i < 12; ++i) EXPECT_NEAR(views[1].probs[2 * i] + views[1].probs[2 * i + 1], 1.0, 1e-12);
}

TEST(EvalViews, LiarBinaryHeadGivesOnlyLiar2) {
  Dataset d = liar_like(8);
  d.class_names = {"false", "true"};
  for (size_t i = 0; i < d.examples.size(); ++i) d.examples[i].label = static_cast<int32_t>(i % 2);
  const auto views = build_views(probs_for(8, 2, 0), 2, d, EvalSourceKind::kLiar);
  ASSERT_EQ(views.size(), 1u);
  EXPECT_EQ(views[0].name, "liar2");
  EXPECT_EQ(views[0].metrics.accuracy, 1.0);
  EXPECT_THROW(build_views(probs_for(8, 2, 0), 6, d, EvalSourceKind::kLiar), Error);
}

TEST(EvalViews, SyntheticFamiliesPartitionTheSet) {
  Dataset d;
  d.class_names = {"false", "true"};
  d.group_names = {"factual", "opinion", "long_context"};
  for (int i = 0; i < 10; ++i) {
    Example e;
    e.label = i % 2;
    e.group = i < 6 ? 0 : 2;  // no "opinion" items: no view for it
    d.examples.push_back(e);
  }
  const auto views = build_views(probs_for(10, 2, 0), 2, d, EvalSourceKind::kSynthetic);
  ASSERT_EQ(views.size(), 3u);
  EXPECT_EQ(views[0].name, "synthetic");
  EXPECT_EQ(views[1].name, "factual");
  EXPECT_EQ(views[1].metrics.n, 6);
  EXPECT_EQ(views[2].name, "long_context");
  EXPECT_EQ(views[2].metrics.n, 4);
  const std::string j = view_json(views[1]);
  for (const char* key : {"\"n\": 6", "\"accuracy\"", "\"macro_f1\"", "\"per_class\"", "\"false\": {\"precision\"",
                          "\"confusion\": [[3, 0], [0, 3]]", "\"nll\"", "\"brier\"", "\"ece\"", "\"auc\": 1"})
    EXPECT_NE(j.find(key), std::string::npos) << key << " in " << j;
}

TEST(EvalViews, MultiClassViewHasNoAuc) {
  const auto views = build_views(probs_for(12, 6, 0), 6, liar_like(12), EvalSourceKind::kLiar);
  EXPECT_EQ(view_json(views[0]).find("\"auc\""), std::string::npos);
  EXPECT_NE(view_json(views[1]).find("\"auc\""), std::string::npos);
}

TEST(SvgPlot, EscapesTextAndDrawsEveryCell) {
  EXPECT_EQ(xml_escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
  const std::string conf = plot_confusion({{"x<y", {"a", "b", "c"}, {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}}});
  EXPECT_EQ(conf.rfind("<?xml", 0), 0u);
  EXPECT_NE(conf.find("x&lt;y: confusion matrix"), std::string::npos);
  EXPECT_EQ(count(conf, "<title>true "), 9);  // one tooltip per cell
  EXPECT_EQ(count(conf, "<svg"), 1);
  EXPECT_NE(conf.find("</svg>"), std::string::npos);
  const std::string load = plot_expert_load({"layer 0", "layer 1"}, {{5, 3}, {0, 8}}, "t");
  EXPECT_EQ(count(load, "<title>layer "), 4);
  EXPECT_THROW(plot_expert_load({"layer 0"}, {}, "t"), Error);
  const std::string roc = plot_roc({{"m", {0, 0.5, 1}, {0, 0.8, 1}, 0.9}}, "ROC");
  EXPECT_NE(roc.find("m (AUC 0.900)"), std::string::npos);
  EXPECT_EQ(count(roc, "<polyline"), 1);
  const std::string rel = plot_reliability({{"v", {2, 0, 1}, {0.2, 0, 0.9}, {0.5, 0, 1.0}, 0.1}});
  EXPECT_EQ(count(rel, "<title>bin "), 2);  // the empty bin is not drawn
}

}  // namespace
}  // namespace smt
