// Tests of the LIAR reader: the shared copy of the real data (skipped when absent), broken
// fixture files whose errors must name file and line, field selection and the binary view.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "data/liar.h"
#include "data/tokenizer.h"

namespace smt {
namespace {

const std::string kLiarDir = std::string(SMT_SHARED_DIR) + "/data/liar";
const std::string kFixtures = std::string(SMT_SOURCE_DIR) + "/tests/fixtures/liar";

// Independent count of the second column: split each line at its first two tabs by hand.
std::map<std::string, int64_t> count_labels_by_hand(const std::string& path, int64_t* num_lines) {
  std::ifstream in(path, std::ios::binary);
  std::map<std::string, int64_t> counts;
  std::string line;
  *num_lines = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++*num_lines;
    const size_t t1 = line.find('\t');
    const size_t t2 = line.find('\t', t1 + 1);
    ++counts[line.substr(t1 + 1, t2 - t1 - 1)];
  }
  return counts;
}

void check_split(const std::string& file, int64_t expected_rows, const std::map<std::string, int64_t>& expected) {
  const std::string path = kLiarDir + "/" + file;
  const auto records = read_liar_tsv(path);
  EXPECT_EQ(static_cast<int64_t>(records.size()), expected_rows);
  std::map<std::string, int64_t> got;
  for (const auto& r : records) {
    ++got[r.label];
    EXPECT_EQ(kLiarLabels[static_cast<size_t>(r.label_idx)], r.label);
    EXPECT_FALSE(r.statement.empty()) << r.id;
  }
  int64_t lines = 0;
  EXPECT_EQ(got, count_labels_by_hand(path, &lines));
  EXPECT_EQ(lines, expected_rows);
  EXPECT_EQ(got, expected);
}

TEST(LiarReal, TrainAndValidRowsAndLabels) {
  if (!std::filesystem::exists(kLiarDir + "/train.tsv"))
    GTEST_SKIP() << "LIAR data not found at " << kLiarDir << ": skipping";
  // Hard-coded counts verified once with:  cut -f2 train.tsv | sort | uniq -c   (and valid.tsv)
  check_split("train.tsv", 10269,
              {{"barely-true", 1657}, {"false", 1998}, {"half-true", 2123}, {"mostly-true", 1966},
               {"pants-fire", 842}, {"true", 1683}});
  check_split("valid.tsv", 1284,
              {{"barely-true", 237}, {"false", 263}, {"half-true", 248}, {"mostly-true", 251},
               {"pants-fire", 116}, {"true", 169}});
}

TEST(LiarReal, FirstRecordFields) {
  if (!std::filesystem::exists(kLiarDir + "/train.tsv"))
    GTEST_SKIP() << "LIAR data not found at " << kLiarDir << ": skipping";
  const auto records = read_liar_tsv(kLiarDir + "/train.tsv");
  ASSERT_FALSE(records.empty());
  // head -1 train.tsv
  const LiarRecord& r = records[0];
  EXPECT_EQ(r.id, "2635.json");
  EXPECT_EQ(r.label, "false");
  EXPECT_EQ(r.label_idx, 1);
  EXPECT_EQ(r.statement, "Says the Annies List political group supports third-trimester abortions on demand.");
  EXPECT_EQ(r.speaker, "dwayne-bohac");
  EXPECT_EQ(r.party, "republican");
  EXPECT_EQ(r.credit, (std::array<int, 5>{0, 1, 0, 0, 0}));
  EXPECT_EQ(r.context, "a mailer");
  // Third line: barack-obama with credit 70 71 160 163 9.
  EXPECT_EQ(records[2].credit, (std::array<int, 5>{70, 71, 160, 163, 9}));
}

TEST(LiarReader, QuotesDoNotMergeRowsAndCrIsStripped) {
  const auto records = read_liar_tsv(kFixtures + "/good.tsv");
  ASSERT_EQ(records.size(), 4u);  // the trailing empty line is ignored
  EXPECT_EQ(records[0].statement, "Says the \"new tax is a disaster.");
  EXPECT_EQ(records[0].credit, (std::array<int, 5>{1, 2, 3, 4, 5}));
  EXPECT_EQ(records[1].label, "pants-fire");
  EXPECT_EQ(records[1].job, "");
  EXPECT_EQ(records[1].context, "");  // the '\r' of the CRLF line is stripped
  EXPECT_EQ(records[1].credit[4], 70);
  EXPECT_EQ(records[2].statement, "Quote at end\"");
  EXPECT_EQ(records[3].statement, "\"Fully quoted statement, with a comma.\"");
  EXPECT_EQ(records[3].label_idx, 2);
}

std::string error_of(const std::string& path) {
  try {
    read_liar_tsv(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(LiarReader, BrokenLinesNameFileAndLine) {
  const std::string cols = kFixtures + "/bad_columns.tsv";
  EXPECT_EQ(error_of(cols), cols + ":2: expected 14 tab-separated columns, found 13");
  const std::string label = kFixtures + "/bad_label.tsv";
  EXPECT_EQ(error_of(label).rfind(label + ":3: unknown label 'mostly-false'", 0), 0u) << error_of(label);
  const std::string count = kFixtures + "/bad_count.tsv";
  const std::string msg = error_of(count);
  EXPECT_EQ(msg.rfind(count + ":2: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("'1.0'"), std::string::npos) << msg;
  // An unclosed quote on line 1 must not swallow lines 2-3: the error is on line 3 (15 columns).
  const std::string quote = kFixtures + "/quote_then_bad.tsv";
  EXPECT_EQ(error_of(quote), quote + ":3: expected 14 tab-separated columns, found 15");
}

TEST(LiarReader, RejectsOddCountsAndMissingFile) {
  const auto dir = std::filesystem::temp_directory_path() / "smt_liar_test";
  std::filesystem::create_directories(dir);
  const std::string base = "1.json\tfalse\tS.\ta\tb\tc\td\te\t";
  for (const std::string counts : {"-1\t0\t0\t0\t0", "\t0\t0\t0\t0", "1 \t0\t0\t0\t0", "0x1\t0\t0\t0\t0"}) {
    const std::string path = (dir / "odd.tsv").string();
    std::ofstream(path) << base << counts << "\tctx\n";
    EXPECT_THROW(read_liar_tsv(path), Error) << counts;
  }
  const std::string missing = (dir / "does_not_exist.tsv").string();
  EXPECT_EQ(error_of(missing), "cannot open LIAR file " + missing);
  std::filesystem::remove_all(dir);
}

TEST(LiarDataset, FieldSelection) {
  const auto records = read_liar_tsv(kFixtures + "/good.tsv");
  const Dataset plain = make_liar_dataset(records, parse_liar_fields("statement"), false, "liar:fixture");
  EXPECT_EQ(plain.name, "liar:fixture");
  EXPECT_FALSE(plain.leaking);
  EXPECT_EQ(plain.num_classes(), 6);
  EXPECT_EQ(decode_tokens(plain.examples[0].tokens), "<bos>Says the \"new tax is a disaster.<eos>");

  const Dataset meta = make_liar_dataset(records, parse_liar_fields("statement+metadata"), false, "m");
  EXPECT_FALSE(meta.leaking);
  const std::string m0 = decode_tokens(meta.examples[0].tokens);
  EXPECT_EQ(m0.rfind("<bos>Says the \"new tax is a disaster.<sep>", 0), 0u) << m0;
  for (const char* part : {"jane-doe", "Governor", "Ohio", "republican", "taxes", "a speech"})
    EXPECT_NE(m0.find(part), std::string::npos) << part;
  EXPECT_EQ(m0.find("credit"), std::string::npos);
  size_t seps = 0;
  for (int32_t t : meta.examples[0].tokens) seps += t == kSepToken ? 1 : 0;
  EXPECT_EQ(seps, 6u);  // statement + 6 metadata fields

  const Dataset credit = make_liar_dataset(records, parse_liar_fields("statement+metadata+credit"), false, "c");
  EXPECT_TRUE(credit.leaking);
  const std::string c0 = decode_tokens(credit.examples[0].tokens);
  EXPECT_NE(c0.find("credit: bt=1 f=2 ht=3 mt=4 pf=5<eos>"), std::string::npos) << c0;

  EXPECT_THROW(parse_liar_fields("statement+credit+typo"), UsageError);
  EXPECT_THROW(parse_liar_fields(""), UsageError);
}

TEST(LiarDataset, BinaryAndSixWayLabels) {
  std::vector<LiarRecord> records(6);
  for (int i = 0; i < 6; ++i) {
    records[static_cast<size_t>(i)].label = kLiarLabels[static_cast<size_t>(i)];
    records[static_cast<size_t>(i)].label_idx = i;
    records[static_cast<size_t>(i)].statement = "s";
  }
  const Dataset six = make_liar_dataset(records, {}, false, "six");
  const Dataset two = make_liar_dataset(records, {}, true, "two");
  EXPECT_EQ(six.class_names, (std::vector<std::string>{"pants-fire", "false", "barely-true", "half-true",
                                                       "mostly-true", "true"}));
  EXPECT_EQ(two.class_names, (std::vector<std::string>{"false", "true"}));
  const std::vector<int32_t> expected_binary = {0, 0, 0, 1, 1, 1};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(six.examples[static_cast<size_t>(i)].label, i);
    EXPECT_EQ(two.examples[static_cast<size_t>(i)].label, expected_binary[static_cast<size_t>(i)]) << i;
  }
}

TEST(LiarReal, BinaryViewCounts) {
  if (!std::filesystem::exists(kLiarDir + "/valid.tsv"))
    GTEST_SKIP() << "LIAR data not found at " << kLiarDir << ": skipping";
  const auto records = read_liar_tsv(kLiarDir + "/valid.tsv");
  const Dataset d = make_liar_dataset(records, {}, true, "liar:valid");
  // false = pants-fire 116 + false 263 + barely-true 237; true = half-true 248 + mostly-true 251 + true 169.
  EXPECT_EQ(d.label_counts(), (std::vector<int64_t>{616, 668}));
  EXPECT_EQ(d.majority_label(), 1);
}

}  // namespace
}  // namespace smt
