// Checkpoints: round trip, validation messages, bad input (each leaving the previous good
// checkpoint loadable), atomic writes under failing I/O, pruning, expert hyperslab reads,
// inspect and safetensors export.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <hdf5.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "app/commands_io.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "model/model.h"

namespace smt {
namespace {

namespace fs = std::filesystem;

RunConfig small_config(int experts = 4) {
  RunConfig c;
  c.model.d_model = 16;
  c.model.layers = 2;
  c.model.heads = 2;
  c.model.experts = experts;
  c.model.top_k = 2;
  c.model.expert_hidden = 8;
  c.model.num_classes = 2;
  c.model.attention = "local";
  c.model.block_size = 4;
  c.model.window = 8;
  c.train.seq_len = 32;
  c.train.steps = 300;
  c.seed = 77;
  return c;
}

// Distinct values everywhere: params, and both moments (v positive).
void fill_model(Model& m, float base) {
  const int64_t n = m.layout().total();
  for (int64_t i = 0; i < n; ++i) {
    m.params()[i] = base + 1e-3f * static_cast<float>(i % 9973) - 0.5f * static_cast<float>((i * 7919) % 13) / 13.0f;
    m.adam_m()[i] = -base + 2e-4f * static_cast<float>(i % 4099);
    m.adam_v()[i] = 1e-6f + 1e-5f * static_cast<float>(i % 1013);
  }
}

Model make_model(const RunConfig& c, float base) {
  Model m(c.model, c.train.aux_loss_coeff, c.train.z_loss_coeff, c.seed);
  fill_model(m, base);
  return m;
}

TrainState sample_state() {
  TrainState s;
  s.step = 42;
  s.tokens_seen = 42 * 16 * 32;
  s.cursor.epoch = 3;
  s.cursor.position = 17;
  s.data_seed = 77;
  s.rngs.push_back({"dropout", 77, 5, 12345});
  s.last_metrics_json = R"({"event": "step", "step": 42, "loss": 0.5})";
  return s;
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/smt-ckpt-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const char* d = mkdtemp(buf.data());
    if (d == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = d;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

bool same_tensors(const Model& a_const, const Model& b_const, std::string* first_diff) {
  auto& a = const_cast<Model&>(a_const);
  auto& b = const_cast<Model&>(b_const);
  const float* pa[3] = {a.params(), a.adam_m(), a.adam_v()};
  const float* pb[3] = {b.params(), b.adam_m(), b.adam_v()};
  for (int g = 0; g < 3; ++g)
    for (const auto& t : a.layout().tensors())
      if (std::memcmp(pa[g] + t.offset, pb[g] + t.offset, t.numel * sizeof(float)) != 0) {
        if (first_diff) *first_diff = std::to_string(g) + ":" + t.name;
        return false;
      }
  return true;
}

// No temp files left, and nothing but the expected names.
std::vector<std::string> tmp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) out.push_back(e.path().string());
  return out;
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "expected '" << part << "' in: " << text;
}

// A folder holding a good checkpoint at step 10 that `latest` names.
struct GoodDir {
  TempDir dir;
  RunConfig cfg = small_config();
  Model model = make_model(cfg, 0.25f);
  TrainState state = sample_state();
  std::string good;
  GoodDir() {
    good = dir / checkpoint_file_name(10);
    save_checkpoint(good, model, cfg, state);
  }
  // The good checkpoint still loads bit-exactly and is the one find_latest_checkpoint returns.
  void expect_good_intact() const {
    Model fresh = make_model(cfg, -3.0f);
    TrainState st;
    EXPECT_EQ(error_of([&] { load_checkpoint(good, fresh, cfg, st, nullptr); }), "");
    EXPECT_TRUE(same_tensors(model, fresh, nullptr));
    EXPECT_EQ(st.step, state.step);
    EXPECT_EQ(find_latest_checkpoint(dir.path()), good);
  }
};

haddr_t dataset_offset(const std::string& file, const std::string& dataset) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}

// ------------------------------------------------------------------------------------------------

TEST(CheckpointRoundTrip, SaveLoadSaveIsBitwiseIdentical) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model a = make_model(cfg, 0.25f);
  const TrainState s = sample_state();
  const std::string p1 = dir / checkpoint_file_name(42);
  save_checkpoint(p1, a, cfg, s);

