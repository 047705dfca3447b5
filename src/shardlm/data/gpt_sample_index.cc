#include "shardlm/data/gpt_sample_index.h"

#include <cmath>
#include <numeric>
#include <string>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/data/numpy_random_state.h"

namespace shardlm::data {
namespace {

// E copies of the documents, epoch-major, shuffled with one call (Megatron's
// _build_document_index with separate_final_epoch=False).
void append_shuffled_epochs(DocumentRange documents, int64_t num_epochs, NumpyRandomState& rs,
                            std::vector<int32_t>& document_index) {
  const size_t start = document_index.size();
  for (int64_t e = 0; e < num_epochs; ++e) {
    for (int64_t d = documents.begin; d < documents.end; ++d) {
      document_index.push_back(static_cast<int32_t>(d));
    }
  }
  rs.shuffle(std::span(document_index).subspan(start));
}

// helpers.cpp build_sample_idx.
std::vector<int64_t> build_sample_rows(std::span<const int32_t> sequence_lengths,
                                       std::span<const int32_t> document_index, int64_t seq_length,
                                       int64_t num_epochs, int64_t tokens_per_epoch,
                                       const GptSampleIndexOptions& options) {
  const int64_t extra = options.add_extra_token_to_sequence ? 1 : 0;
  int64_t num_samples;
  if (options.drop_last_partial_sequence) {
    num_samples = (num_epochs * tokens_per_epoch - extra) / seq_length;
  } else {
    num_samples =
        static_cast<int64_t>(std::ceil(static_cast<float>(num_epochs * tokens_per_epoch - extra) /
                                       static_cast<float>(seq_length)));
  }
  std::vector<int64_t> rows(2 * (num_samples + 1));
  int64_t row = 0;
  int64_t doc_offset = 0;
  rows[0] = 0;
  rows[1] = 0;
  const auto last_row = static_cast<int64_t>(document_index.size()) - 1;
  for (int64_t sample = 1; sample <= num_samples; ++sample) {
    int64_t remaining = seq_length + extra;
    while (remaining != 0) {
      const int64_t doc_length = sequence_lengths[document_index[row]] - doc_offset;
      remaining -= doc_length;
      if (remaining <= 0) {
        doc_offset += remaining + doc_length - extra;
        remaining = 0;
      } else {
        if (row == last_row) {
          SHARDLM_CHECK_EQ(sample, num_samples);
          doc_offset = sequence_lengths[document_index[row]] - extra;
          break;
        }
        ++row;
        doc_offset = 0;
      }
    }
    rows[2 * sample] = row;
    rows[2 * sample + 1] = doc_offset;
  }
  return rows;
}

void append_shuffled_range(int64_t begin, int64_t end, NumpyRandomState& rs,
                           std::vector<int64_t>& out) {
  const size_t start = out.size();
  for (int64_t i = begin; i < end; ++i) out.push_back(i);
  rs.shuffle(std::span(out).subspan(start));
}

}  // namespace

GptEpochPlan plan_gpt_epochs(std::span<const int32_t> sequence_lengths, DocumentRange documents,
                             std::optional<int64_t> num_samples, int64_t seq_length,
                             bool add_extra_token_to_sequence) {
  if (seq_length < 2) {
    throw Error(ErrorKind::kInvalidConfig,
                "--seq-length " + std::to_string(seq_length) + " must be at least 2");
  }
  if (documents.begin < 0 || documents.end < documents.begin ||
      documents.end > static_cast<int64_t>(sequence_lengths.size())) {
    throw Error(ErrorKind::kInvalidArgument,
                "document range [" + std::to_string(documents.begin) + ", " +
                    std::to_string(documents.end) + ") is outside the dataset's " +
                    std::to_string(sequence_lengths.size()) + " documents");
  }
  const int64_t extra = add_extra_token_to_sequence ? 1 : 0;
  GptEpochPlan plan;
  for (int64_t d = documents.begin; d < documents.end; ++d) {
    plan.num_tokens_per_epoch += sequence_lengths[d];
  }
  if (plan.num_tokens_per_epoch <= extra) {
    if (num_samples.value_or(0) == 0) return plan;  // an empty dataset
    throw Error(ErrorKind::kInvalidConfig,
                std::to_string(*num_samples) + " samples were requested from documents [" +
                    std::to_string(documents.begin) + ", " + std::to_string(documents.end) +
                    "), which hold " + std::to_string(plan.num_tokens_per_epoch) +
                    " tokens; give this split a larger share with --split, or request no "
                    "samples from it");
  }

  // Megatron's _get_num_epochs.
  plan.num_epochs = 1;
  if (num_samples) {
    const int64_t requested = *num_samples * seq_length + extra;
    for (int64_t tokens = plan.num_tokens_per_epoch; tokens < requested;
         tokens += plan.num_tokens_per_epoch) {
      ++plan.num_epochs;
    }
  }
  if (plan.num_epochs > 1) {
    plan.num_samples_sans_final_epoch =
        ((plan.num_epochs - 1) * plan.num_tokens_per_epoch - extra) / seq_length;
    const int64_t from_final_epoch = *num_samples - plan.num_samples_sans_final_epoch;
    const int64_t per_epoch = (plan.num_tokens_per_epoch - extra) / seq_length;
    SHARDLM_CHECK_GE(from_final_epoch, 0);
    SHARDLM_CHECK_LE(from_final_epoch, per_epoch + 1);
    // int(0.80 * per_epoch) in Python: truncation of the double product.
    const auto threshold = static_cast<int64_t>(0.80 * static_cast<double>(per_epoch));
    plan.separate_final_epoch = from_final_epoch < threshold;
  }
  return plan;
}

GptSampleIndex build_gpt_sample_index(std::span<const int32_t> sequence_lengths,
                                      DocumentRange documents, std::optional<int64_t> num_samples,
                                      int64_t seq_length, uint32_t seed,
                                      const GptSampleIndexOptions& options) {
  GptSampleIndex index;
  static_cast<GptEpochPlan&>(index) = plan_gpt_epochs(
      sequence_lengths, documents, num_samples, seq_length, options.add_extra_token_to_sequence);
  if (index.num_epochs == 0) return index;

  NumpyRandomState rs(seed);
  if (index.separate_final_epoch) {
    append_shuffled_epochs(documents, index.num_epochs - 1, rs, index.document_index);
    append_shuffled_epochs(documents, 1, rs, index.document_index);
  } else {
    append_shuffled_epochs(documents, index.num_epochs, rs, index.document_index);
  }
  index.sample_index = build_sample_rows(sequence_lengths, index.document_index, seq_length,
                                         index.num_epochs, index.num_tokens_per_epoch, options);
  const int64_t total = static_cast<int64_t>(index.sample_index.size() / 2) - 1;
  if (index.separate_final_epoch) {
    append_shuffled_range(0, index.num_samples_sans_final_epoch, rs, index.shuffle_index);
    append_shuffled_range(index.num_samples_sans_final_epoch, total, rs, index.shuffle_index);
  } else {
    append_shuffled_range(0, total, rs, index.shuffle_index);
  }
  return index;
}

}  // namespace shardlm::data
