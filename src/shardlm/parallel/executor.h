// Pipeline executor: runs one rank's action list of a PipelineSchedule against an abstract
// PipelineStage (the rank's model chunks), moving activations and gradients through
// PipelineP2P. It knows nothing of GPTModel: a model becomes pipelined by implementing
// PipelineStage for its chunks.
//
// What it does, action by action (docs/formats/schedule.md):
//  - a run of transfer actions: allocates receive buffers, posts the run as one batch per
//    channel (PipelineP2P::post) and moves on without waiting;
//  - kForward(c, m): waits for the batch that received its input (not on the first virtual
//    stage), allocates the output buffer (not on the last virtual stage), calls
//    stage.forward(c, m, input, output);
//  - kBackward(c, m): waits for the batch that received the output gradient (not on the last
//    virtual stage), allocates the input-gradient buffer (not on the first), calls
//    stage.backward(c, m, output_grad, input_grad), then frees the input and output gradient;
//  - a sent buffer is freed once its batch completed (checked after every action); at the end
//    of the step every pending batch is waited.
// So the only blocking points are the ones the simulator models (schedule_simulator.h).
//
// Buffer lifetimes the stage may rely on: `input` stays valid until backward(c, m) returns
// (the stage may keep a view of it instead of a copy); `output` only during forward(c, m)
// (the executor sends it); `output_grad` and `input_grad` only during backward(c, m).
// Undefined tensors (Tensor{}) mark what does not exist: no input on the first virtual stage
// (the stage reads its data), no output and no output_grad on the last virtual stage (the
// stage computes the loss and seeds its gradient), no input_grad on the first.
//
// Failures: a stage or communication error aborts both channels (so peers fail fast rather
// than hang) and is rethrown.
//
// Thread contract: one rank's thread. Ownership: borrows everything; owns transfer buffers for
// the duration of run().
//
//   PipelineP2P p2p = PipelineP2P::create(rc.pp());
//   PipelineSchedule s = registry.generate("1f1b", {P, 1, M});
//   ExecutorStats st = run_pipeline_schedule(s, p2p, my_stage);
#pragma once

#include "shardlm/parallel/p2p.h"
#include "shardlm/parallel/schedule.h"
#include "shardlm/tensor/device.h"
#include "shardlm/tensor/dtype.h"
#include "shardlm/tensor/shape.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::parallel {

// Shape, dtype and device of a tensor crossing a stage boundary.
struct BoundarySpec {
  DType dtype = DType::kF32;
  Shape shape;
  Device device = Device::cpu();
};

class PipelineStage {
 public:
  virtual ~PipelineStage() = default;
  // The activation entering chunk `chunk` (and, the same, its gradient).
  virtual BoundarySpec input_spec(int chunk) const = 0;
  // The activation leaving chunk `chunk` (and its gradient).
  virtual BoundarySpec output_spec(int chunk) const = 0;
  virtual void forward(int chunk, int microbatch, const Tensor& input, const Tensor& output) = 0;
  virtual void backward(int chunk, int microbatch, const Tensor& output_grad,
                        const Tensor& input_grad) = 0;
};

struct ExecutorStats {
  int peak_in_flight = 0;  // most (chunk, mb) with forward done and backward not
  int peak_buffers = 0;    // most transfer buffers alive at once
  int batches_posted = 0;  // batch_send_recv calls issued (both channels)
  int buffers_allocated = 0;  // transfer buffers allocated (the rest were recycled)
};

// Runs schedule.ranks[p2p.rank()] once. The schedule's P must equal p2p.num_stages().
ExecutorStats run_pipeline_schedule(const PipelineSchedule& schedule, PipelineP2P& p2p,
                                    PipelineStage& stage);

}  // namespace shardlm::parallel
