// GoogleTest main for tests run under mpirun: every rank runs every test (the tests call
// collectives); only rank 0 prints the result listener's output, any rank's failure fails the job.
#include <gtest/gtest.h>

#include "parallel/communicator.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto world = smt::make_world_communicator();
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  double any_failed = failed != 0 ? 1.0 : 0.0;
  world->all_reduce_max(&any_failed, 1);
  if (world->rank() == 0 && any_failed > 0 && failed == 0) std::printf("a test failed on another rank\n");
  return any_failed > 0 ? 1 : 0;
}
