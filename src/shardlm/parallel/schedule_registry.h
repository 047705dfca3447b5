// ScheduleRegistry: the map from a --pipeline-schedule name to its generator, so a new schedule
// (zero-bubble, ...) is one new generator function plus one add() call.
//
// Not a singleton (DESIGN §8.5): builtin() returns a fresh registry holding the built-in
// generators; whoever builds the pipeline owns it and may add() more.
//
// Thread contract: const methods are safe to share; add() needs exclusive access. Value type.
//
//   ScheduleRegistry reg = ScheduleRegistry::builtin();
//   std::string name = default_schedule_name(/*num_chunks=*/2);        // "interleaved-1f1b"
//   PipelineSchedule s = reg.generate(name, {.num_stages = 4, .num_chunks = 2,
//                                            .num_microbatches = 8});
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "shardlm/parallel/schedule.h"
#include "shardlm/parallel/schedule_generators.h"

namespace shardlm::parallel {

using ScheduleGenerator = std::function<PipelineSchedule(const ScheduleSpec&)>;

class ScheduleRegistry {
 public:
  // all-forward-all-backward, 1f1b, interleaved-1f1b.
  static ScheduleRegistry builtin();

  // Throws kInvalidArgument if the name is taken or empty.
  void add(const std::string& name, ScheduleGenerator generator);
  bool contains(const std::string& name) const { return generators_.count(name) > 0; }
  std::vector<std::string> names() const;

  // Runs the named generator; an unknown name throws kInvalidConfig listing the known ones.
  PipelineSchedule generate(const std::string& name, const ScheduleSpec& spec) const;

 private:
  std::map<std::string, ScheduleGenerator> generators_;
};

// Megatron's choice when --pipeline-schedule is not given: interleaved-1f1b with virtual
// stages, else 1f1b.
std::string default_schedule_name(int num_chunks);

}  // namespace shardlm::parallel