  Model b = make_model(cfg, -1.0f);
  std::string diff;
  ASSERT_FALSE(same_tensors(a, b, &diff));
  TrainState loaded;
  std::vector<std::string> changed;
  load_checkpoint(p1, b, cfg, loaded, &changed);
  EXPECT_TRUE(same_tensors(a, b, &diff)) << "first difference: " << diff;
  EXPECT_TRUE(changed.empty()) << changed.front();
  EXPECT_EQ(loaded.step, s.step);
  EXPECT_EQ(loaded.tokens_seen, s.tokens_seen);
  EXPECT_EQ(loaded.cursor.epoch, s.cursor.epoch);
  EXPECT_EQ(loaded.cursor.position, s.cursor.position);
  EXPECT_EQ(loaded.data_seed, s.data_seed);
  ASSERT_EQ(loaded.rngs.size(), 1u);
  EXPECT_EQ(loaded.rngs[0].name, "dropout");
  EXPECT_EQ(loaded.rngs[0].stream, 5u);
  EXPECT_EQ(loaded.rngs[0].position, 12345u);
  EXPECT_EQ(loaded.last_metrics_json, s.last_metrics_json);

  const std::string p2 = dir / "again.h5";
  // A second later: a timestamp anywhere in the file (HDF5 stores seconds) then always shows up.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  save_checkpoint(p2, b, cfg, loaded);
  CheckpointReader r1(p1), r2(p2);
  EXPECT_EQ(r1.config_ini(), r2.config_ini());
  const auto names = r1.dataset_names();
  EXPECT_EQ(names, r2.dataset_names());
  EXPECT_EQ(names.size(), 3 * a.layout().tensors().size());
  for (const auto& n : names) EXPECT_EQ(r1.read(n), r2.read(n)) << n;
  // No timestamps in the file: the same content gives the same bytes.
  EXPECT_EQ(file_bytes(p1), file_bytes(p2));
}

TEST(CheckpointRoundTrip, FileIsWhatACleanHdf5CloseLeaves) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const std::string p = dir / "c.h5";
  save_checkpoint(p, make_model(cfg, 0.25f), cfg, sample_state());
  const auto ours = file_bytes(p);
  ASSERT_GT(ours.size(), 48u);
  EXPECT_EQ(ours[8], 2) << "superblock version";
  EXPECT_EQ(ours[11], 0) << "superblock flags must not say 'open for write'";
  // HDF5 opening the file for writing and closing it rewrites the superblock: nothing may change.
  const std::string copy = dir / "copy.h5";
  fs::copy_file(p, copy);
  const hid_t f = H5Fopen(copy.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Fclose(f), 0);
  EXPECT_EQ(file_bytes(copy), ours);
}

TEST(CheckpointRoundTrip, NamesLatestPointerAndNoTempFiles) {
  EXPECT_EQ(checkpoint_file_name(100), "step-00000100.h5");
  EXPECT_EQ(checkpoint_file_name(123456789), "step-123456789.h5");
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model m = make_model(cfg, 0.5f);
  EXPECT_EQ(find_latest_checkpoint(dir.path()), "");
  EXPECT_EQ(find_latest_checkpoint(dir / "no-such-folder"), "");
  const std::string nested = dir / "a/b";  // created on demand
  save_checkpoint(nested + "/" + checkpoint_file_name(5), m, cfg, sample_state());
  save_checkpoint(nested + "/" + checkpoint_file_name(6), m, cfg, sample_state());
  std::ifstream latest(nested + "/latest");
  std::string line;
  std::getline(latest, line);
  EXPECT_EQ(line, "step-00000006.h5");
  EXPECT_EQ(find_latest_checkpoint(nested), nested + "/step-00000006.h5");
  EXPECT_TRUE(tmp_files(nested).empty());
  EXPECT_EQ(checkpoint_structure_problem(nested + "/step-00000005.h5"), "");
}

TEST(CheckpointRoundTrip, StoresResolvedModelConfigAndAttributes) {
  TempDir dir;
  RunConfig cfg = small_config();
  const Model m = make_model(cfg, 0.5f);
  cfg.model.num_classes = 0;  // "from the data": the file records the model's resolved value
  const std::string p = dir / "c.h5";
  save_checkpoint(p, m, cfg, sample_state());
  CheckpointReader r(p);
  EXPECT_EQ(r.format_version(), kCheckpointFormatVersion);
  EXPECT_EQ(r.config().model.num_classes, 2);
  EXPECT_EQ(r.config().seed, 77u);
  EXPECT_EQ(r.created_by().rfind("smt ", 0), 0u) << r.created_by();
  EXPECT_EQ(r.dataset_shape("params/layers.1.experts.w1"), (std::vector<int64_t>{4, 16, 8}));
  EXPECT_EQ(r.dataset_shape("optimizer/adam_v/embedding"), (std::vector<int64_t>{260, 16}));
  // Loading with num_classes = 0 in the run config compares against the model's resolved value.
  Model b = make_model(small_config(), 0.0f);
  TrainState st;
  std::vector<std::string> changed;
  EXPECT_EQ(error_of([&] { load_checkpoint(p, b, cfg, st, &changed); }), "");
  EXPECT_TRUE(changed.empty());
}

