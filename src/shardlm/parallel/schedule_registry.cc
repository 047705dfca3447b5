// ScheduleRegistry: --pipeline-schedule name -> generator.
#include "shardlm/parallel/schedule_registry.h"

#include "shardlm/base/error.h"

namespace shardlm::parallel {

ScheduleRegistry ScheduleRegistry::builtin() {
  ScheduleRegistry r;
  r.add("all-forward-all-backward", generate_all_forward_all_backward);
  r.add("1f1b", generate_1f1b);
  r.add("interleaved-1f1b", generate_interleaved_1f1b);
  return r;
}

void ScheduleRegistry::add(const std::string& name, ScheduleGenerator generator) {
  if (name.empty() || !generator) {
    throw Error(ErrorKind::kInvalidArgument,
                "ScheduleRegistry::add: a schedule needs a non-empty name and a generator");
  }
  if (!generators_.emplace(name, std::move(generator)).second) {
    throw Error(ErrorKind::kInvalidArgument,
                "ScheduleRegistry::add: a schedule named '" + name + "' is already registered");
  }
}

std::vector<std::string> ScheduleRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, gen] : generators_) out.push_back(name);
  return out;
}

PipelineSchedule ScheduleRegistry::generate(const std::string& name,
                                            const ScheduleSpec& spec) const {
  auto it = generators_.find(name);
  if (it == generators_.end()) {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    throw Error(ErrorKind::kInvalidConfig,
                "--pipeline-schedule '" + name + "' is not a known schedule; choose one of: " +
                    known);
  }
  return it->second(spec);
}

std::string default_schedule_name(int num_chunks) {
  return num_chunks > 1 ? "interleaved-1f1b" : "1f1b";
}

}  // namespace shardlm::parallel
