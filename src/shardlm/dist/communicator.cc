#include "shardlm/dist/communicator.h"

#include <sstream>

#include "shardlm/base/error.h"

namespace shardlm::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

const char* comm_op_name(CommOpKind kind) {
  switch (kind) {
    case CommOpKind::kAllReduce: return "all_reduce";
    case CommOpKind::kReduceScatter: return "reduce_scatter";
    case CommOpKind::kAllGather: return "all_gather";
    case CommOpKind::kBroadcast: return "broadcast";
    case CommOpKind::kSend: return "send";
    case CommOpKind::kRecv: return "recv";
    case CommOpKind::kBarrier: return "barrier";
    case CommOpKind::kSplit: return "split";
  }
  return "?";
}

namespace {

std::string where(const Communicator& comm, CommOpKind kind) {
  std::ostringstream os;
  os << comm_op_name(kind) << " on group '" << comm.name() << "' (rank " << comm.rank() << " of "
     << comm.size() << ")";
  return os.str();
}

}  // namespace

void check_reduce_dtype(const Communicator& comm, CommOpKind kind, const Tensor& t) {
  switch (t.dtype()) {
    case DType::kF64: case DType::kF32: case DType::kBF16: case DType::kF16:
    case DType::kI32: case DType::kI64:
      return;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  where(comm, kind) + ": cannot reduce dtype " + dtype_name(t.dtype()) +
                      " (reductions take fp64, fp32, bf16, fp16, int32 or int64)");
  }
}

void check_reduce_scatter_sizes(const Communicator& comm, const Tensor& out, const Tensor& in) {
  if (in.dtype() != out.dtype() || in.numel() != out.numel() * comm.size()) {
    std::ostringstream os;
    os << where(comm, CommOpKind::kReduceScatter) << ": input " << dtype_name(in.dtype())
       << in.shape().to_string() << " (" << in.numel() << " elements) must hold group size "
       << comm.size() << " x output " << dtype_name(out.dtype()) << out.shape().to_string()
       << " (" << out.numel() << " elements) of the same dtype; uneven splits are not "
       << "supported: pad the input to a multiple of " << comm.size() << " elements";
    throw Error(ErrorKind::kInvalidArgument, os.str());
  }
}

void check_all_gather_sizes(const Communicator& comm, const Tensor& out, const Tensor& in) {
  if (in.dtype() != out.dtype() || out.numel() != in.numel() * comm.size()) {
    std::ostringstream os;
    os << where(comm, CommOpKind::kAllGather) << ": output " << dtype_name(out.dtype())
       << out.shape().to_string() << " (" << out.numel() << " elements) must hold group size "
       << comm.size() << " x input " << dtype_name(in.dtype()) << in.shape().to_string() << " ("
       << in.numel() << " elements) of the same dtype; uneven splits are not supported: pad "
       << "every rank's input to the same size";
    throw Error(ErrorKind::kInvalidArgument, os.str());
  }
}

void check_peer(const Communicator& comm, CommOpKind kind, int peer) {
  if (peer < 0 || peer >= comm.size()) {
    throw Error(ErrorKind::kInvalidArgument, where(comm, kind) + ": peer rank " +
                                                 std::to_string(peer) + " is outside [0, " +
                                                 std::to_string(comm.size()) + ")");
  }
}

std::string describe_ranks(const std::vector<int>& group_ranks,
                           const std::vector<int>& world_ranks_of_group) {
  std::ostringstream os;
  os << "ranks [";
  for (size_t i = 0; i < group_ranks.size(); ++i) os << (i ? ", " : "") << group_ranks[i];
  os << "] (world ranks [";
  for (size_t i = 0; i < group_ranks.size(); ++i) {
    const int r = group_ranks[i];
    os << (i ? ", " : "")
       << (r >= 0 && r < static_cast<int>(world_ranks_of_group.size()) ? world_ranks_of_group[r]
                                                                         : -1);
  }
  os << "])";
  return os.str();
}

}  // namespace shardlm::dist
