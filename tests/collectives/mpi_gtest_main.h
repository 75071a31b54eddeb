// main() of the GoogleTest suites that run under mpirun (collectives' conformance suite, the LibTorch GradSync
// tests): every process is one rank of an MpiCommunicator over MPI_COMM_WORLD with a watchdog, so a bug that desyncs
// the ranks fails instead of hanging. Rank 0 prints GoogleTest's normal output; every other rank prints only its
// failures, prefixed "[rank r]"; the exit code is non-zero on every rank when any rank failed.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>

#include "gradzip/collectives/mpi_communicator.h"

namespace gradzip::testing {

/// Prints only failures, with the rank in front (for ranks other than 0).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result()->Failed()) std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, t.test_suite_name(), t.name());
  }

 private:
  int rank_;
};

/// MPI_Init, GoogleTest (its flags removed from argv), the communicator with `timeout`, then `setup(argc, argv, comm)`
/// (the suite keeps the communicator and reads its own arguments), RUN_ALL_TESTS on every rank and one verdict for
/// all. An exception escaping the tests counts as a failure of that rank.
inline int mpi_gtest_main(int argc, char** argv, std::chrono::milliseconds timeout,
                          const std::function<void(int, char**, Communicator&)>& setup) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD, MpiOptions{timeout});
  if (!comm.ok()) {
    std::fprintf(stderr, "[rank %d] %s\n", rank, comm.status().to_string().c_str());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  setup(argc, argv, **comm);
  int failed = 0;
  try {
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] %s\n", rank, e.what());
    failed = 1;
  }
  int any = failed;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any && !failed) std::fprintf(stderr, "[rank 0] another rank failed (see [rank r] lines)\n");
  comm->reset();
  if (any) {
    // A failed check may have left a timed-out request behind, and MPI_Finalize could then wait for it.
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}

}  // namespace gradzip::testing