// ------------------------------------------------------------------------------------------------

TEST(CheckpointValidate, ShapeMismatchNamesTensorAndBothShapes) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const std::string p = dir / "c.h5";
  save_checkpoint(p, make_model(cfg, 0.1f), cfg, sample_state());
  RunConfig wider = cfg;
  wider.model.expert_hidden = 12;
  Model m = make_model(wider, 9.0f);
  const Model before = make_model(wider, 9.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(p, m, wider, st, nullptr); });
  expect_contains(msg, "layers.1.experts.w1: file [4,16,8], config [4,16,12]");
  expect_contains(msg, "layers.0.experts.b1: file [4,8], config [4,12]");
  expect_contains(msg, "model.expert_hidden: file 8, config 12");
  expect_contains(msg, p);
  EXPECT_TRUE(same_tensors(before, m, nullptr)) << "a failed load changed the model";
}

TEST(CheckpointValidate, ShapeMismatchWithoutConfigChange) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const std::string p = dir / "c.h5";
  save_checkpoint(p, make_model(cfg, 0.1f), cfg, sample_state());
  {  // Replace params/layers.0.wq by a [16,8] dataset.
    const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, "params/layers.0.wq", H5P_DEFAULT), 0);
    const hsize_t dims[2] = {16, 8};
    const hid_t sp = H5Screate_simple(2, dims, nullptr);
    const hid_t d = H5Dcreate2(f, "params/layers.0.wq", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(d, 0);
    H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
  }
  Model m = make_model(cfg, 0.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(p, m, cfg, st, nullptr); });
  expect_contains(msg, "layers.0.wq: file [16,8], config [16,16]");
  EXPECT_EQ(msg.find("model."), std::string::npos) << msg;
  expect_contains(checkpoint_structure_problem(p), "layers.0.wq: file [16,8]");
}

