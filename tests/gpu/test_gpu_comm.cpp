// Communicators on device buffers: NCCL at world size 1 (NCCL refuses two ranks on one GPU) and
// the MPI backend staged through pinned memory, which also runs under mpirun -np 2 on one GPU
// (ctest gpu.comm_mpi2): collectives and the segmented exchange give the host-computed results.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "gpu_test_env.h"
#include "parallel/communicator.h"

namespace {

class GpuComm : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
    SMT_CUDA_CHECK(cudaStreamCreate(&stream));
  }
  void TearDown() override {
    if (stream) cudaStreamDestroy(stream);
  }
  // Checks every collective of `comm` (rank r of W) against values computed on the host.
  void check_collectives(smt::Communicator& comm) {
    const int W = comm.size(), r = comm.rank();
    const int64_t n = 1000;
    std::vector<float> host(n);
    for (int64_t i = 0; i < n; ++i) host[i] = static_cast<float>((r + 1) * (i % 17));
    auto x = smt::copy_to_device(host);
    comm.all_reduce_sum(x.data(), n);
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto sum = smt::copy_to_host(x);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sum[i], static_cast<float>(W * (W + 1) / 2 * (i % 17))) << i;

    std::vector<double> mine = {static_cast<double>(r), -1.0 * r};
    auto m = smt::copy_to_device(mine);
    comm.all_reduce_max(m.data(), 2);
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_EQ(smt::copy_to_host(m), (std::vector<double>{double(W - 1), 0.0}));

    std::vector<int32_t> tag = {r, 10 * r};
    auto t = smt::copy_to_device(tag);
    smt::DeviceBuffer<int32_t> all(2 * W);
    comm.all_gather(t.data(), all.data(), 2 * sizeof(int32_t));
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto gathered = smt::copy_to_host(all);
    for (int q = 0; q < W; ++q) EXPECT_EQ(gathered[2 * q], q) << "all_gather block " << q;

    // Segments: to every peer q two segments (3 and 2 floats) tagged with (sender, peer, segment);
    // they land reversed (second segment first) in the receiver's buffer.
    std::vector<float> send(5 * W);
    std::vector<smt::Segment> sends, recvs;
    for (int q = 0; q < W; ++q) {
      for (int j = 0; j < 5; ++j) send[5 * q + j] = static_cast<float>(100 * r + 10 * q + (j < 3 ? 0 : 1));
      sends.push_back({q, 5 * q, 3});
      sends.push_back({q, 5 * q + 3, 2});
      recvs.push_back({q, 5 * q + 2, 3});
      recvs.push_back({q, 5 * q, 2});
    }
    auto s = smt::copy_to_device(send);
    smt::DeviceBuffer<float> rcv(5 * W);
    comm.exchange_segments(s.data(), sends, rcv.data(), recvs);
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto got = smt::copy_to_host(rcv);
    for (int q = 0; q < W; ++q) {
      for (int j = 0; j < 2; ++j) EXPECT_EQ(got[5 * q + j], static_cast<float>(100 * q + 10 * r + 1)) << q << "," << j;
      for (int j = 2; j < 5; ++j) EXPECT_EQ(got[5 * q + j], static_cast<float>(100 * q + 10 * r)) << q << "," << j;
    }
  }
  cudaStream_t stream = nullptr;
};

TEST_F(GpuComm, NcclAtWorldSizeOne) {
  auto bootstrap = smt::make_self_communicator();
  auto nccl = smt::make_nccl_communicator(*bootstrap, 0, stream);
  EXPECT_EQ(nccl->backend(), "nccl");
  ASSERT_EQ(nccl->size(), 1);
  check_collectives(*nccl);
  auto sub = nccl->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  check_collectives(*sub);
}

TEST_F(GpuComm, StagedHostCommunicator) {
  // World size 1 normally; W ranks under mpirun (several ranks may share the GPU).
  auto staged = smt::make_staged_communicator(smt::make_world_communicator(), stream);
  check_collectives(*staged);
}

}  // namespace
