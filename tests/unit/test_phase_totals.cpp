// PhaseTotals: the host side of train.profile (per-phase GPU time summed over steps).
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/phase_totals.h"

namespace smt {
namespace {

TEST(PhaseTotals, SumsPerNameInFirstSeenOrderAndAveragesOverSteps) {
  PhaseTotals t;
  // Two steps of a two-layer model: per-layer phases add one interval per layer.
  for (int step = 0; step < 2; ++step) {
    t.add("fwd.embedding", 1.0);
    for (int layer = 0; layer < 2; ++layer) {
      t.add("fwd.attention", 2.0 + step);  // 2 in the first step, 3 in the second
      t.add("fwd.experts", 0.5);
    }
    t.add("opt.adamw", 0.25);
    t.end_step();
  }
  ASSERT_EQ(t.steps(), 2);
  ASSERT_EQ(t.phases().size(), 3u + 1u);
  EXPECT_EQ(t.phases()[0].name, "fwd.embedding");
  EXPECT_EQ(t.phases()[1].name, "fwd.attention");
  EXPECT_EQ(t.phases()[2].name, "fwd.experts");
  EXPECT_EQ(t.phases()[3].name, "opt.adamw");
  EXPECT_DOUBLE_EQ(t.phases()[1].total_ms, 2 * 2.0 + 2 * 3.0);
  EXPECT_EQ(t.phases()[1].intervals, 4);
  // Per step: 1 + (2.5 * 2) + (0.5 * 2) + 0.25 = 7.25 ms.
  EXPECT_DOUBLE_EQ(t.step_ms(), 7.25);
  EXPECT_EQ(t.json(), R"({"fwd.embedding": 1, "fwd.attention": 5, "fwd.experts": 1, "opt.adamw": 0.25})");
  const std::string table = t.table();
  EXPECT_NE(table.find("fwd.attention"), std::string::npos);
  EXPECT_NE(table.find("69.0%"), std::string::npos) << table;  // 5 / 7.25
  EXPECT_NE(table.find("7.250 ms over 2 steps"), std::string::npos) << table;
}

TEST(PhaseTotals, EmptyBeforeTheFirstStepAndRejectsBadIntervals) {
  PhaseTotals t;
  EXPECT_EQ(t.json(), "{}");
  EXPECT_EQ(t.step_ms(), 0.0);
  t.add("fwd.attention", 1.0);
  EXPECT_EQ(t.json(), "{}");  // no completed step yet
  EXPECT_THROW(t.add("fwd.attention", -1.0), Error);
  EXPECT_THROW(t.add("fwd.attention", std::nan("")), Error);
}

}  // namespace
}  // namespace smt
