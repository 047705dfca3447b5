// Every collective of the in-process communicator against a serial reference, for world sizes
// 1..8, odd sizes and every reduction dtype; determinism; argument rejection.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "rank_threads.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {
namespace {

using namespace testing;

// The serial reference, written independently of host_reduce: element-wise, rank 0 first.
OwnedTensor reference_reduce(DType dtype, ReduceOp op, int n, int64_t numel, uint64_t seed) {
  std::vector<OwnedTensor> in;
  for (int r = 0; r < n; ++r) {
    in.push_back(OwnedTensor::empty(dtype, {numel}));
    fill_test_values(in.back(), r, seed);
  }
  OwnedTensor out = OwnedTensor::empty(dtype, {numel});
  auto pick = [op](auto a, auto b) {
    using T = decltype(a);
    if constexpr (std::is_floating_point_v<T>) {
      if (op != ReduceOp::kSum && (std::isnan(a) || std::isnan(b)))
        return std::numeric_limits<T>::quiet_NaN();
    }
    if (op == ReduceOp::kSum) return static_cast<T>(a + b);
    if (op == ReduceOp::kMax) return std::max(a, b);
    return std::min(a, b);
  };
  for (int64_t i = 0; i < numel; ++i) {
    switch (dtype) {
      case DType::kF64: {
        double acc = in[0].view().data<double>()[i];
        for (int r = 1; r < n; ++r) acc = pick(acc, in[r].view().data<double>()[i]);
        out.view().data<double>()[i] = acc;
        break;
      }
      case DType::kF32: {
        float acc = in[0].view().data<float>()[i];
        for (int r = 1; r < n; ++r) acc = pick(acc, in[r].view().data<float>()[i]);
        out.view().data<float>()[i] = acc;
        break;
      }
      case DType::kBF16: {
        auto at = [&](int r) { return bf16_bits_to_float(static_cast<uint16_t*>(in[r].view().raw())[i]); };
        float acc = at(0);
        for (int r = 1; r < n; ++r) acc = pick(acc, at(r));
        static_cast<uint16_t*>(out.view().raw())[i] = float_to_bf16_bits(acc);
        break;
      }
      case DType::kI32: {
        int64_t acc = in[0].view().data<int32_t>()[i];
        for (int r = 1; r < n; ++r) acc = pick(acc, int64_t{in[r].view().data<int32_t>()[i]});
        out.view().data<int32_t>()[i] = static_cast<int32_t>(acc);
        break;
      }
      case DType::kI64: {
        int64_t acc = in[0].view().data<int64_t>()[i];
        for (int r = 1; r < n; ++r) acc = pick(acc, in[r].view().data<int64_t>()[i]);
        out.view().data<int64_t>()[i] = acc;
        break;
      }
      default: ADD_FAILURE();
    }
  }
  return out;
}

TEST(ThreadCollectives, AllReduceMatchesSerialReferenceForEveryDtypeOpAndWorldSize) {
  for (int n = 1; n <= 8; ++n) {
    for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
        const int64_t numel = 37;
        const uint64_t seed = 11 + n;
        OwnedTensor expected = reference_reduce(dtype, op, n, numel, seed);
        std::vector<OwnedTensor> got(n);
        for (auto& g : got) g = OwnedTensor::empty(dtype, {numel});
        run_ranks(n, [&](Communicator& comm) {
          fill_test_values(got[comm.rank()], comm.rank(), seed);
          comm.all_reduce(got[comm.rank()].view(), op);
        });
        for (int r = 0; r < n; ++r) {
          EXPECT_TRUE(bytes_equal(got[r], expected))
              << "n=" << n << " dtype=" << dtype_name(dtype) << " op=" << reduce_op_name(op)
              << " rank=" << r;
        }
      }
    }
  }
}

TEST(ThreadCollectives, AllReduceIsBitIdenticalRunToRun) {
  const int n = 8;
  const int64_t numel = 1001;
  std::vector<OwnedTensor> first(n);
  for (int run = 0; run < 3; ++run) {
    std::vector<OwnedTensor> got(n);
    for (auto& g : got) g = OwnedTensor::empty(DType::kF32, {numel});
    run_ranks(n, [&](Communicator& comm) {
      // Values of very different magnitudes, so a different summation order would show.
      Tensor t = got[comm.rank()].view();
      fill_test_values(t, comm.rank(), 5);
      for (int64_t i = 0; i < numel; ++i) t.data<float>()[i] *= std::pow(10.0f, comm.rank() % 4 * 3);
      comm.all_reduce(t);
    });
    for (int r = 0; r < n; ++r) EXPECT_TRUE(bytes_equal(got[r], got[0])) << "rank " << r;
    if (run == 0) {
      first = std::move(got);
    } else {
      EXPECT_TRUE(bytes_equal(got[0], first[0])) << "run " << run;
    }
  }
}

