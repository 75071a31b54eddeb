// The conformance suite under MPI: run as `mpirun -np N gradzip_collectives_mpi_test` (CTest: LABELS mpi, N = 2, 3,
// 4). Every process is one rank of MpiCommunicator over MPI_COMM_WORLD (with a 20 s watchdog, so a bug that desyncs
// the ranks fails instead of hanging). Rank 0 prints GoogleTest's normal output; every other rank prints only its
// failures, prefixed "[rank r]"; the exit code is non-zero on every rank when any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>

#include "conformance.h"
#include "gradzip/collectives/mpi_communicator.h"
#include "mpi_gtest_main.h"

namespace gradzip::ctest {
namespace {

Communicator* g_comm = nullptr;

TEST(Mpi, RawOperations) {
  check_raw_ops(*g_comm);
}
TEST(Mpi, MismatchesGiveTheSameErrorEverywhere) {
  check_mismatch(*g_comm);
}
TEST(Mpi, CompressedAllreduceMatchesSerialReference) {
  check_all_compressed_allreduce(*g_comm);
}
TEST(Mpi, AlgorithmsTheCodecCannotRunAreRefused) {
  check_refusals(*g_comm);
}
TEST(Mpi, SyncStepMatchesFeedbackReference) {
  check_all_sync(*g_comm);
}

TEST(Mpi, BlockingModeMatches) {
  // timeout = 0: the blocking MPI collectives (Open MPI's tuned algorithms) behind the same interface.
  auto c = MpiCommunicator::create(MPI_COMM_WORLD, MpiOptions{std::chrono::milliseconds(0)});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  check_raw_ops(**c);
  check_compressed_allreduce(**c, {"topk:ratio=0.1", AllreduceAlgo::kAuto, 1001});
  check_compressed_allreduce(**c, {"qsgd:levels=7", AllreduceAlgo::kQuantizedReduceScatter, 1001});
  check_compressed_allreduce(**c, {"randk:ratio=0.2", AllreduceAlgo::kAuto, 1001});
}

TEST(Mpi, CreateValidates) {
  EXPECT_EQ(MpiCommunicator::create(MPI_COMM_NULL).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MpiCommunicator::create(MPI_COMM_WORLD, MpiOptions{std::chrono::milliseconds(-1)}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(g_comm->engine(), "mpi");
}

}  // namespace
}  // namespace gradzip::ctest

int main(int argc, char** argv) {
  return gradzip::testing::mpi_gtest_main(argc, argv, std::chrono::milliseconds(20000),
                                          [](int, char**, gradzip::Communicator& c) { gradzip::ctest::g_comm = &c; });
}
