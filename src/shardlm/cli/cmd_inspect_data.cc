// `shardlm inspect-data`: print the sample windows the trainer would draw, one JSON line each,
// so a data setup can be checked against Megatron (same --data-path/--split/--seq-length/--seed
// semantics as `shardlm train`, built with data::build_gpt_datasets).
//
//   shardlm inspect-data --data-path data/corpus_text_document --split 969,30,1
//       --seq-length 2048 --seed 1234 --dataset train --num-samples 4 --start 100
//   {"index": 100, "tokens": [... 2049 ids ...]}
//
// The split is built for --split-samples samples (default start + num-samples); Megatron's
// sample order depends on that count (number of epochs, separate final epoch), so to see the
// order of a training run pass its train_iters * global_batch_size. Other splits get 0.
// --decode adds "text" (needs a tokenizer: --tokenizer-type and its files).
// --model-type bert prints BERT's masked-LM samples instead (data::build_bert_datasets, the
// WordPiece tokenizer required): tokens, token types, labels (-1: not masked), the real length
// and the sentence-order label; --mask-prob / --short-seq-prob / --bert-no-binary-head as in
// `shardlm train`.
// --model-type t5 prints T5's span-corruption samples (data::build_t5_datasets; the WordPiece
// tokenizer with --vocab-extra-ids, e.g. 100, for the sentinels): encoder, decoder and labels
// up to their real lengths, and with --decode each detokenised. --encoder-seq-length is
// Megatron's alias of --seq-length (pass one); --decoder-seq-length is required.
//
//   shardlm inspect-data --model-type t5 --data-path data/wiki_text_sentence
//       --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt --vocab-extra-ids 100
//       --encoder-seq-length 512 --decoder-seq-length 128 --num-samples 2 --decode
//   {"index": 0, "encoder": [...], "decoder": [...], "labels": [...], "encoder_length": 498,
//    "decoder_length": 101, "encoder_text": "... <extra_id_0> ...", ...}
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/data/bert_dataset_builder.h"
#include "shardlm/data/gpt_dataset_builder.h"
#include "shardlm/data/t5_dataset_builder.h"
#include "shardlm/data/tokenizer/tokenizer_factory.h"

