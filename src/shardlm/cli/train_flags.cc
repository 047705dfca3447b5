#include "shardlm/cli/train_flags.h"

#include <algorithm>
#include <ostream>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <yaml-cpp/yaml.h>

#include <cstdlib>

#include "shardlm/base/error.h"

namespace shardlm::cli {

namespace {
// Number validators with plain messages ("must be positive, got 0") instead of CLI11's ranges.
CLI::Validator number_validator(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& value) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(value.c_str(), &end);
        if (value.empty() || end == nullptr || *end != '\0')
          return "expects a number, got '" + value + "'";
        if (v < 0 || (!allow_zero && v == 0))
          return std::string(allow_zero ? "must not be negative" : "must be positive") +
                 ", got " + value;
        return "";
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}
}  // namespace

void add_train_flags(CLI::App& cmd, train::TrainConfig& cfg) {
  model::TransformerConfig& m = cfg.model;
  train::OptimizerConfig& o = cfg.optimizer;
  train::LoggingConfig& l = cfg.logging;
  train::DataConfig& d = cfg.data;
  const CLI::Validator pos = number_validator(false);
  const CLI::Validator nonneg = number_validator(true);

  const char* g = "Model";
  cmd.add_option("--num-layers,--decoder-num-layers", m.num_layers,
                 "Number of transformer layers (T5: the decoder's; --decoder-num-layers is its "
                 "alias)")->group(g)->check(pos);
  cmd.add_option("--hidden-size", m.hidden_size, "Hidden size")->group(g)->check(pos);
  cmd.add_option("--num-attention-heads", m.num_attention_heads, "Attention heads")->group(g)->check(pos);
  cmd.add_option("--num-query-groups", m.num_query_groups,
                 "Query groups for grouped-query attention (default: heads)")->group(g)->check(pos);
  cmd.add_flag("--group-query-attention", cfg.group_query_attention,
               "Use grouped-query attention (with --num-query-groups)")->group(g);
  cmd.add_option("--kv-channels", m.kv_channels, "Head dimension (default hidden/heads)")->group(g)->check(pos);
  cmd.add_option("--ffn-hidden-size", m.ffn_hidden_size, "MLP hidden size (default 4*hidden)")->group(g)->check(pos);
  cmd.add_option("--attention-backend", cfg.attention_backend,
                 "Attention kernels on CUDA: auto (cuDNN fused where it applies, else ShardLM's "
                 "flash kernels), fused (cuDNN only), flash (ShardLM's kernels only; with "
                 "attention dropout, the only choice that keeps ShardLM's layout-independent masks)")
      ->group(g);
  cmd.add_option("--recompute-granularity", cfg.recompute.granularity,
                 "Activation recomputation: selective (core attention) or full (whole layers)")
      ->group(g);
  cmd.add_option("--recompute-method", cfg.recompute.method,
                 "With full: uniform (chunks of --recompute-num-layers) or block (first N layers)")
      ->group(g);
  cmd.add_option("--recompute-num-layers", cfg.recompute.num_layers,
                 "With full: layers per recomputed chunk (uniform) or recomputed layers (block)")
      ->group(g);
  cmd.add_flag("--recompute-activations",
               [&cfg](int64_t) { cfg.recompute.granularity = "selective"; },
               "Megatron's shorthand for --recompute-granularity selective")
      ->group(g);
  cmd.add_flag("--no-recompute-norm-activation",
               [&cfg](int64_t) { cfg.recompute.norm_activation = false; },
               "Save the norm and GELU/SwiGLU outputs instead of recomputing them in backward "
               "(faster; 2 x N x C + N x F/TP more activation memory per layer)")
      ->group(g);
  cmd.add_option_function<std::string>(
         "--model-type",
         [&m](const std::string& v) {
           if (v == "gpt") m.family = model::ModelFamily::kGPT;
           else if (v == "bert") m.family = model::ModelFamily::kBert;
           else if (v == "t5") m.family = model::ModelFamily::kT5;
           else throw CLI::ValidationError("--model-type", "'" + v + "' is not gpt, bert or t5");
         },
         "gpt (pretrain_gpt: causal LM, the default), bert (pretrain_bert: bidirectional, "
         "masked LM + sentence order) or t5 (pretrain_t5: encoder-decoder, span corruption); "
         "BERT and T5 read data from preprocess --split-sentences")->group(g);
  cmd.add_option("--decoder-seq-length", m.decoder_seq_length,
                 "T5: the decoder's sequence length (--seq-length is the encoder's)")
      ->group(g)->check(pos);
  cmd.add_option("--encoder-num-layers", m.encoder_num_layers,
                 "T5: encoder layers (default --num-layers, which counts the decoder's)")
      ->group(g)->check(pos);
  cmd.add_flag("--bert-no-binary-head", [&m](int64_t) { m.bert_binary_head = false; },
               "BERT without the pooler and sentence-order (binary) head, nor token types")->group(g);
  cmd.add_option("--seq-length,--encoder-seq-length", m.seq_length,
                 "Sequence length (T5: the encoder's; --encoder-seq-length is its alias)")
      ->group(g)->check(pos);
  cmd.add_option("--max-position-embeddings", m.max_position_embeddings,
                 "Learned position table size (default seq-length)")->group(g)->check(pos);
  cmd.add_option("--vocab-size", m.vocab_size, "Vocabulary size (mock data / NullTokenizer)")->group(g)->check(pos);
  cmd.add_option("--make-vocab-size-divisible-by", m.make_vocab_size_divisible_by,
                 "Pad the vocabulary to a multiple of this")->group(g)->check(pos);
  cmd.add_flag("--untie-embeddings-and-output-weights", m.untie_embeddings_and_output_weights,
               "Separate output layer instead of the tied word embedding")->group(g);
  cmd.add_flag("--disable-bias-linear", [&m](int64_t) { m.add_bias_linear = false; },
               "No biases in linear layers")->group(g);
  cmd.add_flag("--swiglu", m.swiglu, "SwiGLU MLP instead of GELU")->group(g);
  cmd.add_option_function<std::string>(
         "--normalization",
         [&m](const std::string& v) {
           if (v == "LayerNorm") m.normalization = model::Normalization::kLayerNorm;
           else if (v == "RMSNorm") m.normalization = model::Normalization::kRMSNorm;
           else throw CLI::ValidationError("--normalization", "'" + v + "' is not LayerNorm or RMSNorm");
         },
         "LayerNorm or RMSNorm")->group(g);
  cmd.add_option("--norm-epsilon", m.norm_epsilon, "Epsilon of the norms")->group(g)->check(pos);
  cmd.add_option_function<std::string>(
         "--position-embedding-type",
         [&m](const std::string& v) {
           if (v == "learned_absolute") m.position_embedding = model::PositionEmbedding::kLearnedAbsolute;
           else if (v == "none") m.position_embedding = model::PositionEmbedding::kNone;
           else if (v == "rope") m.position_embedding = model::PositionEmbedding::kRope;
           else throw CLI::ValidationError("--position-embedding-type",
                                           "'" + v + "' is not supported (learned_absolute, rope, none)");
         },
         "learned_absolute, rope (rotary, no position table) or none")->group(g);
  cmd.add_option("--rotary-base", m.rotary_base, "RoPE base: inv_freq_i = base^(-2i/rotary_dim) (10000)")->group(g)->check(pos);
  cmd.add_option("--rotary-percent", m.rotary_percent,
                 "Fraction of each head's dims RoPE rotates (1.0; rotary_dim = int(kv_channels * p))")->group(g)->check(pos);
  cmd.add_flag("--rotary-interleaved", m.rotary_interleaved,
               "RoPE on pairs (2i, 2i+1) instead of rotate-half (i, i+dim/2) as Hugging Face Llama")->group(g);
  cmd.add_flag("--use-rope-scaling", m.use_rope_scaling,
               "Llama 3.x long-context RoPE: low frequencies divided by --rope-scaling-factor, middle ones blended")->group(g);
  cmd.add_option("--rope-scaling-factor", m.rope_scaling_factor,
                 "--use-rope-scaling's factor (8; Llama 3.2: 32)")->group(g)->check(pos);
  cmd.add_option("--rope-scaling-low-freq-factor", m.rope_scaling_low_freq_factor,
                 "--use-rope-scaling: wavelengths above original/this are scaled (1)")->group(g)->check(pos);
  cmd.add_option("--rope-scaling-high-freq-factor", m.rope_scaling_high_freq_factor,
                 "--use-rope-scaling: wavelengths below original/this are kept (4)")->group(g)->check(pos);
  cmd.add_option("--rope-scaling-original-max-position-embeddings", m.rope_scaling_original_max_positions,
                 "--use-rope-scaling: the context the model was first trained for (8192)")->group(g)->check(pos);
  cmd.add_option("--rotary-seq-len-interpolation-factor", m.rotary_seq_len_interpolation_factor,
                 "Linear RoPE position interpolation: positions divided by this (1 = none)")->group(g)->check(pos);
  cmd.add_flag("--no-rope-fusion", [](int64_t) {},
               "Accepted for Megatron compatibility (RoPE is one separate q+k kernel here)")->group(g);
  cmd.add_flag("--attention-softmax-in-fp32", [](int64_t) {},
               "Accepted for Megatron compatibility: attention softmax is always computed in fp32")->group(g);
  // Mixture of experts (Megatron's MoE flags; dropless top-k routing, layers/moe_mlp.h).
  cmd.add_option("--num-experts", m.num_experts,
                 "Experts per MoE layer (0: dense MLPs); one MoE layer every --moe-layer-freq")->group(g)->check(nonneg);
  cmd.add_option("--moe-router-topk", m.moe_router_topk, "Experts each token is routed to (2)")->group(g)->check(pos);
  cmd.add_option("--moe-ffn-hidden-size", m.moe_ffn_hidden_size,
                 "Hidden size of each expert's MLP (default --ffn-hidden-size)")->group(g)->check(pos);
  cmd.add_option("--moe-layer-freq", m.moe_layer_freq,
                 "One MoE layer every N layers, from layer 0 (1: every layer)")->group(g)->check(pos);
  cmd.add_option("--moe-aux-loss-coeff", m.moe_aux_loss_coeff,
                 "Weight of the switch load-balancing loss (0: none)")->group(g)->check(nonneg);
  cmd.add_option("--moe-router-topk-scaling-factor", m.moe_router_topk_scaling_factor,
                 "Multiplies the routing weights of the top-k experts (default 1)")
      ->group(g)->check(pos);
  cmd.add_option("--moe-z-loss-coeff", m.moe_z_loss_coeff,
                 "Weight of the router z-loss, mean over tokens of logsumexp(logits)^2 (0: none)")
      ->group(g)->check(nonneg);
  cmd.add_flag("--moe-router-pre-softmax", m.moe_router_pre_softmax,
               "Top-k of the softmax over all experts (default: softmax over the top-k logits)")->group(g);
  cmd.add_option_function<std::string>(
         "--moe-router-load-balancing-type",
         [&m](const std::string& v) {
           m.moe_aux_loss_enabled = v == "aux_loss" || v == "seq_aux_loss";
           m.moe_seq_aux_loss = v == "seq_aux_loss";
           if (v != "aux_loss" && v != "seq_aux_loss" && v != "none")
             throw CLI::ValidationError("--moe-router-load-balancing-type",
                                        "'" + v + "' is not implemented (aux_loss, "
                                        "seq_aux_loss, none; sinkhorn is not available)");
         },
         "aux_loss (switch loss weighted by --moe-aux-loss-coeff), seq_aux_loss (the same per "
         "sequence, averaged) or none (coefficient ignored)")->group(g);
  cmd.add_option_function<std::string>(
         "--moe-token-dispatcher-type",
         [](const std::string& v) {
           if (v != "allgather" && v != "alltoall")
             throw CLI::ValidationError("--moe-token-dispatcher-type",
                                        "'" + v + "' is not available (allgather, alltoall)");
         },
         "allgather or alltoall: both move tokens to their experts' expert-parallel rank by "
         "all-to-all (the same numbers)")->group(g);
  cmd.add_flag("--moe-grouped-gemm", [](int64_t) {},
               "Accepted for Megatron compatibility: each expert runs its own GEMM pair (same "
               "numbers as a grouped GEMM)")->group(g);
  cmd.add_option("--moe-expert-capacity-factor", m.moe_expert_capacity_factor,
                 "Token dropping: each expert takes at most ceil(tokens x k / E x factor) rows of "
                 "a micro-batch (default: dropless)")->group(g)->check(pos);
  cmd.add_option_function<std::string>(
         "--moe-token-drop-policy",
         [&m](const std::string& v) {
           if (v != "probs" && v != "position")
             throw CLI::ValidationError("--moe-token-drop-policy",
                                        "'" + v + "' is not a policy (probs, position)");
           m.moe_token_drop_by_position = v == "position";
         },
         "With a capacity factor: drop the rows of lowest router weight (probs, default) or "
         "the latest tokens (position)")->group(g);
  cmd.add_flag_function(
         "--moe-pad-expert-input-to-capacity",
         [](int64_t) {
           throw CLI::ValidationError("--moe-pad-expert-input-to-capacity",
                                      "padding experts to their capacity is not implemented "
                                      "(each expert runs exactly the rows it keeps, with the same "
                                      "numbers); drop the flag");
         },
         "Not available: experts run the rows they keep")->group(g);
  cmd.add_option("--init-method-std", m.init_method_std, "Std of the normal weight init")->group(g)->check(pos);
  cmd.add_option("--hidden-dropout", m.hidden_dropout, "Dropout after attention/MLP and embedding")->group(g)->check(nonneg);
  cmd.add_option("--attention-dropout", m.attention_dropout, "Dropout on attention probabilities")->group(g)->check(nonneg);

  g = "Training";
  cmd.add_option("--micro-batch-size", cfg.micro_batch_size, "Samples per micro-batch")->group(g)->check(pos);
  cmd.add_option("--global-batch-size", cfg.global_batch_size,
                 "Samples per iteration (gradient accumulation over micro-batches)")->group(g)->check(pos);
  cmd.add_option("--train-iters", cfg.train_iters, "Iterations to train")->group(g)->check(pos);
  cmd.add_option("--seed", cfg.seed, "Random seed (init, dropout, data order)")->group(g);
  cmd.add_option("--device", cfg.device, "auto, cpu or cuda")->group(g);
  cmd.add_option("--compute-dtype", cfg.compute_dtype, "CPU compute precision: fp32 or fp64")->group(g);
  cmd.add_option("--main-params-dtype", cfg.main_params_dtype,
                 "master weights, main gradients and optimizer state: fp32 (default) or fp64 "
                 "(CPU with --compute-dtype fp32: mixed precision, the --bf16 code paths on a "
                 "CPU)")
      ->group(g);
  cmd.add_flag("--bf16", cfg.bf16,
               "Mixed precision: bf16 compute, fp32 master weights and gradients (CUDA)")->group(g);
  cmd.add_flag("--fp16", cfg.fp16,
               "Mixed precision: fp16 compute with loss scaling, fp32 master weights (CUDA)")
      ->group(g);
  cmd.add_flag("--no-gradient-accumulation-fusion",
               [&cfg](int64_t) { cfg.gradient_accumulation_fusion = false; },
               "--bf16/--fp16: linear weight and word-embedding gradients go through 16-bit "
               "gradients folded into the fp32 main gradients, instead of being written there "
               "by their backward")
      ->group(g);
  model::TransformerConfig& mp = cfg.model;
  cmd.add_option_function<std::string>(
         "--fp8-format",
         [&mp](const std::string& v) {
           if (v == "hybrid") mp.fp8.format = model::Fp8Format::kHybrid;
           else if (v == "e4m3") mp.fp8.format = model::Fp8Format::kE4M3;
           else throw CLI::ValidationError("--fp8-format", "'" + v + "' is not e4m3 or hybrid");
         },
         "fp8 GEMMs in the transformer layers' linears: hybrid (E4M3 activations and weights, "
         "E5M2 gradients) or e4m3 (all E4M3); with --bf16 or --fp16 on the GPU")->group(g);
  cmd.add_option_function<std::string>(
         "--fp8-recipe",
         [](const std::string& v) {
           if (v == "tensorwise") return;
           throw CLI::ValidationError(
               "--fp8-recipe",
               "'" + v + "' is not available: ShardLM scales fp8 per tensor from each tensor's "
               "current amax (tensorwise), which needs no amax history; use --fp8-recipe "
               "tensorwise or leave the flag out");
         },
         "tensorwise (the default and only recipe: per-tensor scales from the current amax)")
      ->group(g);
  cmd.add_option("--fp8-margin", mp.fp8.margin,
                 "fp8 scales are divided by 2^margin (headroom; default 0)")->group(g)->check(CLI::Range(0, 64));
  cmd.add_flag("--first-last-layers-bf16", mp.fp8_first_last_layers_bf16,
               "With --fp8-format: keep the first and last layers in 16-bit")->group(g);
  cmd.add_option("--num-layers-at-start-in-bf16", mp.fp8_layers_at_start_in_bf16,
                 "With --first-last-layers-bf16: leading layers kept in 16-bit (default 1)")->group(g)->check(CLI::NonNegativeNumber);
  cmd.add_option("--num-layers-at-end-in-bf16", mp.fp8_layers_at_end_in_bf16,
                 "With --first-last-layers-bf16: trailing layers kept in 16-bit (default 1)")->group(g)->check(CLI::NonNegativeNumber);
  // Delayed scaling's flags: validated, then only noted (note_ignored_flags); nothing stores them.
  cmd.add_option_function<int64_t>("--fp8-amax-history-len", [](int64_t) {},
                                   "Delayed scaling's amax history: accepted for Megatron "
                                   "scripts, no effect (tensorwise scaling keeps no history)")
      ->group(g)->check(pos);
  cmd.add_option_function<std::string>(
         "--fp8-amax-compute-algo",
         [](const std::string& v) {
           if (v != "max" && v != "most_recent")
             throw CLI::ValidationError("--fp8-amax-compute-algo", "'" + v + "' is not max or most_recent");
         },
         "Delayed scaling's amax choice: accepted for Megatron scripts, no effect (tensorwise "
         "scaling uses the current amax)")->group(g);
  optim::LossScalerConfig& ls = cfg.loss_scaler;
  cmd.add_option("--loss-scale", ls.loss_scale,
                 "--fp16: constant loss scale (omit for dynamic scaling)")->group(g);
  cmd.add_option("--initial-loss-scale", ls.initial_loss_scale,
                 "--fp16 dynamic scaling: starting scale (2^32)")->group(g);
  cmd.add_option("--min-loss-scale", ls.min_loss_scale,
                 "--fp16 dynamic scaling: lowest scale (1.0)")->group(g);
  cmd.add_option("--loss-scale-window", ls.loss_scale_window,
                 "--fp16 dynamic scaling: good steps before the scale doubles (1000)")->group(g);
  cmd.add_option("--hysteresis", ls.hysteresis,
                 "--fp16 dynamic scaling: overflows tolerated before the scale halves (2)")
      ->group(g);

  g = "Optimizer and learning rate";
  cmd.add_option("--lr", o.lr, "Peak learning rate")->group(g)->check(nonneg);
  cmd.add_option("--min-lr", o.min_lr, "Learning rate at the end of decay")->group(g)->check(nonneg);
  cmd.add_option("--lr-decay-style", o.lr_decay_style, "constant, linear or cosine")->group(g);
  cmd.add_option("--lr-warmup-iters", o.lr_warmup_iters, "Linear warmup iterations")->group(g)->check(nonneg);
  cmd.add_option("--lr-warmup-fraction", o.lr_warmup_fraction, "Warmup as a fraction of decay iterations")->group(g)->check(nonneg);
  cmd.add_option("--lr-decay-iters", o.lr_decay_iters, "Decay iterations (default train-iters)")->group(g)->check(pos);
  cmd.add_option("--weight-decay", o.weight_decay, "Decoupled weight decay (not on biases/norms)")->group(g)->check(nonneg);
  cmd.add_option("--adam-beta1", o.adam_beta1, "Adam beta1")->group(g);
  cmd.add_option("--adam-beta2", o.adam_beta2, "Adam beta2")->group(g);
  cmd.add_option("--adam-eps", o.adam_eps, "Adam epsilon")->group(g);
  cmd.add_option("--clip-grad", o.clip_grad, "Global gradient-norm clip (0 disables)")->group(g)->check(nonneg);

  g = "Distributed";
  train::ParallelConfig& p = cfg.parallel;
  cmd.add_option("--tensor-model-parallel-size", p.tensor_model_parallel_size,
                 "Tensor-parallel ranks (TP)")->group(g)->check(pos);
  cmd.add_option("--pipeline-model-parallel-size", p.pipeline_model_parallel_size,
                 "Pipeline stages (PP)")->group(g)->check(pos);
  cmd.add_option("--num-layers-per-virtual-pipeline-stage", p.num_layers_per_virtual_pipeline_stage,
                 "Layers per virtual stage: V = layers / (PP x N) chunks per rank (interleaved)")
      ->group(g)->check(pos);
  cmd.add_option("--num-virtual-stages-per-pipeline-rank", p.num_virtual_stages_per_pipeline_rank,
                 "Model chunks per pipeline rank (V; alternative to the flag above)")
      ->group(g)->check(pos);
  cmd.add_option("--decoder-first-pipeline-num-layers", p.decoder_first_pipeline_num_layers,
                 "Layers on the first pipeline stage (uneven stages)")->group(g)->check(pos);
  cmd.add_option("--decoder-last-pipeline-num-layers", p.decoder_last_pipeline_num_layers,
                 "Layers on the last pipeline stage (uneven stages)")->group(g)->check(pos);
  cmd.add_option("--pipeline-schedule", p.pipeline_schedule,
                 "1f1b, interleaved-1f1b (interleaved) or all-forward-all-backward (afab); "
                 "default 1f1b, interleaved with virtual stages")->group(g);
  cmd.add_option("--context-parallel-size", p.context_parallel_size,
                 "Context-parallel ranks: each holds 2 load-balanced chunks of every sequence")
      ->group(g)->check(pos);
  cmd.add_option("--cp-comm-type", p.cp_comm_type,
                 "Context-parallel attention communication: all_gather (K/V all-gathered) or "
                 "a2a (DeepSpeed-Ulysses: all-to-alls trade tokens for heads; query groups per "
                 "TP rank divisible by CP)")
      ->group(g);
  cmd.add_option("--expert-model-parallel-size", p.expert_model_parallel_size,
                 "Expert-parallel ranks: each holds num-experts / EP experts of every MoE "
                 "layer; divides the data-parallel x context-parallel size")->group(g)->check(pos);
  cmd.add_flag("--sequence-parallel", p.sequence_parallel,
               "Shard norms/dropout/residuals along the sequence across TP ranks")->group(g);
  cmd.add_flag("--use-distributed-optimizer", p.use_distributed_optimizer,
               "Shard optimizer state across data-parallel ranks (reduce-scatter + all-gather)")->group(g);
  cmd.add_flag("--overlap-grad-reduce", p.overlap_grad_reduce,
               "Reduce gradient buckets during backward")->group(g);
  cmd.add_flag("--overlap-param-gather", p.overlap_param_gather,
               "All-gather updated parameters while the next iteration starts")->group(g);
  cmd.add_option("--ddp-bucket-size", p.ddp_bucket_size,
                 "Elements per gradient bucket (default max(40M, 1M x DP))")->group(g)->check(pos);
  cmd.add_option("--distributed-timeout-minutes", p.distributed_timeout_minutes,
                 "Deadline of every collective; a dead or hung rank fails the job after it")->group(g)->check(pos);
  cmd.add_option("--distributed-backend", p.distributed_backend,
                 "nccl (GPU ranks, a GPU each) or gloo (collectives over host sockets, GPU "
                 "tensors staged through host memory; GPU ranks may share a GPU); CPU ranks "
                 "always use ShardLM's socket communicator")
      ->check(CLI::IsMember({"nccl", "gloo"}))
      ->group(g);

  g = "Data";
  cmd.add_flag("--mock-data", d.mock_data, "Synthetic learnable data (no files needed)")->group(g);
  cmd.add_option("--data-path", d.data_path, "[weight] prefix ... of preprocessed .bin/.idx corpora")->group(g);
  cmd.add_option("--split", d.split, "Train/valid/test split weights, e.g. 969,30,1")->group(g);
  cmd.add_option("--data-cache-path", d.data_cache_path, "Where dataset index caches are written")->group(g);
  cmd.add_option("--tokenizer-type", d.tokenizer_type, "GPT2BPETokenizer, BertWordPieceLowerCase, BertWordPieceCase, HuggingFaceTokenizer, SentencePieceTokenizer, NullTokenizer")->group(g);
  cmd.add_option("--vocab-file", d.vocab_file, "Tokenizer vocabulary file")->group(g);
  cmd.add_option("--merge-file", d.merge_file, "BPE merges file")->group(g);
  cmd.add_option("--tokenizer-model", d.tokenizer_model, "tokenizer.json or SentencePiece .model")->group(g);
  cmd.add_flag("--eod-mask-loss", d.eod_mask_loss, "Exclude end-of-document targets from the loss")->group(g);
  cmd.add_option("--vocab-extra-ids", d.vocab_extra_ids,
                 "T5: sentinel tokens <extra_id_i> added to the WordPiece vocabulary (Megatron's "
                 "T5 uses 100)")->group(g)->check(CLI::NonNegativeNumber);
  cmd.add_option("--mask-prob", d.mask_prob, "BERT / T5: probability of masking a token (0.15)")
      ->group(g)->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--short-seq-prob", d.short_seq_prob,
                 "BERT: probability of a sample shorter than --seq-length (0.1)")
      ->group(g)->check(CLI::Range(0.0, 1.0));

  g = "Logging and evaluation";
  cmd.add_option("--log-interval", l.log_interval, "Iterations between log lines")->group(g)->check(pos);
  cmd.add_option("--eval-interval", l.eval_interval, "Iterations between validation runs")->group(g)->check(pos);
  cmd.add_option("--eval-iters", l.eval_iters, "Iterations per validation run")->group(g)->check(nonneg);
  cmd.add_option("--log-jsonl", l.log_jsonl, "Also write metrics as JSON lines to this file")->group(g);
  cmd.add_option("--config", "YAML file with the same keys as these flags (flags win)")->group(g);

  g = "Checkpointing";
  train::CheckpointConfig& ck = cfg.checkpoint;
  cmd.add_option("--save", ck.save, "Directory to save checkpoints in")->group(g);
  cmd.add_option("--save-interval", ck.save_interval, "Iterations between checkpoints")->group(g)->check(pos);
  cmd.add_option("--load", ck.load, "Directory to load a checkpoint from (latest, or --ckpt-step)")->group(g);
  cmd.add_flag("--finetune", ck.finetune, "Load weights only: iteration 0, fresh optimizer and data position")->group(g);
  cmd.add_flag("--no-load-optim", ck.no_load_optim, "Do not load the optimizer state")->group(g);
  cmd.add_flag("--no-load-rng", ck.no_load_rng, "Do not load the RNG state (use --seed)")->group(g);
  cmd.add_flag("--no-save-optim", ck.no_save_optim, "Do not save the optimizer state")->group(g);
  cmd.add_option("--ckpt-step", ck.ckpt_step, "Iteration to load instead of the latest")->group(g)->check(nonneg);
  cmd.add_flag("--async-save", ck.async_save, "Write checkpoints in a background thread")->group(g);
  cmd.add_flag("--exit-signal-handler", ck.exit_signal_handler,
               "On SIGTERM/SIGINT: save at the end of the step and exit 0")->group(g);
  cmd.add_option("--exit-interval", ck.exit_interval, "Save and exit when iteration % N == 0")->group(g)->check(pos);
  cmd.add_option("--exit-duration-in-mins", ck.exit_duration_in_mins,
                 "Save and exit after this many minutes")->group(g)->check(pos);
  cmd.add_option("--keep-last-checkpoints", ck.keep_last_checkpoints,
                 "Keep only the newest K checkpoints (removed after a new one is complete)")->group(g)->check(pos);

  // Megatron flags that ask for what ShardLM does anyway: accepted, so existing launch scripts
  // run unchanged; the help says why each needs nothing. Values are still checked.
  g = "Megatron compatibility (accepted; ShardLM does this already)";
  const std::pair<const char*, const char*> already[] = {
      {"--use-mcore-models", "the model is Megatron Core's GPT"},
      {"--use-flash-attn", "attention is always a flash kernel (cuDNN's or ShardLM's)"},
      {"--accumulate-allreduce-grads-in-fp32", "main gradients are fp32 under --bf16/--fp16"},
      {"--log-throughput", "every log line has tokens per second"},
      {"--no-masked-softmax-fusion", "there is no separate masked softmax (flash attention)"},
      {"--no-bias-gelu-fusion", "the fused bias + GELU computes the same function"},
      {"--no-bias-dropout-fusion", "the fused bias + dropout + add computes the same function"},
      {"--no-bias-swiglu-fusion", "the fused SwiGLU computes the same function"},
  };
  for (const auto& [flag, why] : already)
    cmd.add_flag(flag, [](int64_t) {}, std::string("Accepted: ") + why)->group(g);
  auto one_of = [](const char* flag, std::vector<std::string> allowed) {
    return [flag, allowed](const std::string& v) {
      if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
      std::string list;
      for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw CLI::ValidationError(flag, "'" + v + "' is not one of " + list);
    };
  };
  cmd.add_option_function<std::string>(
         "--transformer-impl", one_of("--transformer-impl", {"local", "transformer_engine"}),
         "local or transformer_engine: accepted, ShardLM's own fused layers run either way")
      ->group(g);
}