TEST(ThreadCollectives, MaxPropagatesNaNAndInfForOverflowChecks) {
  run_ranks(4, [](Communicator& comm) {
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {2});
    if (comm.rank() == 2) t.view().data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
    if (comm.rank() == 3) t.view().data<float>()[1] = std::numeric_limits<float>::infinity();
    comm.all_reduce(t.view(), ReduceOp::kMax);
    EXPECT_TRUE(std::isnan(t.view().data<float>()[0]));
    EXPECT_TRUE(std::isinf(t.view().data<float>()[1]));
    OwnedTensor count = OwnedTensor::zeros(DType::kI32, {1});
    count.view().data<int32_t>()[0] = comm.rank() + 1;
    comm.all_reduce(count.view());
    EXPECT_EQ(count.view().data<int32_t>()[0], 10);
  });
}

TEST(ThreadCollectives, ReduceScatterMatchesReferenceIncludingInPlace) {
  for (int n = 1; n <= 8; ++n) {
    for (int64_t m : {1, 5, 17}) {
      const uint64_t seed = 100 + n * 7 + m;
      OwnedTensor expected = reference_reduce(DType::kF32, ReduceOp::kSum, n, n * m, seed);
      for (bool in_place : {false, true}) {
        std::vector<OwnedTensor> in(n), out(n);
        run_ranks(n, [&](Communicator& comm) {
          const int r = comm.rank();
          in[r] = OwnedTensor::empty(DType::kF32, {n * m});
          fill_test_values(in[r], r, seed);
          out[r] = OwnedTensor::empty(DType::kF32, {m});
          Tensor dst = in_place ? in[r].view().slice(r * m, (r + 1) * m) : out[r].view();
          comm.reduce_scatter(dst, in[r].view());
          if (in_place) std::memcpy(out[r].view().raw(), dst.raw(), dst.nbytes());
        });
        for (int r = 0; r < n; ++r) {
          Tensor exp = expected.view().slice(r * m, (r + 1) * m);
          EXPECT_TRUE(bytes_equal(out[r], exp)) << "n=" << n << " m=" << m << " rank " << r
                                                << " in_place=" << in_place;
        }
      }
    }
  }
}

TEST(ThreadCollectives, AllGatherConcatenatesInRankOrderIncludingInPlace) {
  for (int n = 1; n <= 8; ++n) {
    for (int64_t m : {1, 3, 13}) {
      for (DType dtype : {DType::kF32, DType::kU16, DType::kI64}) {
        for (bool in_place : {false, true}) {
          std::vector<OwnedTensor> out(n);
          run_ranks(n, [&](Communicator& comm) {
            const int r = comm.rank();
            out[r] = OwnedTensor::zeros(dtype, {n * m});
            OwnedTensor in = OwnedTensor::empty(dtype, {m});
            for (size_t i = 0; i < in.view().nbytes(); ++i)
              static_cast<uint8_t*>(in.view().raw())[i] = static_cast<uint8_t>(r * 31 + i);
            Tensor src = in.view();
            if (in_place) {
              src = out[r].view().slice(r * m, (r + 1) * m);
              std::memcpy(src.raw(), in.view().raw(), in.view().nbytes());
            }
            comm.all_gather(out[r].view(), src);
          });
          for (int r = 0; r < n; ++r) {
            const auto* bytes = static_cast<const uint8_t*>(out[r].view().raw());
            const int64_t chunk = m * static_cast<int64_t>(dtype_size(dtype));
            for (int k = 0; k < n; ++k)
              for (int64_t i = 0; i < chunk; ++i)
                ASSERT_EQ(bytes[k * chunk + i], static_cast<uint8_t>(k * 31 + i))
                    << "n=" << n << " m=" << m << " rank " << r << " chunk " << k;
          }
        }
      }
    }
  }
}

TEST(ThreadCollectives, BroadcastFromEveryRoot) {
  for (int n = 1; n <= 8; ++n) {
    for (int root = 0; root < n; ++root) {
      run_ranks(n, [&](Communicator& comm) {
        OwnedTensor t = OwnedTensor::empty(DType::kF64, {9});
        fill_test_values(t, comm.rank(), 3);
        comm.broadcast(t.view(), root);
        OwnedTensor expected = OwnedTensor::empty(DType::kF64, {9});
        fill_test_values(expected, root, 3);
        EXPECT_TRUE(bytes_equal(t, expected)) << "n=" << n << " root=" << root;
      });
    }
  }
}