namespace shardlm::cli {
namespace {

struct InspectFlags {
  data::GptDataConfig data;
  std::string dataset = "train";
  int64_t num_samples = 1;
  int64_t start = 0;
  std::optional<int64_t> split_samples;
  std::string data_cache_path;
  data::TokenizerOptions tokenizer;
  int64_t vocab_size = 786;
  bool decode = false;
  std::string model_type = "gpt";
  double mask_prob = 0.15, short_seq_prob = 0.1;
  bool bert_no_binary_head = false;
  int64_t encoder_seq_length = 0;  // T5: Megatron's alias of --seq-length
  int64_t decoder_seq_length = 0;  // T5
};

std::string json_ints(std::span<const int32_t> v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

std::string json_text(const data::Tokenizer& tokenizer, std::span<const int32_t> ids) {
  const nlohmann::json text = tokenizer.decode(ids);
  return text.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void check_range(const InspectFlags& f, int64_t size) {
  if (f.start + f.num_samples > size) {
    throw Error(ErrorKind::kInvalidConfig,
                "--start " + std::to_string(f.start) + " + --num-samples " +
                    std::to_string(f.num_samples) + " exceeds the " + f.dataset + " split's " +
                    std::to_string(size) + " samples");
  }
}

// BERT and T5 read one corpus with the WordPiece tokenizer (its special ids build the samples).
std::shared_ptr<const data::Tokenizer> masked_lm_tokenizer(const InspectFlags& f,
                                                            const std::string& extra_flags) {
  if (f.tokenizer.type.empty())
    throw Error(ErrorKind::kInvalidConfig,
                "--model-type " + f.model_type +
                    " needs the WordPiece tokenizer (its special ids build the samples): pass "
                    "--tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt" +
                    extra_flags);
  if (!f.data.train_data_path.empty() || !f.data.valid_data_path.empty() ||
      !f.data.test_data_path.empty())
    throw Error(ErrorKind::kInvalidConfig, "--model-type " + f.model_type +
                                               " reads one --data-path (per-split paths are "
                                               "GPT's)");
  return data::make_tokenizer(f.tokenizer);
}

// The split's source out of train/valid/test, checked to hold the printed range.
template <typename Sets>
const auto& chosen_split(const InspectFlags& f, const Sets& sets, int split) {
  const auto& source = split == 0 ? sets.train : split == 1 ? sets.valid : sets.test;
  if (source == nullptr || source->size() == 0)
    throw Error(ErrorKind::kInvalidConfig,
                "the " + f.dataset + " split is empty with --split " + f.data.split);
  check_range(f, source->size());
  return *source;
}

// BERT's samples of one split, requested samples in slot `split` (the others 0).
void print_bert_samples(const InspectFlags& f, int split, int64_t requested) {
  const std::shared_ptr<const data::Tokenizer> tokenizer = masked_lm_tokenizer(f, "");
  data::BertDataConfig c;
  c.data_path = f.data.data_path;
  c.split = f.data.split;
  c.seq_length = f.data.seq_length;
  c.seed = f.data.seed;
  c.num_samples = {0, 0, 0};
  c.num_samples[static_cast<size_t>(split)] = requested;
  c.mask_prob = f.mask_prob;
  c.short_seq_prob = f.short_seq_prob;
  c.binary_head = !f.bert_no_binary_head;
  c.vocab = data::masked_lm_vocab_of(tokenizer);
  const data::BertDatasets sets = data::build_bert_datasets(c);
  const data::BertSampleSource& source = chosen_split(f, sets, split);
  const size_t S = static_cast<size_t>(source.seq_length());
  std::vector<int32_t> tokens(S), types(S), labels(S);
  std::vector<float> mask(S);
  for (int64_t k = f.start; k < f.start + f.num_samples; ++k) {
    data::BertSampleView view{tokens, types, labels, mask};
    source.get(k, view);
    std::string line = "{\"index\": " + std::to_string(k) + ", \"tokens\": " +
                       json_ints(tokens) + ", \"types\": " + json_ints(types) +
                       ", \"labels\": " + json_ints(labels) + ", \"length\": " +
                       std::to_string(view.length) + ", \"sentence_order\": " +
                       std::to_string(view.sentence_order);
    if (f.decode)
      line += ", \"text\": " +
              json_text(*tokenizer, std::span<const int32_t>(tokens.data(), view.length));
    std::cout << line << "}\n";
  }
  std::cout.flush();
}

// T5's samples of one split: encoder, decoder input and labels up to their real lengths (the
// rest is padding), and with --decode their text (sentinels print as <extra_id_i>).
void print_t5_samples(const InspectFlags& f, int split, int64_t requested) {
  if (f.decoder_seq_length <= 0)
    throw Error(ErrorKind::kInvalidConfig,
                "--model-type t5 needs --decoder-seq-length (the decoder's length, e.g. 128)");
  const std::shared_ptr<const data::Tokenizer> tokenizer =
      masked_lm_tokenizer(f, " --vocab-extra-ids 100");
  data::T5DataConfig c;
  c.data_path = f.data.data_path;
  c.split = f.data.split;
  c.encoder_seq_length = f.data.seq_length;
  c.decoder_seq_length = f.decoder_seq_length;
  c.seed = f.data.seed;
  c.num_samples = {0, 0, 0};
  c.num_samples[static_cast<size_t>(split)] = requested;
  c.mask_prob = f.mask_prob;
  c.short_seq_prob = f.short_seq_prob;
  c.vocab = data::masked_lm_vocab_of(tokenizer);
  const data::T5Datasets sets = data::build_t5_datasets(c);
  const data::T5SampleSource& source = chosen_split(f, sets, split);
  const auto te = static_cast<size_t>(source.encoder_seq_length());
  const auto td = static_cast<size_t>(source.decoder_seq_length());
  std::vector<int32_t> encoder(te), decoder(td), labels(td);
  std::vector<float> loss_mask(td);
  for (int64_t k = f.start; k < f.start + f.num_samples; ++k) {
    data::T5SampleView view{encoder, decoder, labels, loss_mask};
    source.get(k, view);
    const std::span<const int32_t> enc(encoder.data(), view.encoder_length);
    const std::span<const int32_t> dec(decoder.data(), view.decoder_length);
    const std::span<const int32_t> lab(labels.data(), view.decoder_length);
    std::string line = "{\"index\": " + std::to_string(k) + ", \"encoder\": " +
                       json_ints(enc) + ", \"decoder\": " + json_ints(dec) +
                       ", \"labels\": " + json_ints(lab) + ", \"encoder_length\": " +
                       std::to_string(view.encoder_length) + ", \"decoder_length\": " +
                       std::to_string(view.decoder_length);
    if (f.decode) {
      line += ", \"encoder_text\": " + json_text(*tokenizer, enc) +
              ", \"decoder_text\": " + json_text(*tokenizer, dec) +
              ", \"labels_text\": " + json_text(*tokenizer, lab);
    }
    std::cout << line << "}\n";
  }
  std::cout.flush();
}

void run_inspect(InspectFlags& f) {
  int split = -1;
  if (f.dataset == "train") split = 0;
  if (f.dataset == "valid") split = 1;
  if (f.dataset == "test") split = 2;
  if (split < 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "--dataset " + f.dataset + " is not one of train, valid, test");
  }
  // Megatron: --encoder-seq-length and --seq-length are aliases; exactly one is given.
  if (f.encoder_seq_length != 0) {
    if (f.data.seq_length != 0) {
      throw Error(ErrorKind::kInvalidConfig,
                  "--encoder-seq-length is an alias of --seq-length: pass only one");
    }
    f.data.seq_length = f.encoder_seq_length;
  }
  if (f.data.seq_length <= 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "--seq-length (or --encoder-seq-length) must be given and positive, got " +
                    std::to_string(f.data.seq_length));
  }
  if (f.num_samples < 0 || f.start < 0) {
    throw Error(ErrorKind::kInvalidConfig, "--num-samples and --start must not be negative");
  }
  if (f.data.data_path.empty() && f.data.train_data_path.empty() &&
      f.data.valid_data_path.empty() && f.data.test_data_path.empty()) {
    throw Error(ErrorKind::kInvalidConfig,
                "no data: pass --data-path (or --train-data-path/--valid-data-path/"
                "--test-data-path)");
  }
  const int64_t requested = f.split_samples.value_or(f.start + f.num_samples);
  if (requested < f.start + f.num_samples) {
    throw Error(ErrorKind::kInvalidConfig,
                "--split-samples " + std::to_string(requested) + " is less than --start + "
                "--num-samples = " + std::to_string(f.start + f.num_samples));
  }
  std::unique_ptr<data::Tokenizer> tokenizer;
  if (f.decode) {
    if (f.tokenizer.type.empty()) {
      throw Error(ErrorKind::kInvalidConfig,
                  "--decode needs a tokenizer: pass --tokenizer-type (and --vocab-file/"
                  "--merge-file or --tokenizer-model)");
    }
    f.tokenizer.vocab_size = f.vocab_size;
    tokenizer = data::make_tokenizer(f.tokenizer);
  }
  if (f.model_type != "gpt" && f.model_type != "bert" && f.model_type != "t5")
    throw Error(ErrorKind::kInvalidConfig,
                "--model-type " + f.model_type + " is not gpt, bert or t5");
  if (f.model_type == "bert") {
    print_bert_samples(f, split, requested);
    return;
  }
  if (f.model_type == "t5") {
    print_t5_samples(f, split, requested);
    return;
  }
  if (!f.data_cache_path.empty()) f.data.data_cache_path = f.data_cache_path;
  for (auto& n : f.data.num_samples) n = 0;
  f.data.num_samples[split] = requested;

  data::GptDatasets sets = data::build_gpt_datasets(f.data);
  const data::SampleSource* source =
      split == 0 ? sets.train.get() : split == 1 ? sets.valid.get() : sets.test.get();
  if (source == nullptr || source->size() == 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "the " + f.dataset + " split is empty with --split " + f.data.split);
  }
  check_range(f, source->size());
  const int64_t seq = source->seq_length();
  std::vector<int32_t> tokens(seq + 1);
  std::vector<float> mask(seq);
  for (int64_t k = f.start; k < f.start + f.num_samples; ++k) {
    source->get(k, tokens, mask);
    std::string line = "{\"index\": " + std::to_string(k) + ", \"tokens\": " + json_ints(tokens);
    if (tokenizer) line += ", \"text\": " + json_text(*tokenizer, tokens);
    line += "}\n";
    std::cout << line;
  }
  std::cout.flush();
}

}  // namespace