namespace {
std::string scalar_to_string(const YAML::Node& node, const std::string& path,
                             const std::string& key) {
  if (!node.IsScalar())
    throw Error(ErrorKind::kInvalidConfig,
                "config " + path + ": key '" + key + "' must be a scalar or a list of scalars");
  return node.Scalar();
}
}  // namespace

void note_ignored_flags(const CLI::App& cmd, const train::TrainConfig& cfg, std::ostream& out) {
  auto given = [&](const char* flag) { return cmd.get_option(flag)->count() > 0; };
  if (!cfg.model.use_rope_scaling)
    for (const char* flag :
         {"--rope-scaling-factor", "--rope-scaling-low-freq-factor",
          "--rope-scaling-high-freq-factor", "--rope-scaling-original-max-position-embeddings"})
      if (given(flag))
        out << "shardlm: note: " << flag
            << " has no effect without --use-rope-scaling (as in Megatron-LM); add "
               "--use-rope-scaling to scale RoPE as Llama 3.x does\n";
  for (const char* flag : {"--fp8-amax-history-len", "--fp8-amax-compute-algo"})
    if (given(flag))
      out << "shardlm: note: " << flag
          << " has no effect: ShardLM's fp8 scales each tensor from its current amax "
             "(tensorwise), so there is no amax history to configure\n";
  if (!cfg.model.fp8.enabled())
    for (const char* flag : {"--fp8-margin", "--first-last-layers-bf16", "--fp8-recipe"})
      if (given(flag))
        out << "shardlm: note: " << flag << " has no effect without --fp8-format\n";
}