TEST(CheckpointValidate, ConfigMismatchListsEverySetting) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const std::string p = dir / "c.h5";
  save_checkpoint(p, make_model(cfg, 0.1f), cfg, sample_state());
  RunConfig other = cfg;
  other.seed = 78;
  other.model.attention = "bigbird";
  other.model.top_k = 1;
  other.data.binary = true;
  other.train.steps = 999;  // allowed, must not be listed as a mismatch
  Model m = make_model(other, 0.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(p, m, other, st, nullptr); });
  expect_contains(msg, "does not match");
  EXPECT_THROW(load_checkpoint(p, m, other, st, nullptr), UsageError);
  expect_contains(msg, "seed: file 77, config 78");
  expect_contains(msg, "model.attention: file local, config bigbird");
  expect_contains(msg, "model.top_k: file 2, config 1");
  expect_contains(msg, "data.binary: file false, config true");
  EXPECT_EQ(msg.find("train.steps"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST(CheckpointValidate, AllowedChangesAreReported) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model a = make_model(cfg, 0.1f);
  const std::string p = dir / "c.h5";
  save_checkpoint(p, a, cfg, sample_state());
  RunConfig next = cfg;
  next.train.steps = 600;
  next.train.lr = 5e-4f;
  next.train.log_every = 5;
  next.train.threads = 2;
  next.checkpoint.keep = 7;
  next.checkpoint.every = 50;
  next.run_dir = "runs/continued";
  Model m = make_model(next, 0.0f);
  TrainState st;
  std::vector<std::string> changed;
  ASSERT_EQ(error_of([&] { load_checkpoint(p, m, next, st, &changed); }), "");
  EXPECT_TRUE(same_tensors(a, m, nullptr));
  std::string all;
  for (const auto& c : changed) all += c + "\n";
  expect_contains(all, "train.steps: 300 -> 600\n");
  expect_contains(all, "train.lr: 0.00100000005 -> 0.000500000024\n");
  expect_contains(all, "train.log_every: 10 -> 5\n");
  expect_contains(all, "train.threads: 0 -> 2\n");
  expect_contains(all, "checkpoint.keep: 3 -> 7\n");
  expect_contains(all, "checkpoint.every: 0 -> 50\n");
  expect_contains(all, "run.dir: runs/default -> runs/continued\n");
  EXPECT_EQ(changed.size(), 7u) << all;
}

TEST(CheckpointValidate, SyntheticDataSettingsMustMatch) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const std::string p = dir / "c.h5";
  save_checkpoint(p, make_model(cfg, 0.1f), cfg, sample_state());
  RunConfig other = cfg;
  other.data.synthetic_train = 100;
  other.data.synthetic_heldout = 10;  // held-out only: allowed
  Model m = make_model(other, 0.0f);
  TrainState st;
  std::vector<std::string> changed;
  const std::string msg = error_of([&] { load_checkpoint(p, m, other, st, &changed); });
  expect_contains(msg, "data.synthetic_train: file 4096, config 100");
  EXPECT_EQ(msg.find("synthetic_heldout"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------------
// Bad input: clear message, and the good checkpoint beside it still loads and stays "latest".

TEST(CheckpointBadInput, TruncatedFile) {
  GoodDir g;
  const auto bytes = file_bytes(g.good);
  const std::string bad = g.dir / checkpoint_file_name(20);
  write_bytes(bad, std::vector<char>(bytes.begin(), bytes.begin() + bytes.size() / 2));
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(bad, m, g.cfg, st, nullptr); });
  expect_contains(msg, "cannot open checkpoint " + bad);
  expect_contains(msg, "truncated");
  expect_contains(error_of([&] { read_checkpoint_info(bad); }), "truncated");
  g.expect_good_intact();
  // Even with `latest` naming the truncated file, the newest complete one is found.
  write_bytes(g.dir / "latest", {'s', 't', 'e', 'p', '-', '0', '0', '0', '0', '0', '0', '2', '0', '.', 'h', '5', '\n'});
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
  // A truncated file of a higher step is skipped by the scan too (no latest pointer at all).
  fs::remove(g.dir / "latest");
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
}

TEST(CheckpointBadInput, FlippedBytesInTensorData) {
  GoodDir g;
  const std::string bad = g.dir / checkpoint_file_name(20);
  fs::copy_file(g.good, bad);
  const haddr_t off = dataset_offset(bad, "optimizer/adam_v/layers.1.experts.w2");
  ASSERT_NE(off, HADDR_UNDEF);
  auto bytes = file_bytes(bad);
  bytes[off + 37] ^= 0x10;
  write_bytes(bad, bytes);
  Model m = make_model(g.cfg, 5.0f);
  const Model before = make_model(g.cfg, 5.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(bad, m, g.cfg, st, nullptr); });
  expect_contains(msg, "checksum mismatch in /optimizer/adam_v/layers.1.experts.w2");
  expect_contains(msg, bad);
  EXPECT_TRUE(same_tensors(before, m, nullptr)) << "a failed load changed the model";
  EXPECT_EQ(st.step, 0) << "a failed load changed the state";
  expect_contains(error_of([&] { read_checkpoint_info(bad); }), "checksum mismatch");
  // The structural check does not read data; the verifying one does, and passes over the file.
  EXPECT_EQ(checkpoint_structure_problem(bad), "");
  expect_contains(checkpoint_structure_problem(bad, true), "checksum mismatch");
  std::ofstream(g.dir / "latest") << checkpoint_file_name(20) << "\n";
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), bad);
  EXPECT_EQ(find_latest_checkpoint(g.dir.path(), true), g.good);
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";
  g.expect_good_intact();
}

TEST(CheckpointBadInput, FlippedByteInMetadata) {
  GoodDir g;
  const std::string bad = g.dir / checkpoint_file_name(20);
  auto bytes = file_bytes(g.good);
  const std::string needle = "[model]";
  const auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  ASSERT_NE(it, bytes.end());
  *(it + 2) ^= 0x01;  // inside the config attribute, covered by the object header checksum
  write_bytes(bad, bytes);
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(bad, m, g.cfg, st, nullptr); });
  expect_contains(msg, bad);
  expect_contains(msg, "checksum");
  g.expect_good_intact();
}

TEST(CheckpointBadInput, NotHdf5EmptyMissingFolder) {
  GoodDir g;
  const std::string text = g.dir / "notes.h5";
  std::ofstream(text) << "this is not a checkpoint\n";
  const std::string empty = g.dir / "empty.h5";
  std::ofstream{empty};
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  expect_contains(error_of([&] { load_checkpoint(text, m, g.cfg, st, nullptr); }), "is not an HDF5 file");
  expect_contains(error_of([&] { load_checkpoint(empty, m, g.cfg, st, nullptr); }), "is empty");
  expect_contains(error_of([&] { load_checkpoint(g.dir / "missing.h5", m, g.cfg, st, nullptr); }),
                  "No such file or directory");
  expect_contains(error_of([&] { load_checkpoint(g.dir.path(), m, g.cfg, st, nullptr); }), "is a folder");
  g.expect_good_intact();
}

