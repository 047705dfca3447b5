// cudnn_graph.cc — see cudnn_graph.h. Empty in builds without cuDNN.
#ifdef SHARDLM_WITH_CUDNN
#include "shardlm/ops/cuda/cudnn_graph.h"

#include <string>

#include "shardlm/base/error.h"

namespace shardlm::ops::cuda {

void cudnn_check(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw Error(ErrorKind::kInternal, std::string("cuDNN: ") + what + " failed: " +
                                        cudnnGetErrorString(status) +
                                        (detail[0] ? std::string(" (") + detail + ")" : ""));
}

std::vector<int64_t> packed_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> strides(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * dims[i];
  return strides;
}

CudnnDescriptor::CudnnDescriptor(cudnnBackendDescriptorType_t type) {
  cudnn_check(cudnnBackendCreateDescriptor(type, &desc_), "cudnnBackendCreateDescriptor");
}

CudnnDescriptor::~CudnnDescriptor() {
  if (desc_ != nullptr) cudnnBackendDestroyDescriptor(desc_);
}

void CudnnDescriptor::set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                          int64_t count, const void* values, const char* what) {
  cudnn_check(cudnnBackendSetAttribute(desc_, name, type, count, values), what);
}

void CudnnDescriptor::finalize(const char* what) {
  cudnn_check(cudnnBackendFinalize(desc_), what);
}

CudnnTensor CudnnGraph::make_tensor(const std::vector<int64_t>& dims,
                                    const std::vector<int64_t>& strides, cudnnDataType_t type,
                                    bool is_virtual, bool by_value) {
  auto desc = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const int64_t uid = next_uid_++, alignment = 16;
  const int64_t rank = static_cast<int64_t>(dims.size());
  desc->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor data type");
  desc->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, rank, dims.data(), "tensor dims");
  desc->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, rank, strides.data(), "tensor strides");
  desc->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
  desc->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment,
            "tensor alignment");
  const bool virt = is_virtual;
  desc->set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor is_virtual");
  if (by_value) {
    const bool bv = true;
    desc->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor is_by_value");
  }
  desc->finalize("tensor descriptor");
  owned_.push_back(desc);
  return {uid, desc};
}

CudnnTensor CudnnGraph::tensor(const std::vector<int64_t>& dims,
                               const std::vector<int64_t>& strides, cudnnDataType_t type) {
  return make_tensor(dims, strides, type, false, false);
}

CudnnTensor CudnnGraph::virtual_tensor(const std::vector<int64_t>& dims, cudnnDataType_t type) {
  return make_tensor(dims, packed_strides(dims), type, true, false);
}

CudnnTensor CudnnGraph::virtual_tensor(const std::vector<int64_t>& dims,
                                       const std::vector<int64_t>& strides,
                                       cudnnDataType_t type) {
  return make_tensor(dims, strides, type, true, false);
}

CudnnTensor CudnnGraph::scalar(cudnnDataType_t type) {
  return make_tensor({1, 1, 1, 1}, {1, 1, 1, 1}, type, false, true);
}

namespace {

std::shared_ptr<CudnnDescriptor> pointwise_desc(cudnnPointwiseMode_t mode,
                                                cudnnDataType_t precision, int64_t axis) {
  auto pw = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  pw->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
  pw->set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision,
          "pointwise precision");
  if (axis >= 0)
    pw->set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
  pw->finalize("pointwise descriptor");
  return pw;
}

void set_desc(CudnnDescriptor& op, cudnnBackendAttributeName_t name, const CudnnDescriptor& d,
              const char* what) {
  cudnnBackendDescriptor_t raw = d.get();
  op.set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, what);
}

}  // namespace

