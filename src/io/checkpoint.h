// Checkpoints: one HDF5 file per checkpoint holding the parameters and AdamW moments in their
// GLOBAL shapes (experts as [E, ...]), the resolved config, the training state and the last
// metrics; written atomically (temp file, fsync, rename, then the DIR/latest pointer).
// The file schema is documented in src/io/CHECKPOINT_FORMAT.md. Every failure (HDF5 or
// file system) is one smt::Error naming the path and what failed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/batch.h"
#include "model/config.h"

namespace smt {

class Model;

constexpr int kCheckpointFormatVersion = 1;

// A named Philox stream position (see core/rng.h); training keeps none today, the slot exists
// so that a future stochastic component (dropout, token sampling) resumes exactly.
struct RngState {
  std::string name;
  uint64_t seed = 0, stream = 0, position = 0;
};

struct TrainState {
  int64_t step = 0;          // optimizer steps completed
  int64_t tokens_seen = 0;
  LoaderCursor cursor;       // the training DataLoader's (epoch, position)
  uint64_t data_seed = 0;    // seed of the loader's permutation
  std::vector<RngState> rngs;
  std::string last_metrics_json;  // the last metrics.jsonl record ("" = none)
};

struct TensorInfo {
  std::string name;            // dataset path without the leading '/': "params/layers.0.wq"
  std::vector<int64_t> shape;
  std::string dtype;           // "float32"
  double norm = 0;             // L2 norm of all values
};

// Per-layer expert summary (params only); dense-FFN layers show up with one "expert".
struct LayerExpertsInfo {
  int layer = 0;
  bool is_moe = false;
  std::vector<double> w1_norm, w2_norm;  // [E]
};

struct CheckpointInfo {
  int format_version = 0;
  std::string created_by;
  std::string config_ini;
  TrainState state;
  std::vector<TensorInfo> tensors;  // params, then optimizer moments, then anything else
  std::vector<LayerExpertsInfo> experts;
};

// "step-00000100.h5"
std::string checkpoint_file_name(int64_t step);

// Writes PATH atomically: PATH.tmp-<pid> in the same folder (created if missing), flush, close,
// fsync, rename to PATH, fsync the folder; then rewrites DIR/latest (naming PATH's file name) the
// same way. The config stored is `config` with its model section replaced by model.config() (so
// num_classes is the resolved one). On failure nothing exists under PATH that was not there before,
// the temp file is removed and an Error says what failed.
void save_checkpoint(const std::string& path, const Model& model, const RunConfig& config, const TrainState& state);

// Loads parameters, AdamW moments and state into `model` / `state` after validating: smt checkpoint,
// format version, the settings that must match (every model.* key, seed, data.source, data.fields,
// data.binary, and data.synthetic_* / long_context_* when data.source = synthetic), every tensor
// present with the shape of model.layout(), and the checksum of every tensor. All setting and shape
// mismatches are listed in one UsageError (exit code 2); unreadable or corrupted files throw Error
// (exit code 1). On any error `model` and `state` are left untouched. Other differing settings
// (train.steps, the lr schedule, log_every, checkpoint.*, run.dir, threads, ...) are allowed and
// appended to *changed_settings (nullable) as "key: old -> new".
void load_checkpoint(const std::string& path, Model& model, const RunConfig& config, TrainState& state,
                     std::vector<std::string>* changed_settings);

// Everything `smt inspect` shows; reads (and checksums) every tensor to compute norms.
CheckpointInfo read_checkpoint_info(const std::string& path);

// Structural check (opens, smt checkpoint, version, config parses, every tensor of the stored config
// present with the right shape, /state readable). verify_data also reads every tensor and checks its
// crc32 (reads the whole file). Returns "" if fine, else the reason.
std::string checkpoint_structure_problem(const std::string& path, bool verify_data = false);

// The checkpoint to resume from in `dir`: the newest step-*.h5 (by step number) newer than the file
// DIR/latest names that passes the check above with verify_data (a run killed between a checkpoint's
// rename and the `latest` update), else that file if it passes, else the newest step-*.h5 that
// passes; "" if none. Returns a path (dir + "/" + name).
std::string find_latest_checkpoint(const std::string& dir, bool verify_data = false);

// Whether DIR is the checkpoint folder of a run stopped before its first checkpoint: the folder
// exists (smt train creates it at start-up) and holds no step-*.h5 file at all (temp files of an
// interrupted first write do not count). `--resume` then starts from step 0 instead of refusing.
bool stopped_before_first_checkpoint(const std::string& dir);

// Deletes the temp files (NAME.tmp-<pid>) in DIR that a killed writer left: those whose pid is
// not a running process. Returns how many were removed. prune_checkpoints calls it.
int remove_stale_temp_files(const std::string& dir);

// Deletes step-*.h5 files older than the newest `keep` (by step number), never the one DIR/latest
// names. Errors while deleting are ignored (pruning must not fail a run).
void prune_checkpoints(const std::string& dir, int keep);

// The step-*.h5 files in DIR (paths), newest (highest step) first; none if DIR does not exist.
std::vector<std::string> checkpoint_files(const std::string& dir);

// Deletes every step-*.h5 file in DIR but `keep` (a path; e.g. the model.init_from just read) and DIR/latest
// (`smt train --overwrite`: a run started over in its folders). Throws Error naming the first file that cannot
// be removed. Returns how many checkpoints it removed.
int remove_checkpoints(const std::string& dir, const std::string& keep = "");

// Low-level reader (inspect, export, hyperslab reads for expert-parallel loading). Opening checks
// that the file is an smt checkpoint of a supported format version.
// Copies the parameters (only) of the checkpoint at PATH into `model`: every tensor of
// model.layout() must exist with the same shape (UsageError listing the mismatches otherwise).
// Used by model.init_from (fine-tuning a pretrained model under a different head or schedule).
void load_parameters_only(const std::string& path, Model& model);

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::string& path() const { return path_; }
  int format_version() const { return format_version_; }
  const std::string& config_ini() const { return config_ini_; }
  const std::string& created_by() const { return created_by_; }
  // The stored config, parsed without validation (throws Error naming the file if unreadable).
  RunConfig config() const;
  TrainState state() const;

  bool has_dataset(const std::string& name) const;              // "params/layers.0.wq"
  std::vector<int64_t> dataset_shape(const std::string& name) const;
  std::vector<std::string> dataset_names() const;               // every dataset, params first
  // Reads rows [e0, e1) of the first dimension (e1 < 0: to the end) into dst (contiguous, row-major)
  // and verifies the checksum: the whole-tensor crc32 for a full read, the per-row crc32_rows
  // (expert tensors) for a partial one.
  void read(const std::string& name, float* dst, int64_t e0 = 0, int64_t e1 = -1) const;
  std::vector<float> read(const std::string& name) const;

 private:
  std::string path_;
  int64_t file_ = -1;  // hid_t
  int format_version_ = 0;
  std::string config_ini_, created_by_;
};

// CRC-32 (ISO-HDLC, as zlib.crc32) of a byte buffer; seed with a previous value to continue.
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace smt
