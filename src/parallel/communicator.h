// The communicator interface that expert- and data-parallel code talks to, with two backends:
// MPI (host buffers; any world size) and Self (world size 1, no MPI needed). The NCCL backend
// of the CUDA build implements the same interface. Counts are in elements unless named _bytes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct CUstream_st;  // cudaStream_t without including the CUDA headers

namespace smt {

// A run of floats exchanged with one peer: `count` floats at `offset` of a send or receive buffer.
struct Segment {
  int peer = 0;
  int64_t offset = 0;
  int64_t count = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and size among the ranks of this node (for one GPU per rank, threads per rank).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  virtual void all_reduce_sum(double* data, int64_t n) = 0;
  virtual void all_reduce_max(double* data, int64_t n) = 0;
  // recv [size * bytes_per_rank] = concatenation of every rank's send [bytes_per_rank].
  virtual void all_gather(const void* send, void* recv, int64_t bytes_per_rank) = 0;
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // send_counts[r] floats go to rank r (contiguous in rank order in send); recv_counts[r] floats
  // arrive from rank r (contiguous in rank order in recv). Exchange counts first with all_to_all.
  virtual void all_to_all_v(const float* send, const int64_t* send_counts, float* recv,
                            const int64_t* recv_counts) = 0;
  // Point-to-point exchange of many segments at once (all-to-all-v with scattered placement): the
  // i-th segment this rank sends to peer p lands in the i-th segment peer p receives from this rank
  // (same count). Lets a receiver place rows where they are used without a reordering copy.
  virtual void exchange_segments(const float* send, const std::vector<Segment>& sends, float* recv,
                                 const std::vector<Segment>& recvs) = 0;
  // recv[r] = what rank r put in send[rank()]: one int64 per rank each way.
  virtual void all_to_all(const int64_t* send, int64_t* recv) = 0;
  // Sub-communicator of the ranks with the same color, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Stop every rank of the job (MPI_Abort); never returns.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// World size 1: collectives are copies. Works without MPI.
std::unique_ptr<Communicator> make_self_communicator();

// MPI_COMM_WORLD; initialises MPI (MPI_THREAD_FUNNELED) on first use and finalises at exit.
std::unique_ptr<Communicator> make_mpi_world_communicator();

// True when this process was started by mpirun/srun (Open MPI, PMI or Slurm variables set).
bool launched_under_mpi();

// The world communicator: MPI when launched under mpirun/srun, Self otherwise.
std::unique_ptr<Communicator> make_world_communicator();

// This process's rank in the job from the launcher's environment (0 when not launched by one);
// usable before MPI is initialised (error messages, "only rank 0 prints").
int launcher_rank();

#ifdef SMT_CUDA
// ---- CUDA builds: communicators over device buffers ----
// NCCL over the ranks of `bootstrap` (a host communicator, e.g. MPI: its rank 0 creates the
// ncclUniqueId and broadcasts it), on CUDA device `device`. Every buffer argument is device memory.
// Collectives run on the communicator's own stream, after the work queued so far on
// `compute_stream` (an event), and `compute_stream` waits for them (another event): callers order
// everything on their compute stream and synchronise it before reading results on the host.
// NCCL refuses two ranks on one GPU: several ranks on one GPU use the staged MPI backend below.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, CUstream_st* compute_stream);

// A host communicator (MPI) made to accept device buffers: every collective copies its device
// inputs to pinned host memory, runs the host collective and copies the results back, ordered on
// `compute_stream` (synchronised around the host collective).
std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host, CUstream_st* compute_stream);
#endif

// If MPI is initialised and the job has more than one rank: MPI_Abort the whole job with
// exit_code (so no rank is left waiting in a collective). Otherwise returns.
void abort_job_if_parallel(int exit_code);

}  // namespace smt
