// `smt generate`: write the synthetic claims of a seed and split as JSONL.
#include <boost/program_options.hpp>
#include <iostream>

#include "app/cli.h"
#include "core/error.h"
#include "data/synthetic.h"

namespace po = boost::program_options;

namespace smt {

int cmd_generate(int argc, char** argv) {
  SyntheticConfig sc;
  std::string split = "train", out;
  po::options_description desc("usage: smt generate --out FILE.jsonl [options]\n\nOptions");
  desc.add_options()("help,h", "print this help")
      ("out", po::value(&out), "output JSONL file (one item per line)")
      ("split", po::value(&split)->default_value(split), "train | heldout")
      ("seed", po::value(&sc.seed)->default_value(sc.seed), "generator seed")
      ("count", po::value(&sc.num_train)->default_value(sc.num_train), "items to write")
      ("long_context_fraction", po::value(&sc.long_context_fraction)->default_value(sc.long_context_fraction),
       "fraction of long-context items")
      ("long_context_chars", po::value(&sc.long_context_chars)->default_value(sc.long_context_chars),
       "bytes between evidence and claim in long-context items");
  if (!parse_command_options(argc, argv, desc)) return 0;
  SMT_USAGE_CHECK(!out.empty(), "smt generate needs --out FILE.jsonl");
  SMT_USAGE_CHECK(split == "train" || split == "heldout", "--split must be train or heldout, got '", split, "'");
  SMT_USAGE_CHECK(sc.num_train > 0, "--count must be positive");
  sc.num_heldout = sc.num_train;
  const auto items = generate_synthetic(sc, split == "train" ? SyntheticSplit::kTrain : SyntheticSplit::kHeldout);
  write_synthetic_jsonl(out, items);
  std::cout << "wrote " << items.size() << " " << split << " items to " << out << "\n";
  return 0;
}

}  // namespace smt