void register_inspect_data(CLI::App& app) {
  auto flags = std::make_shared<InspectFlags>();
  CLI::App* cmd = app.add_subcommand(
      "inspect-data", "Print the token windows of a dataset split as JSON lines");
  data::GptDataConfig& d = flags->data;
  const char* g = "data";
  cmd->add_option("--data-path", d.data_path, "One prefix, or weighted 'w1 p1 w2 p2 ...' blend")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_option("--train-data-path", d.train_data_path, "Train split blend")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_option("--valid-data-path", d.valid_data_path, "Valid split blend")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_option("--test-data-path", d.test_data_path, "Test split blend")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_option("--split", d.split, "Train/valid/test split weights, e.g. 969,30,1")->group(g);
  cmd->add_option("--seq-length", d.seq_length, "Sequence length (T5: the encoder's)")->group(g);
  cmd->add_option("--encoder-seq-length", flags->encoder_seq_length,
                  "T5: the encoder's sequence length (Megatron's alias of --seq-length)")
      ->group(g);
  cmd->add_option("--decoder-seq-length", flags->decoder_seq_length,
                  "T5: the decoder's sequence length")
      ->group(g);
  cmd->add_option("--seed", d.seed, "Random seed (Megatron's --seed)")->group(g);
  cmd->add_option("--data-cache-path", flags->data_cache_path,
                  "Where dataset index caches are written")
      ->group(g);
  const char* s = "selection";
  cmd->add_option("--dataset", flags->dataset, "Split to print: train, valid or test")
      ->group(s);
  cmd->add_option("--num-samples", flags->num_samples, "How many samples to print")->group(s);
  cmd->add_option("--start", flags->start, "First sample index")->group(s);
  cmd->add_option("--split-samples", flags->split_samples,
                  "Samples the split is built for (default start + num-samples); the sample "
                  "order depends on it, e.g. train_iters * global_batch_size for train")
      ->group(s);
  cmd->add_flag("--decode", flags->decode, "Add the decoded text (needs a tokenizer)")->group(s);
  const char* bert = "BERT / T5";
  cmd->add_option("--model-type", flags->model_type,
                  "gpt (token windows, the default), bert (masked-LM samples) or t5 "
                  "(span-corruption samples)")
      ->group(bert);
  cmd->add_option("--mask-prob", flags->mask_prob, "BERT / T5: masking probability (0.15)")
      ->group(bert);
  cmd->add_option("--short-seq-prob", flags->short_seq_prob,
                  "BERT / T5: probability of a shorter sample (0.1)")
      ->group(bert);
  cmd->add_flag("--bert-no-binary-head", flags->bert_no_binary_head,
                "BERT: no sentence-order pairs (one segment per sample)")
      ->group(bert);
  const char* tok = "tokenizer";
  cmd->add_option("--tokenizer-type", flags->tokenizer.type, "Tokenizer type")->group(tok);
  cmd->add_option("--vocab-file", flags->tokenizer.vocab_file, "Path to the vocab file")
      ->group(tok);
  cmd->add_option("--merge-file", flags->tokenizer.merge_file, "Path to the BPE merge file")
      ->group(tok);
  cmd->add_option("--tokenizer-model", flags->tokenizer.tokenizer_model,
                  "SentencePiece .model or tokenizer.json")
      ->group(tok);
  cmd->add_option("--vocab-size", flags->vocab_size, "Vocabulary size for NullTokenizer")
      ->group(tok);
  cmd->add_option("--vocab-extra-ids", flags->tokenizer.vocab_extra_ids,
                  "WordPiece: <extra_id_i> tokens appended (T5's sentinels; Megatron uses 100)")
      ->group(tok);
  cmd->callback([flags] { run_inspect(*flags); });
}

}  // namespace shardlm::cli