TEST(CheckpointBadInput, NewerFormatVersion) {
  GoodDir g;
  const std::string bad = g.dir / checkpoint_file_name(20);
  fs::copy_file(g.good, bad);
  {
    const hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    const hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    const int64_t v = 2;
    ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &v), 0);
    H5Aclose(a);
    H5Fclose(f);
  }
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  EXPECT_EQ(error_of([&] { load_checkpoint(bad, m, g.cfg, st, nullptr); }),
            "checkpoint " + bad + " has format version 2, this smt reads up to 1");
  // A newer-version file that `latest` names is passed over for the readable one.
  std::ofstream(g.dir / "latest") << checkpoint_file_name(20) << "\n";
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";
  g.expect_good_intact();
}

TEST(CheckpointBadInput, Hdf5FileThatIsNotACheckpoint) {
  GoodDir g;
  const std::string other = g.dir / checkpoint_file_name(30);
  {
    const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);  // the format smt reads
    const hid_t f = H5Fcreate(other.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    const hsize_t n = 4;
    const hid_t sp = H5Screate_simple(1, &n, nullptr);
    const hid_t d = H5Dcreate2(f, "data", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
  }
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  EXPECT_EQ(error_of([&] { load_checkpoint(other, m, g.cfg, st, nullptr); }),
            other + " is an HDF5 file but not an smt checkpoint (no smt_checkpoint attribute)");
  fs::remove(g.dir / "latest");  // the scan must skip the foreign step-00000030.h5
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";
  g.expect_good_intact();
}

// Found by fuzzing (with a hand-made file whose metadata checksums are valid): a string attribute
// holding an array of strings made the reader write past its one-string buffer. Now an error.
TEST(CheckpointBadInput, StringAttributeArrayIsRejected) {
  GoodDir g;
  for (bool vlen : {false, true}) {
    const std::string bad = g.dir / checkpoint_file_name(vlen ? 41 : 40);
    fs::copy_file(g.good, bad, fs::copy_options::overwrite_existing);
    {
      const hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
      ASSERT_GE(f, 0);
      ASSERT_GE(H5Adelete(f, "created_by"), 0);
      const hid_t type = H5Tcopy(H5T_C_S1);
      H5Tset_size(type, vlen ? H5T_VARIABLE : 8);
      const hsize_t n = 50;
      const hid_t sp = H5Screate_simple(1, &n, nullptr);
      const hid_t a = H5Acreate2(f, "created_by", type, sp, H5P_DEFAULT, H5P_DEFAULT);
      std::vector<char> fixed(8 * n, 'x');
      std::vector<const char*> ptrs(n, "y");
      ASSERT_GE(H5Awrite(a, type, vlen ? static_cast<const void*>(ptrs.data()) : fixed.data()), 0);
      H5Aclose(a);
      H5Sclose(sp);
      H5Tclose(type);
      H5Fclose(f);
    }
    const std::string err = error_of([&] { read_checkpoint_info(bad); });
    expect_contains(err, "attribute created_by is not a single string (50 elements)");
  }
  fs::remove(g.dir / "latest");
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";
  g.expect_good_intact();
}

// HDF5 files of the older, unchecksummed format (superblock version 0/1) are refused before HDF5
// parses them: fuzzing found damaged ones that crash HDF5 1.10 itself.
TEST(CheckpointBadInput, UnchecksummedHdf5FormatIsRefused) {
  GoodDir g;
  const std::string old_format = g.dir / checkpoint_file_name(50);
  {
    const hid_t f = H5Fcreate(old_format.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);  // default: v0
    H5Fclose(f);
  }
  EXPECT_EQ(error_of([&] { read_checkpoint_info(old_format); }),
            "checkpoint " + old_format +
                " is damaged or truncated, or not in the HDF5 format smt writes (superblock version 0: no metadata "
                "checksums; smt checkpoints use version 2 or later)");
  g.expect_good_intact();
}

TEST(CheckpointBadInput, MissingDataset) {
  GoodDir g;
  const std::string bad = g.dir / checkpoint_file_name(20);
  fs::copy_file(g.good, bad);
  {
    const hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(H5Ldelete(f, "optimizer/adam_v/layers.1.experts.b2", H5P_DEFAULT), 0);
    H5Fclose(f);
  }
  Model m = make_model(g.cfg, 0.0f);
  TrainState st;
  const std::string msg = error_of([&] { load_checkpoint(bad, m, g.cfg, st, nullptr); });
  expect_contains(msg, "optimizer/adam_v/layers.1.experts.b2: missing");
  expect_contains(checkpoint_structure_problem(bad), "optimizer/adam_v/layers.1.experts.b2: missing");
  std::ofstream(g.dir / "latest") << checkpoint_file_name(20) << "\n";
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";
  g.expect_good_intact();
}

TEST(CheckpointBadInput, UnwritableFolder) {
  GoodDir g;
  const std::string blocker = g.dir / "blocker";
  std::ofstream(blocker) << "a regular file where a folder should be\n";
  const std::string target = blocker + "/" + checkpoint_file_name(20);
  const std::string msg = error_of([&] { save_checkpoint(target, g.model, g.cfg, g.state); });
  expect_contains(msg, "cannot create");
  expect_contains(msg, blocker);
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(tmp_files(g.dir.path()).empty());
  g.expect_good_intact();
}

// Simulated full disk: a file-size limit makes every write past 48 KiB fail with EFBIG.
TEST(CheckpointBadInput, WriteFailsMidFileLeavesNothing) {
  GoodDir g;
  const auto good_bytes = file_bytes(g.good);
  ASSERT_GT(good_bytes.size(), 64u * 1024) << "the test model must be bigger than the limit";
  const std::string target = g.dir / checkpoint_file_name(20);
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 48 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  const std::string msg = error_of([&] { save_checkpoint(target, g.model, g.cfg, g.state); });
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);
  expect_contains(msg, "cannot write checkpoint " + target);
  expect_contains(msg, "File too large");
  EXPECT_FALSE(fs::exists(target)) << "a failed write left a file under the final name";
  EXPECT_TRUE(tmp_files(g.dir.path()).empty());
  EXPECT_EQ(file_bytes(g.good), good_bytes);
  g.expect_good_intact();
}

