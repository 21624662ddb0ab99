// Synthetic claims generator: a hidden knowledge base drawn from the seed (12 invented countries,
// their capitals, half of them old cities, 6 rivers and 6 mountains) and eight claim families.
// Invariants: the same config gives byte-identical items; item i has family i % 8 and truth
// (i / 8) % 2 == 0; held-out items come from their own Philox streams and from surface
// combinations that train never uses, so no (evidence, claim) is in both splits.
// Learnability (a 2-layer byte-level model with a mean-pooled head, a few hundred steps): short
// texts, and truth carried by few distinctive bytes/words: memorised names (factual, entity),
// one-digit comparisons (opinion, temporal, numerical), an upper-case notice or a copied letter
// (context), "lucky" superstitions vs known causes (causal), "isn't" (contradiction).
#include "data/synthetic.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <unordered_set>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"

namespace smt {
namespace {

constexpr int kNumCountries = 12;
constexpr int kNumRivers = 6;
constexpr int kNumFamilies = 8;

// Philox streams: the KB, then one stream per (split, item).
constexpr uint64_t kKbStream = 0x4b42000000000000ull;
constexpr uint64_t kSplitTag[2] = {0x1ull << 60, 0x2ull << 60};

enum Family { kFactual, kOpinion, kContext, kTemporal, kNumerical, kEntity, kCausal, kContradiction };

template <typename T>
const T& pick(Rng& rng, const std::vector<T>& v) {
  return v[static_cast<size_t>(rng.below(v.size()))];
}
int pick_int(Rng& rng, int n) { return static_cast<int>(rng.below(static_cast<uint64_t>(n))); }
// Uniform in [0, n) but != avoid.
int pick_other(Rng& rng, int n, int avoid) {
  const int k = pick_int(rng, n - 1);
  return k >= avoid ? k + 1 : k;
}
bool coin(Rng& rng) { return (rng.next_u32() & 1u) != 0; }

std::string invent_name(Rng& rng) {
  static const std::vector<std::string> onsets = {"b", "d", "f", "g", "k", "l", "m", "n",
                                                  "p", "r", "s", "t", "v", "z", "th", "sh"};
  static const std::vector<std::string> vowels = {"a", "e", "i", "o", "u"};
  static const std::vector<std::string> codas = {"", "", "n", "r", "l", "s"};
  std::string s = pick(rng, onsets) + pick(rng, vowels) + pick(rng, codas) + pick(rng, onsets) + pick(rng, vowels);
  if (coin(rng)) s += pick(rng, codas);
  s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

// ---- word lists ------------------------------------------------------------------------------
// Each family decides truth with its own words, and where words are shared (digits) they point the
// same way: a larger digit in the evidence makes opinion, temporal and numerical claims truer.

// Sentence openers that multiply the surface forms of memorised facts (so that held-out items
// can be new sentences about known facts). Templates start in lower case; the result is capitalised.
const std::vector<std::string> kOpeners = {"", "indeed, ", "yes, ", "in fact, ", "we know ", "so, ", "also, ", "note: "};
const std::vector<std::string> kOldCityTemplates = {"{Y} is an old city.", "{Y} was built long ago.",
                                                    "{Y} is an ancient city.", "the city of {Y} is old."};
const std::vector<std::string> kRiverTemplates = {"{N} is a river.", "the river {N} flows to the sea.",
                                                  "boats sail down the {N}.", "{N} is the name of a river."};

const std::vector<std::string> kPollTopics = {"the new bridge", "the harbour", "the festival",
                                              "the museum",     "the market",  "the park"};
const std::vector<std::string> kPollEvidence = {"In a poll in {X}, {N} of 10 people said they like {T}.",
                                                "Poll in {X}: {N} in 10 people like {T}."};
const std::vector<std::string> kPollClaims = {"most people in {X} like {T}.", "a majority in {X} approves of {T}.",
                                              "{T} is popular in {X}."};

const std::vector<std::string> kVehicles = {"ferry", "bus", "train", "boat", "coach", "tram"};
const std::vector<std::string> kStops = {"gate", "platform", "stop", "bay"};
// {V} vehicle, {X} country, {S} stop word, {L} letter
const std::vector<std::string> kCopyEvidence = {"The {V} to {X} leaves from {S} {L}.", "The {V} to {X} uses {S} {L}."};
const std::vector<std::string> kCopyClaims = {"The {V} to {X} leaves from {S} {L}.", "Take the {V} to {X} at {S} {L}."};
// The same claim is true or false depending on the notice in the evidence.
const std::vector<std::string> kRunning = {"ON TIME", "RUNNING", "BOARDING"};
const std::vector<std::string> kNotRunning = {"CANCELLED", "SUSPENDED", "CALLED OFF"};
const std::vector<std::string> kNoticeEvidence = {"Notice in {X}: {V} {W} today.", "{V} to {X}: {W}."};
const std::vector<std::string> kNoticeClaims = {"The {V} to {X} runs today.", "You can take the {V} to {X} today."};
// Capital letters that start no name or sentence in context items or filler, so that a repeated
// value letter means a copied value.
const std::string kContextValues = "EHJQUWXY";

const std::vector<std::string> kOrdinals = {"first", "second", "third",   "fourth", "fifth",
                                            "sixth", "seventh", "eighth", "ninth"};
const std::vector<std::string> kAfter = {"after the {B} day", "later than the {B} day"};
const std::vector<std::string> kEvents = {"fair", "strike", "festival", "election", "harvest", "race"};

const std::vector<std::string> kNumberWords = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
const std::vector<std::string> kThings = {"harbours", "towers", "bridges", "schools", "mines", "lakes"};
const std::vector<std::string> kMoreThan = {"{X} has more than {B} {T}.", "There are more than {B} {T} in {X}."};

struct CauseEffect {
  std::string cause, effect;  // noun phrases
};
const std::vector<CauseEffect> kCauseEffects = {{"heavy rain", "floods"},        {"a long drought", "a poor harvest"},
                                                {"a rail strike", "empty stations"}, {"a big festival", "full hotels"},
                                                {"a forest fire", "smoky skies"},    {"a storm at sea", "cancelled ferries"}};
// Superstitions: never the cause of anything.
const std::vector<std::string> kNonCauses = {"a lucky charm", "a lucky coin", "a lucky song",
                                             "a lucky hat",   "a lucky stone", "a lucky number"};
const std::vector<std::string> kCausalTemplates = {"{C} caused {E}.", "{E} came from {C}.", "{C} led to {E}.",
                                                   "{C} brought {E}."};

const std::vector<std::string> kPlaces = {"bridge", "harbour", "road",   "market",  "school", "museum",
                                          "park",   "library", "station", "castle", "garden", "square"};
const std::vector<std::string> kStates = {"busy", "safe", "crowded", "clean", "quiet",
                                          "full", "empty", "famous", "large", "small"};

// Filler for long-context items: neutral sentences (no digits, months, seasons, quantifiers or
// negations) about other countries.
const std::vector<std::string> kFiller = {
    "{X} is known for its quiet streets.",      "Travellers often visit {X}.",
    "People in {X} enjoy old songs.",           "The old library of {X} has a reading room.",
    "Children in {X} learn to swim early.",     "Merchants in {X} trade wool and grain.",
    "A new road was built near {X}.",           "The bakers of {X} sell sweet bread.",
    "Farmers around {X} keep goats and sheep.", "Painters like the light in {X}.",
    "Fishermen from {X} go out early.",         "The hills near {X} are green."};

std::string replace_all(std::string s, const std::string& key, const std::string& value) {
  for (size_t pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + value.size()))
    s.replace(pos, key.size(), value);
  return s;
}
std::string capitalise(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

struct Draft {
  std::string evidence, claim;
  int country = -1;  // main country of the item (kept out of the filler)
};

// Train and held-out items differ by construction: every family draws a triple of surface choices
// that the label does not depend on (e.g. country, topic, template) and an item belongs to the
// held-out split iff (a + b + c) % 4 == 3. Every single choice and every pair of them occurs in
// both splits; only the triples are new. Both splits keep the same label rules and balance.
bool heldout_triple(int a, int b, int c) { return (a + b + c) % 4 == 3; }
struct Triple {
  int a, b, c;
};
Triple pick_triple(Rng& rng, int num_a, int num_b, int num_c, bool heldout) {
  while (true) {
    const Triple t{pick_int(rng, num_a), pick_int(rng, num_b), pick_int(rng, num_c)};
    if (heldout_triple(t.a, t.b, t.c) == heldout) return t;
  }
}
int size_of(const auto& v) { return static_cast<int>(v.size()); }

// Index of a member of the subset {i : bits[i] == want} of [0, bits.size()), uniformly.
int pick_with_bit(Rng& rng, const std::vector<uint8_t>& bits, bool want) {
  std::vector<int> members;
  for (size_t i = 0; i < bits.size(); ++i)
    if ((bits[i] != 0) == want) members.push_back(static_cast<int>(i));
  return members[static_cast<size_t>(rng.below(members.size()))];
}

// ---- families --------------------------------------------------------------------------------
// Each draws from rng and builds an item whose truth is `truth`.

// Memorised KB facts, no evidence: "<capital> is an old city" in several phrasings, true iff the
// KB marks that capital as old.
Draft gen_factual(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  int opener = 0, templ = 0;
  do {
    d.country = pick_with_bit(rng, kb.old_city, truth);
    opener = pick_int(rng, static_cast<int>(kOpeners.size()));
    templ = pick_int(rng, static_cast<int>(kOldCityTemplates.size()));
  } while (heldout_triple(d.country, opener, templ) != heldout);
  const std::string sentence =
      replace_all(kOldCityTemplates[static_cast<size_t>(templ)], "{Y}", kb.capitals[static_cast<size_t>(d.country)]);
  d.claim = capitalise(kOpeners[static_cast<size_t>(opener)] + sentence);
  return d;
}

// Public opinion: a poll as evidence; "most people like T" is true iff more than 5 in 10 said so.
Draft gen_opinion(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const Triple t = pick_triple(rng, kNumCountries, size_of(kPollTopics), size_of(kPollEvidence), heldout);
  d.country = t.a;
  const std::string& C = kb.countries[static_cast<size_t>(d.country)];
  const std::string& topic = kPollTopics[static_cast<size_t>(t.b)];
  const int n = truth ? 6 + pick_int(rng, 4) : 1 + pick_int(rng, 4);  // 6..9 of 10, or 1..4 of 10
  d.evidence = replace_all(replace_all(replace_all(kPollEvidence[static_cast<size_t>(t.c)], "{X}", C), "{T}", topic),
                           "{N}", std::to_string(n));
  d.claim = capitalise(replace_all(replace_all(pick(rng, kPollClaims), "{X}", C), "{T}", topic));
  return d;
}

// Context: half the items copy a one-letter detail of the evidence (true) or change it (false);
// the other half make the same claim, whose truth depends on the notice in the evidence.
Draft gen_context(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const bool copy = coin(rng);
  const Triple t =
      pick_triple(rng, kNumCountries, size_of(kVehicles), copy ? size_of(kStops) : size_of(kNoticeEvidence), heldout);
  d.country = t.a;
  const std::string& C = kb.countries[static_cast<size_t>(d.country)];
  const std::string& vehicle = kVehicles[static_cast<size_t>(t.b)];
  auto fill = [&](std::string s) { return capitalise(replace_all(replace_all(s, "{X}", C), "{V}", vehicle)); };
  if (copy) {
    const std::string& stop = kStops[static_cast<size_t>(t.c)];
    const int n = static_cast<int>(kContextValues.size());
    const int v = pick_int(rng, n);
    const int claimed = truth ? v : pick_other(rng, n, v);
    d.evidence = replace_all(replace_all(fill(pick(rng, kCopyEvidence)), "{S}", stop), "{L}",
                             kContextValues.substr(static_cast<size_t>(v), 1));
    d.claim = replace_all(replace_all(fill(pick(rng, kCopyClaims)), "{S}", stop), "{L}",
                          kContextValues.substr(static_cast<size_t>(claimed), 1));
  } else {
    const std::string& status = truth ? pick(rng, kRunning) : pick(rng, kNotRunning);
    d.evidence = replace_all(fill(kNoticeEvidence[static_cast<size_t>(t.c)]), "{W}", status);
    d.claim = fill(pick(rng, kNoticeClaims));
  }
  return d;
}

// Temporal: "began after the <ordinal> day" is true iff the evidence day (a digit) is later.
Draft gen_temporal(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const Triple t = pick_triple(rng, kNumCountries, size_of(kEvents), size_of(kAfter), heldout);
  d.country = t.a;
  const std::string& C = kb.countries[static_cast<size_t>(d.country)];
  const std::string& event = kEvents[static_cast<size_t>(t.b)];
  int day = 0, bound = 0;
  do {  // uniform over pairs (day 1..9, bound 2..8, different) with the wanted truth
    day = 1 + pick_int(rng, 9);
    bound = 2 + pick_int(rng, 7);
  } while (day == bound || (day > bound) != truth);
  d.evidence = "The " + event + " in " + C + " began on day " + std::to_string(day) + ".";
  d.claim = "The " + event + " in " + C + " began " +
            replace_all(kAfter[static_cast<size_t>(t.c)], "{B}", kOrdinals[static_cast<size_t>(bound - 1)]) + ".";
  return d;
}

// Numerical: "more than <word>" is true iff the evidence count (a digit) exceeds it.
Draft gen_numerical(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const Triple t = pick_triple(rng, kNumCountries, size_of(kThings), size_of(kMoreThan), heldout);
  d.country = t.a;
  const std::string& C = kb.countries[static_cast<size_t>(d.country)];
  const std::string& thing = kThings[static_cast<size_t>(t.b)];
  int count = 0, bound = 0;
  do {  // uniform over pairs (count 1..9, bound 2..8, different) with the wanted truth
    count = 1 + pick_int(rng, 9);
    bound = 2 + pick_int(rng, 7);
  } while (count == bound || (count > bound) != truth);
  d.evidence = C + " has " + std::to_string(count) + " " + thing + ".";
  d.claim = replace_all(replace_all(replace_all(kMoreThan[static_cast<size_t>(t.c)], "{X}", C), "{B}",
                                    kNumberWords[static_cast<size_t>(bound - 1)]),
                        "{T}", thing);
  return d;
}

// Entity typing: "N is a river" is true iff N is one of the KB's rivers (false items name a mountain).
Draft gen_entity(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const Triple t = pick_triple(rng, kNumRivers, size_of(kOpeners), size_of(kRiverTemplates), heldout);
  const std::string& name = (truth ? kb.rivers : kb.mountains)[static_cast<size_t>(t.a)];
  d.claim = capitalise(kOpeners[static_cast<size_t>(t.b)] +
                       replace_all(kRiverTemplates[static_cast<size_t>(t.c)], "{N}", name));
  return d;
}

// Causal: true claims name the real cause of an effect; false ones a superstition (three quarters)
// or the cause of a different effect (one quarter).
Draft gen_causal(const SyntheticKb& /*kb*/, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const int n = size_of(kCauseEffects);
  const Triple t = pick_triple(rng, size_of(kOpeners), size_of(kCausalTemplates), n, heldout);
  const int opener = t.a, templ = t.b, e = t.c;
  std::string cause;
  if (truth) {
    cause = kCauseEffects[static_cast<size_t>(e)].cause;
  } else if (pick_int(rng, 4) < 3) {
    cause = pick(rng, kNonCauses);
  } else {
    cause = kCauseEffects[static_cast<size_t>(pick_other(rng, n, e))].cause;
  }
  std::string sentence = kCausalTemplates[static_cast<size_t>(templ)];
  sentence = replace_all(sentence, "{C}", cause);
  sentence = replace_all(sentence, "{E}", kCauseEffects[static_cast<size_t>(e)].effect);
  d.claim = capitalise(kOpeners[static_cast<size_t>(opener)] + sentence);
  return d;
}

// Contradiction: the claim restates the evidence (true) or negates it with "isn't" (false). An
// eighth of the evidence sentences are themselves negative, so a negation in the claim alone
// does not decide.
Draft gen_contradiction(const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  Draft d;
  const Triple t = pick_triple(rng, kNumCountries, size_of(kPlaces), size_of(kStates), heldout);
  d.country = t.a;
  const std::string& C = kb.countries[static_cast<size_t>(d.country)];
  const std::string& place = kPlaces[static_cast<size_t>(t.b)];
  const std::string& state = kStates[static_cast<size_t>(t.c)];
  const bool neg_evidence = pick_int(rng, 8) == 0;
  const bool neg_claim = truth ? neg_evidence : !neg_evidence;
  d.evidence = "The " + place + " in " + C + (neg_evidence ? " isn't " : " is ") + state + ".";
  d.claim = "The " + place + (neg_claim ? " isn't " : " is ") + state + ".";
  return d;
}

Draft gen_family(int family, const SyntheticKb& kb, Rng& rng, bool truth, bool heldout) {
  switch (family) {
    case kFactual: return gen_factual(kb, rng, truth, heldout);
    case kOpinion: return gen_opinion(kb, rng, truth, heldout);
    case kContext: return gen_context(kb, rng, truth, heldout);
    case kTemporal: return gen_temporal(kb, rng, truth, heldout);
    case kNumerical: return gen_numerical(kb, rng, truth, heldout);
    case kEntity: return gen_entity(kb, rng, truth, heldout);
    case kCausal: return gen_causal(kb, rng, truth, heldout);
    default: return gen_contradiction(kb, rng, truth, heldout);
  }
}

bool family_has_evidence(int family) { return family != kFactual && family != kEntity && family != kCausal; }
constexpr int kNumEvidenceFamilies = 5;

// Neutral sentences about countries other than `avoid`, at least `chars` bytes in all.
std::string make_filler(const SyntheticKb& kb, Rng& rng, int avoid, int64_t chars) {
  std::string out;
  while (static_cast<int64_t>(out.size()) < chars) {
    int c = pick_int(rng, kNumCountries);
    if (avoid >= 0 && c == avoid) c = pick_other(rng, kNumCountries, avoid);
    if (!out.empty()) out += ' ';
    out += replace_all(pick(rng, kFiller), "{X}", kb.countries[static_cast<size_t>(c)]);
  }
  return out;
}

SyntheticItem make_item(const SyntheticConfig& config, const SyntheticKb& kb, SyntheticSplit split, int64_t slot) {
  const uint64_t stream = kSplitTag[split == SyntheticSplit::kTrain ? 0 : 1] | static_cast<uint64_t>(slot);
  Rng rng(config.seed, stream);
  SyntheticItem item;
  item.family = static_cast<int>(slot % kNumFamilies);
  item.is_true = (slot / kNumFamilies) % 2 == 0;
  Draft d = gen_family(item.family, kb, rng, item.is_true, split == SyntheticSplit::kHeldout);
  item.evidence = std::move(d.evidence);
  item.claim = std::move(d.claim);
  item.evidence_chars = static_cast<int64_t>(item.evidence.size());
  if (family_has_evidence(item.family) && config.long_context_fraction > 0 && config.long_context_chars > 0) {
    // Only evidence families can be long-context; raise their rate so the overall fraction holds.
    const double p = std::min(1.0, config.long_context_fraction * kNumFamilies / kNumEvidenceFamilies);
    if (rng.uniform() < p) {
      item.long_context = true;
      item.evidence += ' ';
      item.evidence += make_filler(kb, rng, d.country, config.long_context_chars);
    }
  }
  return item;
}

std::string item_key(const SyntheticItem& item) { return item.evidence + '\x1f' + item.claim; }

std::vector<SyntheticItem> generate_split(const SyntheticConfig& config, const SyntheticKb& kb, SyntheticSplit split,
                                          int64_t count) {
  std::vector<SyntheticItem> items;
  items.reserve(static_cast<size_t>(count));
  for (int64_t slot = 0; slot < count; ++slot) items.push_back(make_item(config, kb, split, slot));
  return items;
}

void json_escape(std::string& out, const std::string& s) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

}  // namespace

SyntheticKb make_synthetic_kb(uint64_t seed) {
  Rng rng(seed, kKbStream);
  std::set<std::string> used;
  auto fresh = [&] {
    while (true) {
      std::string name = invent_name(rng);
      if (used.insert(name).second) return name;
    }
  };
  // Half of each set (seeded order) carries the fact.
  auto half_bits = [&](int n) {
    std::vector<uint8_t> bits(static_cast<size_t>(n), 0);
    for (int i = 0; i < n / 2; ++i) bits[static_cast<size_t>(i)] = 1;
    for (int i = n - 1; i > 0; --i) std::swap(bits[static_cast<size_t>(i)], bits[static_cast<size_t>(pick_int(rng, i + 1))]);
    return bits;
  };
  SyntheticKb kb;
  for (int i = 0; i < kNumCountries; ++i) kb.countries.push_back(fresh());
  for (int i = 0; i < kNumCountries; ++i) kb.capitals.push_back(fresh());
  for (int i = 0; i < kNumRivers; ++i) kb.rivers.push_back(fresh());
  for (int i = 0; i < kNumRivers; ++i) kb.mountains.push_back(fresh());
  kb.old_city = half_bits(kNumCountries);
  return kb;
}

std::vector<SyntheticItem> generate_synthetic(const SyntheticConfig& config, SyntheticSplit split) {
  SMT_USAGE_CHECK(config.num_train >= 0 && config.num_heldout >= 0, "synthetic: negative item count (train ",
                  config.num_train, ", held-out ", config.num_heldout, ")");
  SMT_USAGE_CHECK(config.num_train < (int64_t{1} << 56) && config.num_heldout < (int64_t{1} << 56),
                  "synthetic: item count too large");
  SMT_USAGE_CHECK(config.long_context_fraction >= 0 && config.long_context_fraction <= 1,
                  "synthetic: long_context_fraction must be in [0, 1], got ", config.long_context_fraction);
  SMT_USAGE_CHECK(config.long_context_chars >= 0, "synthetic: long_context_chars must be >= 0, got ",
                  config.long_context_chars);
  const SyntheticKb kb = make_synthetic_kb(config.seed);
  if (split == SyntheticSplit::kTrain) return generate_split(config, kb, split, config.num_train);
  auto heldout = generate_split(config, kb, split, config.num_heldout);
  // The splits are disjoint by construction (heldout_triple); check it, since a template edit
  // that makes two triples print the same text would silently break that.
  std::unordered_set<std::string> train_keys;
  for (const auto& item : generate_split(config, kb, SyntheticSplit::kTrain, config.num_train))
    train_keys.insert(item_key(item));
  for (size_t i = 0; i < heldout.size(); ++i)
    SMT_CHECK(train_keys.count(item_key(heldout[i])) == 0, "synthetic: held-out item ", i,
              " repeats a train item (internal error): ", heldout[i].claim);
  return heldout;
}

Dataset make_synthetic_dataset(const std::vector<SyntheticItem>& items, const std::string& name,
                               const Tokenizer& tokenizer) {
  Dataset d;
  d.name = name;
  d.class_names = {"false", "true"};
  d.group_names.assign(kSyntheticFamilies.begin(), kSyntheticFamilies.end());
  d.group_names.push_back("long_context");
  d.examples.reserve(items.size());
  for (const auto& item : items) {
    SMT_CHECK(item.family >= 0 && item.family < kNumFamilies, "synthetic item with family ", item.family);
    Example ex;
    ex.tokens = encode_fields({item.evidence, item.claim}, tokenizer);
    ex.label = item.is_true ? 1 : 0;
    ex.group = item.long_context ? kNumFamilies : item.family;
    d.examples.push_back(std::move(ex));
  }
  return d;
}

void write_synthetic_jsonl(const std::string& path, const std::vector<SyntheticItem>& items) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot open " + path + " for writing");
  std::string line;
  for (const auto& item : items) {
    line.clear();
    line += "{\"family\":";
    json_escape(line, kSyntheticFamilies[static_cast<size_t>(item.family)]);
    line += ",\"is_true\":";
    line += item.is_true ? "true" : "false";
    line += ",\"long_context\":";
    line += item.long_context ? "true" : "false";
    line += ",\"evidence\":";
    json_escape(line, item.evidence);
    line += ",\"claim\":";
    json_escape(line, item.claim);
    line += "}\n";
    out << line;
  }
  out.flush();
  if (!out) throw Error("failed writing " + path);
}

}  // namespace smt
