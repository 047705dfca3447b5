#include "shardlm/model/recompute.h"

#include <algorithm>
#include <utility>

#include "shardlm/base/error.h"

namespace shardlm::model {

void RecomputeConfig::validate(int64_t model_layers) const {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::kInvalidConfig, what); };
  if (!granularity.empty() && granularity != "selective" && granularity != "full")
    bad("--recompute-granularity '" + granularity + "' is not one of selective, full");
  if (!method.empty() && method != "uniform" && method != "block")
    bad("--recompute-method '" + method + "' is not one of uniform, block");
  if (num_layers < 0)
    bad("--recompute-num-layers must be positive, got " + std::to_string(num_layers));
  if (full() && method.empty())
    bad("--recompute-granularity full needs --recompute-method uniform (chunks of "
        "--recompute-num-layers layers) or block (the first --recompute-num-layers layers)");
  if (!full() && !method.empty())
    bad("--recompute-method " + method + " applies to --recompute-granularity full only" +
        (granularity.empty() ? std::string(" (add --recompute-granularity full)")
                             : std::string(" (selective recomputes every layer's attention)")));
  if (!full() && num_layers > 0)
    bad("--recompute-num-layers applies to --recompute-granularity full only");
  if (full() && layers_per_unit() > model_layers)
    bad("--recompute-num-layers " + std::to_string(layers_per_unit()) +
        " exceeds the model's " + std::to_string(model_layers) + " layers (--num-layers)");
}

bool RecomputeConfig::recomputes_layer(int64_t l) const {
  if (!full()) return false;
  return method == "uniform" || l < layers_per_unit();
}

std::pair<int64_t, int64_t> RecomputeConfig::chunk_of(int64_t l, int64_t model_layers) const {
  if (method == "block") return {l, l + 1};
  const int64_t n = layers_per_unit(), begin = l / n * n;
  return {begin, std::min(begin + n, model_layers)};
}

int64_t RecomputeConfig::slots() const {
  if (!full()) return 0;
  return method == "block" ? 1 : layers_per_unit();
}

}  // namespace shardlm::model