void CudnnGraph::add_pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t precision,
                               int64_t axis, const CudnnTensor& x, const CudnnTensor* b,
                               const CudnnTensor* t, const CudnnTensor& y) {
  auto pw = pointwise_desc(mode, precision, axis);
  auto op = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, *pw, "pointwise op desc");
  set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, *x.desc, "pointwise x");
  if (b != nullptr) set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b->desc, "pointwise b");
  if (t != nullptr) set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t->desc, "pointwise t");
  set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, *y.desc, "pointwise y");
  op->finalize("pointwise op");
  owned_.push_back(pw);
  add_op(op);
}

void CudnnGraph::pointwise(cudnnPointwiseMode_t mode, const CudnnTensor& x, const CudnnTensor& y,
                           cudnnDataType_t precision) {
  add_pointwise(mode, precision, -1, x, nullptr, nullptr, y);
}

void CudnnGraph::pointwise(cudnnPointwiseMode_t mode, const CudnnTensor& x, const CudnnTensor& b,
                           const CudnnTensor& y, cudnnDataType_t precision) {
  add_pointwise(mode, precision, -1, x, &b, nullptr, y);
}

void CudnnGraph::binary_select(const CudnnTensor& x, const CudnnTensor& b,
                               const CudnnTensor& mask, const CudnnTensor& y) {
  add_pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, x, &b, &mask, y);
}

void CudnnGraph::gen_index(const CudnnTensor& like, int64_t axis, const CudnnTensor& y) {
  add_pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, axis, like, nullptr, nullptr, y);
}

void CudnnGraph::matmul(const CudnnTensor& a, const CudnnTensor& b, const CudnnTensor& c) {
  auto mm = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  mm->set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "matmul compute type");
  mm->finalize("matmul descriptor");
  auto op = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  set_desc(*op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, *a.desc, "matmul a");
  set_desc(*op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, *b.desc, "matmul b");
  set_desc(*op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, *c.desc, "matmul c");
  set_desc(*op, CUDNN_ATTR_OPERATION_MATMUL_DESC, *mm, "matmul desc");
  op->finalize("matmul op");
  owned_.push_back(mm);
  add_op(op);
}

void CudnnGraph::reduction(cudnnReduceTensorOp_t reduce, const CudnnTensor& x,
                           const CudnnTensor& y) {
  auto red = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  red->set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce,
           "reduction operator");
  red->set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp,
           "reduction compute type");
  red->finalize("reduction descriptor");
  auto op = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  set_desc(*op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, *x.desc, "reduction x");
  set_desc(*op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, *y.desc, "reduction y");
  set_desc(*op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, *red, "reduction desc");
  op->finalize("reduction op");
  owned_.push_back(red);
  add_op(op);
}

void CudnnGraph::reshape(const CudnnTensor& x, const CudnnTensor& y) {
  auto op = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  set_desc(*op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, *x.desc, "reshape x");
  set_desc(*op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, *y.desc, "reshape y");
  op->finalize("reshape op");
  add_op(op);
}

void CudnnGraph::rng_bernoulli(double keep_probability, const CudnnTensor& seed,
                               const CudnnTensor& offset, const CudnnTensor& y) {
  auto rng = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_RNG_DESCRIPTOR);
  const cudnnRngDistribution_t dist = CUDNN_RNG_DISTRIBUTION_BERNOULLI;
  rng->set(CUDNN_ATTR_RNG_DISTRIBUTION, CUDNN_TYPE_RNG_DISTRIBUTION, 1, &dist,
           "rng distribution");
  rng->set(CUDNN_ATTR_RNG_BERNOULLI_DIST_PROBABILITY, CUDNN_TYPE_DOUBLE, 1, &keep_probability,
           "rng bernoulli probability");
  rng->finalize("rng descriptor");
  auto op = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATION_RNG_DESCRIPTOR);
  set_desc(*op, CUDNN_ATTR_OPERATION_RNG_YDESC, *y.desc, "rng y");
  set_desc(*op, CUDNN_ATTR_OPERATION_RNG_SEED, *seed.desc, "rng seed");
  set_desc(*op, CUDNN_ATTR_OPERATION_RNG_OFFSET_DESC, *offset.desc, "rng offset");
  set_desc(*op, CUDNN_ATTR_OPERATION_RNG_DESC, *rng, "rng desc");
  op->finalize("rng op");
  owned_.push_back(rng);
  add_op(op);
}

