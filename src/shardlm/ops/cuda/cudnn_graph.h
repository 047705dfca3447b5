// cudnn_graph.h — a small owner of cuDNN backend-API (graph API) descriptors: build an operation
// graph from tensors and pointwise / matmul / reduction / reshape nodes, finalize it into an
// execution plan through cuDNN's heuristics, run the plan with a variant pack.
//
// Why not cudnn-frontend: it is not installed on the machines we build on (GPU-MACHINE.md), and
// the few graphs ShardLM needs (fused attention) are short enough to state directly.
//
// Compiled only with SHARDLM_WITH_CUDNN. Every cuDNN call is checked; a failure throws
// Error(kInternal) naming the call, except plan finalization, which reports "no engine" through
// its return value so callers can fall back to other kernels.
//
//   CudnnGraph g(handle);
//   auto q = g.tensor({B, H, S, D}, strides, CUDNN_DATA_BFLOAT16);        // a real tensor
//   auto s = g.virtual_tensor({B, H, S, S});                              // fp32 intermediate
//   g.matmul(q, kt, s);
//   std::optional<CudnnPlan> plan = g.build_plan();
//   plan->execute(handle, {{q.uid, q_ptr}, ...}, workspace);
#pragma once

#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shardlm::ops::cuda {

// Throws Error(kInternal) with `what` and cuDNN's message when status is not success.
void cudnn_check(cudnnStatus_t status, const char* what);

// One backend descriptor, destroyed with its owner.
class CudnnDescriptor {
 public:
  explicit CudnnDescriptor(cudnnBackendDescriptorType_t type);
  ~CudnnDescriptor();
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
  cudnnBackendDescriptor_t get() const { return desc_; }

  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
           const void* values, const char* what);
  void finalize(const char* what);

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

// A tensor of the graph: its unique id (the key of the variant pack) and its descriptor.
struct CudnnTensor {
  int64_t uid = 0;
  std::shared_ptr<CudnnDescriptor> desc;
};

// A finalized execution plan.
class CudnnPlan {
 public:
  CudnnPlan(std::shared_ptr<CudnnDescriptor> plan, int64_t workspace_bytes,
            std::vector<std::shared_ptr<CudnnDescriptor>> keep_alive)
      : plan_(std::move(plan)), workspace_bytes_(workspace_bytes),
        keep_alive_(std::move(keep_alive)) {}
  int64_t workspace_bytes() const { return workspace_bytes_; }
  // Runs on the handle's stream. `bindings` maps every non-virtual tensor uid to its device
  // pointer (by-value scalars: a host pointer to the value).
  void execute(cudnnHandle_t handle, const std::vector<std::pair<int64_t, void*>>& bindings,
               void* workspace) const;

 private:
  std::shared_ptr<CudnnDescriptor> plan_;
  int64_t workspace_bytes_ = 0;
  std::vector<std::shared_ptr<CudnnDescriptor>> keep_alive_;  // what the plan refers to
};

class CudnnGraph {
 public:
  explicit CudnnGraph(cudnnHandle_t handle) : handle_(handle) {}

  // A tensor in device memory (alignment 16 bytes).
  CudnnTensor tensor(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                     cudnnDataType_t type);
  // An intermediate that never reaches memory; packed row-major strides.
  CudnnTensor virtual_tensor(const std::vector<int64_t>& dims,
                             cudnnDataType_t type = CUDNN_DATA_FLOAT);
  CudnnTensor virtual_tensor(const std::vector<int64_t>& dims,
                             const std::vector<int64_t>& strides, cudnnDataType_t type);
  // A scalar passed by value at execution ([1,1,1,1], host pointer in the variant pack).
  CudnnTensor scalar(cudnnDataType_t type = CUDNN_DATA_FLOAT);

  // y = mode(x [, b [, t]]) in `precision`; axis only for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, const CudnnTensor& x, const CudnnTensor& y,
                 cudnnDataType_t precision = CUDNN_DATA_FLOAT);
  void pointwise(cudnnPointwiseMode_t mode, const CudnnTensor& x, const CudnnTensor& b,
                 const CudnnTensor& y, cudnnDataType_t precision = CUDNN_DATA_FLOAT);
  void binary_select(const CudnnTensor& x, const CudnnTensor& b, const CudnnTensor& mask,
                     const CudnnTensor& y);
  void gen_index(const CudnnTensor& like, int64_t axis, const CudnnTensor& y);
  void matmul(const CudnnTensor& a, const CudnnTensor& b, const CudnnTensor& c);
  void reduction(cudnnReduceTensorOp_t op, const CudnnTensor& x, const CudnnTensor& y);
  void reshape(const CudnnTensor& x, const CudnnTensor& y);
  // y = Bernoulli(keep_probability) draws (1 or 0) from cuDNN's Philox generator, keyed by the
  // int64 seed and offset tensors (by-value scalars here).
  void rng_bernoulli(double keep_probability, const CudnnTensor& seed, const CudnnTensor& offset,
                     const CudnnTensor& y);

  // Finalizes the graph and tries the heuristics' engine configurations in order; nullopt when
  // none finalizes (the graph is valid but no engine supports it here). `why_not` then holds
  // the last cuDNN status.
  std::optional<CudnnPlan> build_plan(std::string* why_not);

 private:
  CudnnTensor make_tensor(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                          cudnnDataType_t type, bool is_virtual, bool by_value);
  void add_op(std::shared_ptr<CudnnDescriptor> op) { ops_.push_back(std::move(op)); }
  // One pointwise node; b and t (the select mask) may be null.
  void add_pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t precision, int64_t axis,
                     const CudnnTensor& x, const CudnnTensor* b, const CudnnTensor* t,
                     const CudnnTensor& y);

  cudnnHandle_t handle_;
  int64_t next_uid_ = 1;
  std::vector<std::shared_ptr<CudnnDescriptor>> ops_;
  std::vector<std::shared_ptr<CudnnDescriptor>> owned_;  // tensors and op-level descriptors
};

// Packed row-major strides of dims.
std::vector<int64_t> packed_strides(const std::vector<int64_t>& dims);

}  // namespace shardlm::ops::cuda