std::vector<std::string> yaml_config_to_args(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw Error(ErrorKind::kInvalidConfig,
                "--config " + path + ": cannot read the file; check the path");
  } catch (const YAML::Exception& e) {
    throw Error(ErrorKind::kInvalidConfig, "--config " + path + ": not valid YAML (" +
                                               std::string(e.what()) + ")");
  }
  if (root.IsNull()) return {};
  if (!root.IsMap())
    throw Error(ErrorKind::kInvalidConfig,
                "--config " + path + ": expected a mapping of flag names to values");
  std::vector<std::string> args;
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>();
    while (!key.empty() && key[0] == '-') key.erase(0, 1);
    for (char& c : key)
      if (c == '_') c = '-';
    if (key == "config")
      throw Error(ErrorKind::kInvalidConfig, "config " + path + ": nested 'config' is not allowed");
    const YAML::Node& v = kv.second;
    if (v.IsSequence()) {
      args.push_back("--" + key);
      for (const auto& item : v) args.push_back(scalar_to_string(item, path, key));
      continue;
    }
    const std::string value = scalar_to_string(v, path, key);
    if (value == "true" || value == "True") {
      args.push_back("--" + key);  // boolean flag switched on
    } else if (value == "false" || value == "False") {
      continue;                    // flags default to off
    } else {
      args.push_back("--" + key);
      args.push_back(value);
    }
  }
  return args;
}

std::vector<std::string> expand_config_args(const std::vector<std::string>& args) {
  std::vector<std::string> from_file, rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config") {
      if (i + 1 >= args.size())
        throw Error(ErrorKind::kInvalidConfig, "--config needs a file name: --config FILE.yaml");
      auto file_args = yaml_config_to_args(args[++i]);
      from_file.insert(from_file.end(), file_args.begin(), file_args.end());
    } else if (args[i].rfind("--config=", 0) == 0) {
      auto file_args = yaml_config_to_args(args[i].substr(9));
      from_file.insert(from_file.end(), file_args.begin(), file_args.end());
    } else {
      rest.push_back(args[i]);
    }
  }
  from_file.insert(from_file.end(), rest.begin(), rest.end());
  return from_file;
}

}  // namespace shardlm::cli
