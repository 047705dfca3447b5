#include "shardlm/data/dataset_split.h"

#include <cmath>
#include <vector>

#include "shardlm/base/error.h"

namespace shardlm::data {

std::array<SplitBookends, 3> parse_split_matrix(const std::string& split) {
  // re.findall(r"[.0-9]+", split)
  std::vector<double> weights;
  for (size_t pos = 0; pos < split.size();) {
    const size_t start = split.find_first_of(".0123456789", pos);
    if (start == std::string::npos) break;
    size_t end = split.find_first_not_of(".0123456789", start);
    if (end == std::string::npos) end = split.size();
    const std::string number = split.substr(start, end - start);
    try {
      size_t used = 0;
      weights.push_back(std::stod(number, &used));
      if (used != number.size()) throw std::invalid_argument(number);
    } catch (const std::exception&) {
      throw Error(ErrorKind::kInvalidConfig,
                  "--split '" + split + "': '" + number + "' is not a number");
    }
    pos = end;
  }
  if (weights.size() > 3) {
    throw Error(ErrorKind::kInvalidConfig,
                "--split '" + split + "' has " + std::to_string(weights.size()) +
                    " parts; give at most 3 (train,valid,test), e.g. 969,30,1");
  }
  weights.resize(3, 0.0);
  double sum = 0;  // Python's sum(): left to right from 0
  for (double w : weights) sum += w;
  if (!(sum > 0)) {
    throw Error(ErrorKind::kInvalidConfig,
                "--split '" + split + "' gives no data to any split; use e.g. 969,30,1");
  }
  std::array<SplitBookends, 3> matrix;
  double begin = 0;
  for (int i = 0; i < 3; ++i) {
    const double end = begin + weights[i] / sum;
    matrix[i] = {begin, end};
    begin = end;
  }
  return matrix;
}

DocumentRange split_document_range(const SplitBookends& bookends, int64_t num_documents) {
  const auto n = static_cast<double>(num_documents);
  // std::nearbyint rounds half to even in the default rounding mode, like Python's round().
  return {static_cast<int64_t>(std::nearbyint(bookends.first * n)),
          static_cast<int64_t>(std::nearbyint(bookends.second * n))};
}

}  // namespace shardlm::data
