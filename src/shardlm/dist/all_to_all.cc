#include "shardlm/dist/all_to_all.h"

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <sstream>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/ops/ops.h"

namespace shardlm::dist {
namespace {

// "all_to_all_v on group 'ep' (rank 1 of 4)": the start of every message.
std::string where(const char* fn, const Communicator& comm) {
  std::ostringstream os;
  os << fn << " on group '" << comm.name() << "' (rank " << comm.rank() << " of " << comm.size()
     << ")";
  return os.str();
}

std::string list(std::span<const int64_t> v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

[[noreturn]] void reject(const char* fn, const Communicator& comm, const std::string& what) {
  throw Error(ErrorKind::kInvalidArgument, where(fn, comm) + ": " + what);
}

// One count per rank of the group, none negative.
void check_counts(const char* fn, const Communicator& comm, const char* name,
                  std::span<const int64_t> counts) {
  if (static_cast<int>(counts.size()) != comm.size()) {
    reject(fn, comm, std::string(name) + " has " + std::to_string(counts.size()) +
                         " entries but the group has " + std::to_string(comm.size()) +
                         " ranks (one count per rank)");
  }
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] < 0) {
      reject(fn, comm, std::string(name) + "[" + std::to_string(p) + "] is " +
                           std::to_string(counts[p]) + " in " + list(counts) +
                           " (counts must be >= 0)");
    }
  }
}

// t has a row axis on ctx's device and as many rows as `rows` sums to.
void check_rows(const char* fn, const Communicator& comm, const DeviceContext& ctx,
                const char* tensor, const Tensor& t, const char* name,
                std::span<const int64_t> rows) {
  if (t.rank() < 1) {
    reject(fn, comm, std::string(tensor) + " " + t.shape().to_string() +
                         " has no row axis (it needs shape [rows, ...])");
  }
  if (t.numel() > 0 && t.device() != ctx.device()) {
    reject(fn, comm, std::string(tensor) + " is on " + t.device().to_string() +
                         " but the DeviceContext is on " + ctx.device().to_string());
  }
  const int64_t sum = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  if (t.size(0) != sum) {
    reject(fn, comm, std::string(tensor) + " " + t.shape().to_string() + " has " +
                         std::to_string(t.size(0)) + " rows but " + name + " " + list(rows) +
                         " sums to " + std::to_string(sum));
  }
}

void check_exchange(const Communicator& comm, const DeviceContext& ctx, const Tensor& out,
                    const Tensor& in, std::span<const int64_t> send_rows,
                    std::span<const int64_t> recv_rows) {
  constexpr const char* fn = "all_to_all_v";
  check_counts(fn, comm, "send_rows", send_rows);
  check_counts(fn, comm, "recv_rows", recv_rows);
  check_rows(fn, comm, ctx, "in", in, "send_rows", send_rows);
  check_rows(fn, comm, ctx, "out", out, "recv_rows", recv_rows);
  std::vector<int64_t> in_row = in.shape().dims(), out_row = out.shape().dims();
  in_row.erase(in_row.begin());
  out_row.erase(out_row.begin());
  if (in.dtype() != out.dtype() || in_row != out_row) {
    reject(fn, comm, std::string("in ") + dtype_name(in.dtype()) + in.shape().to_string() +
                         " and out " + dtype_name(out.dtype()) + out.shape().to_string() +
                         " must have the same dtype and the same shape after the row axis");
  }
  const int me = comm.rank();
  if (send_rows[me] != recv_rows[me]) {
    reject(fn, comm, "send_rows[" + std::to_string(me) + "] = " + std::to_string(send_rows[me]) +
                         " rows to itself but recv_rows[" + std::to_string(me) + "] = " +
                         std::to_string(recv_rows[me]) + " from itself (send_rows " +
                         list(send_rows) + ", recv_rows " + list(recv_rows) + ")");
  }
  // The peers write out while in is read: overlapping buffers would corrupt the exchange.
  const auto* in_begin = static_cast<const std::byte*>(in.raw());
  const auto* out_begin = static_cast<const std::byte*>(out.raw());
  if (in.nbytes() > 0 && out.nbytes() > 0 && in_begin < out_begin + out.nbytes() &&
      out_begin < in_begin + in.nbytes()) {
    reject(fn, comm, "in and out overlap in memory; the exchange is not in place (use two "
                     "buffers)");
  }
}

}  // namespace

std::vector<int64_t> all_to_all_counts(Communicator& comm, DeviceContext& ctx,
                                       std::span<const int64_t> send_counts) {
  check_counts("all_to_all_counts", comm, "send_counts", send_counts);
  const int n = comm.size();
  if (n == 1) return {send_counts[0]};
  const int64_t n_all = int64_t{n} * n;
  OwnedTensor mine = OwnedTensor::empty(DType::kI64, {n});     // [P]: this rank's row
  OwnedTensor all = OwnedTensor::empty(DType::kI64, {n_all});  // [P*P]: every rank's row
  std::copy(send_counts.begin(), send_counts.end(), mine.view().data<int64_t>());
  if (ctx.device().is_cpu()) {
    comm.all_gather(all.view(), mine.view());
  } else {  // NCCL moves device memory only (as Trainer::all_reduce_sum)
    OwnedTensor mine_dev = OwnedTensor::empty(DType::kI64, {n}, ctx.device());
    OwnedTensor all_dev = OwnedTensor::empty(DType::kI64, {n_all}, ctx.device());
    ops::copy(ctx, mine_dev.view(), mine.view());
    comm.all_gather(all_dev.view(), mine_dev.view());
    ops::copy(ctx, all.view(), all_dev.view());
  }
  // all[p * P + q] = what rank p sends rank q; this rank receives column rank().
  const int64_t* gathered = all.view().data<int64_t>();
  std::vector<int64_t> recv_counts(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) recv_counts[p] = gathered[int64_t{p} * n + comm.rank()];
  return recv_counts;
}

CommHandle all_to_all_v_async(Communicator& comm, DeviceContext& ctx, Tensor out,
                              const Tensor& in, std::span<const int64_t> send_rows,
                              std::span<const int64_t> recv_rows) {
  check_exchange(comm, ctx, out, in, send_rows, recv_rows);
  const int me = comm.rank();
  std::vector<P2POp> ops;
  int64_t send_begin = 0, recv_begin = 0;
  Tensor own_src, own_dst;  // this rank's block to itself
  for (int p = 0; p < comm.size(); ++p) {
    const Tensor send = in.slice(send_begin, send_begin + send_rows[p]);
    const Tensor recv = out.slice(recv_begin, recv_begin + recv_rows[p]);
    send_begin += send_rows[p];
    recv_begin += recv_rows[p];
    if (p == me) {
      own_src = send;
      own_dst = recv;
      continue;
    }
    if (send_rows[p] > 0) ops.push_back({P2POp::Kind::kSend, send, p});
    if (recv_rows[p] > 0) ops.push_back({P2POp::Kind::kRecv, recv, p});
  }
  // The peers' blocks first, so on a GPU the exchange is queued before the local copy and the
  // two overlap; a rank with no peer block posts nothing.
  CommHandle handle = ops.empty() ? CommHandle() : comm.batch_send_recv_async(ops);
  if (own_src.numel() > 0) ops::copy(ctx, own_dst, own_src);
  return handle;
}

void all_to_all_v(Communicator& comm, DeviceContext& ctx, Tensor out, const Tensor& in,
                  std::span<const int64_t> send_rows, std::span<const int64_t> recv_rows) {
  all_to_all_v_async(comm, ctx, out, in, send_rows, recv_rows).wait();
}

}  // namespace shardlm::dist