TEST(ThreadCollectives, SendRecvRingAndPairs) {
  for (int n = 1; n <= 8; ++n) {
    run_ranks(n, [&](Communicator& comm) {
      const int r = comm.rank();
      const int next = (r + 1) % n, prev = (r + n - 1) % n;
      OwnedTensor out = OwnedTensor::empty(DType::kF32, {7});
      OwnedTensor in = OwnedTensor::zeros(DType::kF32, {7});
      fill_test_values(out, r, 9);
      // Both directions at once: would deadlock as blocking send-then-recv on NCCL.
      std::vector<P2POp> ops = {{P2POp::Kind::kSend, out.view(), next},
                                {P2POp::Kind::kRecv, in.view(), prev}};
      comm.batch_send_recv(ops);
      OwnedTensor expected = OwnedTensor::empty(DType::kF32, {7});
      fill_test_values(expected, prev, 9);
      EXPECT_TRUE(bytes_equal(in, expected)) << "n=" << n << " rank " << r;
      // Ordered blocking pairs: the k-th send matches the k-th recv.
      if (n >= 2 && r < 2) {
        OwnedTensor a = OwnedTensor::zeros(DType::kI32, {3});
        for (int k = 0; k < 3; ++k) {
          if (r == 0) {
            a.view().data<int32_t>()[0] = k;
            comm.send(a.view(), 1);
          } else {
            comm.recv(a.view(), 0);
            EXPECT_EQ(a.view().data<int32_t>()[0], k);
          }
        }
      }
      comm.barrier();
    });
  }
}

TEST(ThreadCollectives, AsyncHandlesCanBeWaitedOutOfOrder) {
  run_ranks(4, [](Communicator& comm) {
    OwnedTensor a = OwnedTensor::zeros(DType::kF32, {3});
    OwnedTensor b = OwnedTensor::zeros(DType::kF32, {5});
    a.view().data<float>()[0] = 1.0f;
    b.view().data<float>()[4] = 2.0f;
    CommHandle ha = comm.all_reduce_async(a.view());
    CommHandle hb = comm.all_reduce_async(b.view());
    hb.wait();
    EXPECT_TRUE(ha.is_completed());  // every rank posted a before b
    ha.wait();
    ha.wait();  // a second wait is a no-op
    EXPECT_EQ(a.view().data<float>()[0], 4.0f);
    EXPECT_EQ(b.view().data<float>()[4], 8.0f);
  });
}

TEST(ThreadCollectives, RejectsUnevenSplitsBadPeersAndGpuTensors) {
  run_ranks(3, [](Communicator& comm) {
    OwnedTensor in = OwnedTensor::zeros(DType::kF32, {10});
    OwnedTensor out = OwnedTensor::zeros(DType::kF32, {3});
    expect_error([&] { comm.reduce_scatter(out.view(), in.view()); },
                 ErrorKind::kInvalidArgument, {"reduce_scatter", "10 elements", "pad"});
    expect_error([&] { comm.all_gather(in.view(), out.view()); }, ErrorKind::kInvalidArgument,
                 {"all_gather", "group size 3"});
    expect_error([&] { comm.send(out.view(), 3); }, ErrorKind::kInvalidArgument,
                 {"peer rank 3"});
    expect_error([&] { comm.broadcast(out.view(), -1); }, ErrorKind::kInvalidArgument,
                 {"broadcast"});
    OwnedTensor bytes = OwnedTensor::zeros(DType::kU16, {3});
    expect_error([&] { comm.all_reduce(bytes.view()); }, ErrorKind::kInvalidArgument,
                 {"cannot reduce dtype"});
    float fake = 0;
    Tensor gpu(&fake, DType::kF32, {1}, Device::cuda(0));
    expect_error([&] { comm.all_reduce(gpu); }, ErrorKind::kUnsupported, {"CPU tensors"});
    comm.barrier();  // rejected calls did not consume a sequence number
  });
}

TEST(ThreadCollectives, MismatchedCollectivesAreReportedOnEveryRank) {
  ThreadWorld world(2, {.timeout = 10s});
  auto errors = world.run([](Communicator& comm) {
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {4});
    OwnedTensor big = OwnedTensor::zeros(DType::kF32, {8});
    if (comm.rank() == 0) {
      comm.all_reduce(t.view());
    } else {
      comm.all_gather(big.view(), t.view());
    }
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kInvalidArgument,
                 {"mismatch", "all_reduce(sum, fp32, 4 elements)", "all_gather(fp32, 4 elements)"});
  }
}

}  // namespace
}  // namespace shardlm::dist