// A real full disk: a small tmpfs (needs mount permission; skipped with the reason otherwise).
TEST(CheckpointBadInput, FullDiskOnTmpfs) {
  TempDir scratch;
  const RunConfig cfg = small_config();
  const Model model = make_model(cfg, 0.25f);
  save_checkpoint(scratch / "probe.h5", model, cfg, sample_state());
  const auto size = fs::file_size(scratch / "probe.h5");
  TempDir mnt;
  // Room for one checkpoint and the latest pointer, not for a second checkpoint.
  const uint64_t kib = (size * 3 / 2 + 8192) / 1024;
  const std::string cmd =
      "mount -t tmpfs -o size=" + std::to_string(kib) + "k smt-ckpt-test " + mnt.path() + " 2>" + (scratch / "mount.err");
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream e(scratch / "mount.err");
    std::string why((std::istreambuf_iterator<char>(e)), {});
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why
                 << "); the full-disk path is covered by WriteFailsMidFileLeavesNothing";
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { std::system(("umount " + dir).c_str()); }
  } unmount{mnt.path()};
  const std::string good = mnt / checkpoint_file_name(10);
  ASSERT_EQ(error_of([&] { save_checkpoint(good, model, cfg, sample_state()); }), "");
  const std::string second = mnt / checkpoint_file_name(20);
  const std::string msg = error_of([&] { save_checkpoint(second, model, cfg, sample_state()); });
  expect_contains(msg, "cannot write checkpoint " + second);
  expect_contains(msg, "No space left on device");
  EXPECT_FALSE(fs::exists(second));
  EXPECT_TRUE(tmp_files(mnt.path()).empty());
  EXPECT_EQ(find_latest_checkpoint(mnt.path()), good);
  Model fresh = make_model(cfg, 1.0f);
  TrainState st;
  EXPECT_EQ(error_of([&] { load_checkpoint(good, fresh, cfg, st, nullptr); }), "");
  EXPECT_TRUE(same_tensors(model, fresh, nullptr));
  // The space of the failed write was released (no leaked descriptor): a retry after pruning fits.
  fs::remove(good);
  EXPECT_EQ(error_of([&] { save_checkpoint(second, model, cfg, sample_state()); }), "");
}

// ------------------------------------------------------------------------------------------------

TEST(CheckpointPrune, KeepsNewestAndTheLatestTarget) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model m = make_model(cfg, 0.1f);
  for (int s = 1; s <= 5; ++s) save_checkpoint(dir / checkpoint_file_name(s * 10), m, cfg, sample_state());
  std::ofstream(dir / "notes.txt") << "not a checkpoint\n";
  prune_checkpoints(dir.path(), 2);
  for (int s = 1; s <= 5; ++s) EXPECT_EQ(fs::exists(dir / checkpoint_file_name(s * 10)), s >= 4) << s;
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
  EXPECT_EQ(find_latest_checkpoint(dir.path()), dir / checkpoint_file_name(50));
  // latest pointing at an older file protects it.
  for (int s = 6; s <= 8; ++s) save_checkpoint(dir / checkpoint_file_name(s * 10), m, cfg, sample_state());
  std::ofstream(dir / "latest") << checkpoint_file_name(40) << "\n";
  prune_checkpoints(dir.path(), 1);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path())) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "notes.txt", "step-00000040.h5", "step-00000080.h5"}));
}