// The handle attributes are deprecated in cuDNN 9 (a device-property descriptor may replace
// them) but remain the way to bind a graph and a plan to a device on every 9.x release.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
std::optional<CudnnPlan> CudnnGraph::build_plan(std::string* why_not) {
  auto graph = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> raw_ops;
  for (const auto& op : ops_) raw_ops.push_back(op->get());
  graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
             static_cast<int64_t>(raw_ops.size()), raw_ops.data(), "graph ops");
  graph->set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_, "graph handle");
  const cudnnStatus_t graph_status = cudnnBackendFinalize(graph->get());
  if (graph_status != CUDNN_STATUS_SUCCESS) {
    char detail[512] = {0};
    cudnnGetLastErrorString(detail, sizeof(detail));
    if (why_not) *why_not = std::string("operation graph: ") + cudnnGetErrorString(graph_status) + " " + detail;
    return std::nullopt;
  }

  std::string last = "no engine configuration offered";
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    CudnnDescriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendDescriptor_t raw_graph = graph->get();
    heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw_graph,
             "heuristics graph");
    heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    if (cudnnBackendFinalize(heur.get()) != CUDNN_STATUS_SUCCESS) continue;
    int64_t count = 0;
    cudnn_check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
                "heuristics result count");
    std::vector<std::shared_ptr<CudnnDescriptor>> configs;
    std::vector<cudnnBackendDescriptor_t> raw_configs;
    for (int64_t i = 0; i < count; ++i) {
      configs.push_back(std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw_configs.push_back(configs.back()->get());
    }
    int64_t got = 0;
    if (count > 0)
      cudnn_check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                           raw_configs.data()),
                  "heuristics results");
    for (int64_t i = 0; i < got; ++i) {
      auto plan = std::make_shared<CudnnDescriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_, "plan handle");
      cudnnBackendDescriptor_t cfg = configs[i]->get();
      plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg,
                "plan engine config");
      const cudnnStatus_t st = cudnnBackendFinalize(plan->get());
      if (st != CUDNN_STATUS_SUCCESS) {
        char detail[512] = {0};
        cudnnGetLastErrorString(detail, sizeof(detail));
        last = std::string("plan: ") + cudnnGetErrorString(st) + " " + detail;
        continue;
      }
      int64_t workspace = 0, n = 0;
      cudnn_check(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                           CUDNN_TYPE_INT64, 1, &n, &workspace),
                  "plan workspace size");
      std::vector<std::shared_ptr<CudnnDescriptor>> keep = owned_;
      keep.insert(keep.end(), ops_.begin(), ops_.end());
      keep.push_back(graph);
      keep.push_back(configs[i]);
      return CudnnPlan(plan, workspace, std::move(keep));
    }
  }
  if (why_not) *why_not = last;
  return std::nullopt;
}
#pragma GCC diagnostic pop

void CudnnPlan::execute(cudnnHandle_t handle,
                        const std::vector<std::pair<int64_t, void*>>& bindings,
                        void* workspace) const {
  std::vector<int64_t> uids;
  std::vector<void*> pointers;
  for (const auto& [uid, ptr] : bindings) {
    uids.push_back(uid);
    pointers.push_back(ptr);
  }
  CudnnDescriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
           static_cast<int64_t>(uids.size()), uids.data(), "variant pack uids");
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(pointers.size()), pointers.data(), "variant pack pointers");
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace,
           "variant pack workspace");
  pack.finalize("variant pack");
  cudnn_check(cudnnBackendExecute(handle, plan_->get(), pack.get()), "cudnnBackendExecute");
}

}  // namespace shardlm::ops::cuda

#endif  // SHARDLM_WITH_CUDNN