TEST(CheckpointHyperslab, ReadsAnExpertRange) {
  TempDir dir;
  const RunConfig cfg = small_config(8);
  const Model m = make_model(cfg, 0.3f);
  const std::string p = dir / "c.h5";
  save_checkpoint(p, m, cfg, sample_state());
  CheckpointReader r(p);
  for (const char* name : {"layers.0.experts.w1", "layers.1.experts.b2"}) {
    const TensorSpec& t = m.layout().at(name);
    ASSERT_EQ(t.shape[0], 8);
    const int64_t per = t.numel / 8;
    std::vector<float> part(4 * per, -7.0f);
    r.read(std::string("params/") + name, part.data(), 2, 6);
    EXPECT_EQ(0, std::memcmp(part.data(), m.params() + t.offset + 2 * per, part.size() * sizeof(float))) << name;
  }
  {
    std::vector<float> buf(1 << 16);
    expect_contains(error_of([&] { r.read("params/layers.0.experts.w1", buf.data(), 6, 9); }), "out of range");
  }
  // Corrupt expert 3 of layers.0.experts.w1: ranges containing it fail, the others read.
  const std::string bad = dir / "bad.h5";
  fs::copy_file(p, bad);
  const TensorSpec& w1 = m.layout().at("layers.0.experts.w1");
  const int64_t per = w1.numel / 8;
  const haddr_t off = dataset_offset(bad, "params/layers.0.experts.w1");
  auto bytes = file_bytes(bad);
  bytes[off + 3 * per * 4 + 5] ^= 0x40;
  write_bytes(bad, bytes);
  CheckpointReader rb(bad);
  std::vector<float> part(4 * per);
  expect_contains(error_of([&] { rb.read("params/layers.0.experts.w1", part.data(), 2, 6); }),
                  "checksum mismatch in /params/layers.0.experts.w1 row 3");
  EXPECT_EQ(error_of([&] { rb.read("params/layers.0.experts.w1", part.data(), 4, 8); }), "");
  EXPECT_EQ(0, std::memcmp(part.data(), m.params() + w1.offset + 4 * per, part.size() * sizeof(float)));
}

// ------------------------------------------------------------------------------------------------

std::string run_command(int (*cmd)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  const int rc = cmd(static_cast<int>(argv.size()), argv.data());
  std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0);
  return out;
}

TEST(CheckpointInspect, TextAndJson) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model m = make_model(cfg, 0.1f);
  const std::string p = dir / checkpoint_file_name(42);
  save_checkpoint(p, m, cfg, sample_state());

  const std::string json = run_command(cmd_inspect, {"inspect", p, "--json"});
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(std::count(json.begin(), json.end(), '\n'), 1) << "one JSON object on one line";
  for (const char* part : {"\"step\": 42", "\"tokens_seen\": 21504", "\"format_version\": 1", "\"config\": \"seed = 77\\n",
                           "\"tensors\": [", "\"experts\": [", "\"name\": \"params/layers.1.experts.w1\", \"shape\": [4, 16, 8], \"dtype\": \"float32\", \"norm\": ",
                           "\"name\": \"optimizer/adam_v/classifier.b\"", "\"layer\": 1, \"moe\": true, \"w1_norm\": ["})
    expect_contains(json, part);
  // The norms printed are those of the data.
  const TensorSpec& emb = m.layout().at("embedding");
  double ss = 0;
  for (int64_t i = 0; i < emb.numel; ++i) ss += double(m.params()[emb.offset + i]) * m.params()[emb.offset + i];
  char norm[64];
  std::snprintf(norm, sizeof norm, "\"name\": \"params/embedding\", \"shape\": [260, 16], \"dtype\": \"float32\", \"norm\": %.9g",
                std::sqrt(ss));
  expect_contains(json, norm);

  const std::string text = run_command(cmd_inspect, {"inspect", p});
  for (const char* part : {"step 42, tokens seen 21504", "[model]", "params/layers.0.experts.w2", "[4,8,16]",
                           "expert weights", "layer 0 (MoE, 4 experts)"})
    expect_contains(text, part);

  std::vector<std::string> bad_args = {"inspect", dir / "nothing.h5"};
  std::vector<char*> argv;
  for (auto& a : bad_args) argv.push_back(a.data());
  expect_contains(error_of([&] { cmd_inspect(2, argv.data()); }), "cannot open checkpoint");
}

TEST(CheckpointExport, SafetensorsHeaderAndData) {
  TempDir dir;
  const RunConfig cfg = small_config();
  const Model m = make_model(cfg, 0.1f);
  const std::string p = dir / checkpoint_file_name(42);
  save_checkpoint(p, m, cfg, sample_state());
  const std::string out = dir / "model.safetensors";
  const std::string said = run_command(cmd_export, {"export", p, "--format", "safetensors", "--out", out});
  expect_contains(said, "wrote " + std::to_string(m.layout().tensors().size()) + " tensors");
  const auto bytes = file_bytes(out);
  ASSERT_GT(bytes.size(), 8u);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  EXPECT_EQ(hlen % 8, 0u);
  ASSERT_LE(8 + hlen, bytes.size());
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + hlen);
  expect_contains(header, "\"__metadata__\": {\"format\": \"pt\"");
  expect_contains(header, "\"config\": \"seed = 77\\n");
  expect_contains(header, "\"step\": \"42\"");
  int64_t offset = 0;
  for (const auto& t : m.layout().tensors()) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) shape += ", ";
      shape += std::to_string(t.shape[i]);
    }
    const int64_t nbytes = t.numel * 4;
    expect_contains(header, "\"" + t.name + "\": {\"dtype\": \"F32\", \"shape\": [" + shape + "], \"data_offsets\": [" +
                                std::to_string(offset) + ", " + std::to_string(offset + nbytes) + "]}");
    ASSERT_LE(8 + hlen + offset + nbytes, bytes.size());
    EXPECT_EQ(0, std::memcmp(bytes.data() + 8 + hlen + offset, m.params() + t.offset, nbytes)) << t.name;
    offset += nbytes;
  }
  EXPECT_EQ(bytes.size(), 8 + hlen + offset);
  // A bad input leaves no output file.
  const std::string out2 = dir / "bad.safetensors";
  std::ofstream(dir / "junk.h5") << "junk";
  expect_contains(error_of([&] { export_safetensors(dir / "junk.h5", out2); }), "not an HDF5 file");
  EXPECT_FALSE(fs::exists(out2));
}

TEST(CheckpointCrc, MatchesZlib) {
  // zlib.crc32(b"123456789") == 0xCBF43926; split calls continue the checksum.
  const char* s = "123456789";
  EXPECT_EQ(crc32(s, 9), 0xCBF43926u);
  EXPECT_EQ(crc32(s + 4, 5, crc32(s, 4)), 0xCBF43926u);
  EXPECT_EQ(crc32(s, 0), 0u);
}

// Killed between a checkpoint's rename and the `latest` update: the renamed file is complete and
// newer, so --resume takes it (the last complete checkpoint), not the one `latest` still names.
TEST(CheckpointKill, NewerCompleteStepFileWinsOverStaleLatest) {
  GoodDir g;  // step 10, named by latest
  const std::string newer = g.dir / checkpoint_file_name(20);
  save_checkpoint(newer, g.model, g.cfg, g.state);
  std::ofstream(g.dir / "latest") << checkpoint_file_name(10) << "\n";  // as if killed before the update
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), newer);
  // A damaged newer file is passed over for what `latest` names.
  std::ofstream(newer, std::ios::trunc) << "partial";
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.good);
}

// Temp files of killed writers are removed by the next successful save (prune); a temp file of a
// live process and the checkpoints themselves are not.
TEST(CheckpointKill, StaleTempFilesOfDeadWritersAreRemoved) {
  GoodDir g;
  // A pid that surely does not run: a child that has exited and been reaped.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  int status = 0;
  ASSERT_EQ(waitpid(dead, &status, 0), dead);
  const std::string stale = g.dir / (checkpoint_file_name(12) + ".tmp-" + std::to_string(dead));
  const std::string live = g.dir / (checkpoint_file_name(13) + ".tmp-" + std::to_string(getppid()));
  std::ofstream(stale) << "half a checkpoint";
  std::ofstream(live) << "being written";
  save_checkpoint(g.dir / checkpoint_file_name(14), g.model, g.cfg, g.state);
  prune_checkpoints(g.dir.path(), 3);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(g.good));
  EXPECT_EQ(find_latest_checkpoint(g.dir.path()), g.dir / checkpoint_file_name(14));
}

}  // namespace
}  // namespace smt
