// Checkpoints from the outside (the shardlm binary as a child process): SIGTERM with
// --exit-signal-handler saves at the end of the step and exits 0 with a loadable checkpoint;
// --exit-interval; a model-flag mismatch on --load is one line naming the flag; convert --from hf
// (GPT-2, Llama and Megatron-BERT) then train --load --finetune, and convert --to hf.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "shardlm/ckpt/hf_bert.h"
#include "shardlm/model/families/gpt_model.h"
#include "tests/testing/run_command.h"

namespace fs = std::filesystem;

namespace {

using Result = shardlm::testing::CommandResult;  // output: stdout + stderr

Result run(const std::string& args) {
  return shardlm::testing::run_command(std::string(SHARDLM_BINARY_PATH) + " " + args + " 2>&1");
}

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("shardlm_ckcli_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const std::string kModel =
    "--mock-data --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
    "--vocab-size 32 --micro-batch-size 2 --lr 1e-3 --device cpu ";

TEST(CheckpointCli, SigtermSavesAtTheEndOfTheStepAndExitsZero) {
  TempDir dir;
  int out_pipe[2];
  ASSERT_EQ(pipe(out_pipe), 0);
  const std::string save = dir.str() + "/ckpt";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(out_pipe[1], 2);
    close(out_pipe[0]);
    execl(SHARDLM_BINARY_PATH, SHARDLM_BINARY_PATH, "train", "--mock-data", "--num-layers", "1",
          "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "8",
          "--vocab-size", "32", "--micro-batch-size", "2", "--lr", "1e-3", "--device", "cpu",
          "--train-iters", "1000000", "--log-interval", "1", "--eval-iters", "0",
          "--exit-signal-handler", "--save", save.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out_pipe[1]);
  // Wait until a few iterations are logged, then SIGTERM.
  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool signalled = false;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{out_pipe[0], POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      char buf[4096];
      const ssize_t n = read(out_pipe[0], buf, sizeof(buf));
      if (n <= 0) break;
      output.append(buf, static_cast<size_t>(n));
    }
    if (!signalled && output.find("iteration        3/") != std::string::npos) {
      kill(pid, SIGTERM);
      signalled = true;
    }
  }
  // The pipe closes as the child exits, a moment before it can be reaped.
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 300 && (done = waitpid(pid, &status, WNOHANG)) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "shardlm did not exit after SIGTERM:\n" << output;
  }
  close(out_pipe[0]);
  ASSERT_TRUE(signalled) << output;
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  EXPECT_NE(output.find("exit signal received"), std::string::npos) << output;
  const std::string latest = read_file(fs::path(save) / "latest_checkpointed_iteration.txt");
  ASSERT_FALSE(latest.empty()) << output;
  const long long it = std::stoll(latest);
  EXPECT_GE(it, 3);
  // The checkpoint loads and training continues from it.
  const Result resumed = run("train " + kModel + "--train-iters " + std::to_string(it + 2) +
                             " --log-interval 1 --eval-iters 0 --load " + save);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("loaded checkpoint"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("iteration " + std::string(8 - std::to_string(it + 1).size(), ' ') +
                                std::to_string(it + 1) + "/"),
            std::string::npos)
      << resumed.output;
}

TEST(CheckpointCli, ExitIntervalAndConfigMismatch) {
  TempDir dir;
  const std::string save = dir.str() + "/ckpt";
  const Result r = run("train " + kModel + "--train-iters 10 --eval-iters 0 --log-interval 1 " +
                       "--save " + save + " --exit-interval 3 --async-save");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_file(fs::path(save) / "latest_checkpointed_iteration.txt"), "3\n");
  EXPECT_EQ(r.output.find("iteration        4/"), std::string::npos) << r.output;
  const Result bad = run("train --mock-data --num-layers 1 --hidden-size 32 "
                         "--num-attention-heads 2 --seq-length 8 --vocab-size 32 "
                         "--micro-batch-size 2 --lr 1e-3 --device cpu --train-iters 5 --load " +
                         save);
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--hidden-size"), std::string::npos) << bad.output;
  int lines = 0;
  for (char c : bad.output.substr(bad.output.find("shardlm: "))) lines += c == '\n';
  EXPECT_EQ(lines, 1) << bad.output;
}

// Two processes (shardlm launch, TP=2, vocabulary padded to 256) save asynchronously; one
// process (TP=1, padded to 128) resumes from that checkpoint.
TEST(CheckpointCli, TwoProcessesSaveOneResumes) {
  TempDir dir;
  const std::string save = dir.str() + "/ckpt";
  const std::string model =
      "--mock-data --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
      "--vocab-size 32 --micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --train-iters 6 "
      "--eval-iters 0 --log-interval 1 ";
  const Result two = run("launch --nproc-per-node 2 --device cpu -- train " + model +
                         "--tensor-model-parallel-size 2 --save " + save +
                         " --exit-interval 3 --async-save");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(read_file(fs::path(save) / "latest_checkpointed_iteration.txt"), "3\n") << two.output;
  EXPECT_TRUE(fs::exists(fs::path(save) / "iter_0000003" / "rank_00001.safetensors"));
  const Result one = run("train " + model + "--device cpu --load " + save);
  EXPECT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("loaded checkpoint"), std::string::npos) << one.output;
  EXPECT_NE(one.output.find("iteration        4/"), std::string::npos) << one.output;
  EXPECT_EQ(one.output.find("iteration        3/"), std::string::npos) << one.output;
}

TEST(CheckpointCli, ConvertFromHfFinetuneAndBack) {
  const fs::path fixture = fs::path(SHARDLM_SOURCE_DIR) / "tests/golden/hf/gpt2_tiny";
  if (!fs::exists(fixture / "model.safetensors")) GTEST_SKIP() << "fixture " << fixture << " missing";
  TempDir dir;
  const std::string ckpt = dir.str() + "/ckpt", hf = dir.str() + "/hf";
  const Result c = run("convert --from hf --model-type gpt2 --input " + fixture.string() +
                       " --output " + ckpt);
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find("--finetune --num-layers 2 --hidden-size 64"), std::string::npos)
      << c.output;
  const Result ft = run(
      "train --load " + ckpt + " --finetune --num-layers 2 --hidden-size 64 "
      "--num-attention-heads 4 --max-position-embeddings 64 --vocab-size 1000 --seq-length 16 "
      "--mock-data --micro-batch-size 2 --lr 1e-4 --train-iters 2 --eval-iters 0 "
      "--log-interval 1 --device cpu --hidden-dropout 0 --attention-dropout 0 --save " +
      dir.str() + "/ft");
  EXPECT_EQ(ft.exit_code, 0) << ft.output;
  EXPECT_NE(ft.output.find("loaded checkpoint"), std::string::npos) << ft.output;
  EXPECT_TRUE(fs::exists(dir.str() + "/ft/iter_0000002/metadata.json")) << ft.output;
  const Result back = run("convert --to hf --model-type gpt2 --input " + ckpt + " --output " + hf);
  ASSERT_EQ(back.exit_code, 0) << back.output;
  EXPECT_TRUE(fs::exists(hf + "/config.json"));
  EXPECT_TRUE(fs::exists(hf + "/model.safetensors"));
  const Result bad = run("convert --model-type gpt2 --input " + ckpt + " --output " + hf);
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
}

// The first "lm loss: X" a training run logs.
double first_loss(const std::string& output) {
  const size_t at = output.find("lm loss: ");
  return at == std::string::npos ? -1.0 : std::stod(output.substr(at + 9));
}

// A Hugging Face Llama (RoPE, GQA, SwiGLU, RMSNorm, untied) converts, fine-tunes with the flags
// convert prints (its weights, not a fresh init: the first loss differs), refuses a different
// --rotary-base on load naming it, and converts back; --target-tensor-parallel-size is checked.
TEST(CheckpointCli, ConvertLlamaFromHfFinetuneAndBack) {
  const fs::path fixture = fs::path(SHARDLM_SOURCE_DIR) / "tests/golden/hf/llama_tiny";
  if (!fs::exists(fixture / "model.safetensors"))
    GTEST_SKIP() << "fixture " << fixture << " missing";
  TempDir dir;
  const std::string ckpt = dir.str() + "/ckpt", hf = dir.str() + "/hf";
  const Result c = run("convert --from hf --model-type llama --input " + fixture.string() +
                       " --output " + ckpt);
  ASSERT_EQ(c.exit_code, 0) << c.output;
  const std::string model =
      "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --group-query-attention "
      "--num-query-groups 2 --ffn-hidden-size 160 --position-embedding-type rope "
      "--vocab-size 1000 --untie-embeddings-and-output-weights --disable-bias-linear --swiglu "
      "--normalization RMSNorm";
  EXPECT_NE(c.output.find("--finetune " + model + " "), std::string::npos) << c.output;
  const std::string train =
      "train " + model + " --seq-length 16 --mock-data --micro-batch-size 2 --lr 1e-4 "
      "--eval-iters 0 --log-interval 1 --device cpu --hidden-dropout 0 --attention-dropout 0 ";
  const Result ft = run(train + "--train-iters 3 --load " + ckpt + " --finetune --save " +
                        dir.str() + "/ft");
  ASSERT_EQ(ft.exit_code, 0) << ft.output;
  EXPECT_NE(ft.output.find("loaded checkpoint"), std::string::npos) << ft.output;
  EXPECT_TRUE(fs::exists(dir.str() + "/ft/iter_0000003/metadata.json")) << ft.output;
  const Result scratch = run(train + "--train-iters 1");
  ASSERT_EQ(scratch.exit_code, 0) << scratch.output;
  const double loaded = first_loss(ft.output), fresh = first_loss(scratch.output);
  ASSERT_GT(loaded, 0.0) << ft.output;
  ASSERT_GT(fresh, 0.0) << scratch.output;
  EXPECT_GT(std::abs(loaded - fresh), 1e-2 * fresh) << "the converted weights were not used";

  const Result bad = run(train + "--train-iters 1 --rotary-base 500000 --load " + ckpt +
                         " --finetune");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--rotary-base (rotary_base)"), std::string::npos) << bad.output;

  const Result back = run("convert --to hf --model-type llama --input " + dir.str() + "/ft" +
                          " --output " + hf);
  ASSERT_EQ(back.exit_code, 0) << back.output;
  const std::string exported = read_file(hf + "/config.json");
  EXPECT_NE(exported.find("\"LlamaForCausalLM\""), std::string::npos);
  // The fine-tuning run carried the source config.json through its checkpoint: keys only the
  // fixture has survive, and its context length (64) rather than the training --seq-length.
  EXPECT_NE(exported.find("\"pretraining_tp\""), std::string::npos) << exported;
  EXPECT_NE(exported.find("\"transformers_version\""), std::string::npos) << exported;
  EXPECT_NE(exported.find("\"max_position_embeddings\": 64"), std::string::npos) << exported;
  EXPECT_TRUE(fs::exists(hf + "/model.safetensors"));

  // TP 4 > 2 query groups: each group's k/v replicated on 2 ranks (allowed); 3 splits no heads.
  const Result tp4 = run("convert --from hf --model-type llama --target-tensor-parallel-size 4 "
                         "--input " + fixture.string() + " --output " + dir.str() + "/tp4");
  EXPECT_EQ(tp4.exit_code, 0) << tp4.output;
  EXPECT_NE(tp4.output.find("--tensor-model-parallel-size 4"), std::string::npos) << tp4.output;
  const Result tp3 = run("convert --from hf --model-type llama --target-tensor-parallel-size 3 "
                         "--input " + fixture.string() + " --output " + dir.str() + "/tp3");
  EXPECT_EQ(tp3.exit_code, 2) << tp3.output;
  EXPECT_NE(tp3.output.find("--target-tensor-parallel-size 3: --num-attention-heads 4"),
            std::string::npos) << tp3.output;
  EXPECT_FALSE(fs::exists(dir.str() + "/tp3"));
}

// A Hugging Face Megatron-BERT with the binary head (written by the exporter from a freshly
// initialised ShardLM BERT) converts to a checkpoint recording the BERT family, fine-tunes with
// --model-type bert and the flags convert prints (a GPT run refuses it naming --model-type),
// converts back; an erf-GELU config imports with a printed note; an unknown type lists the
// supported ones.
TEST(CheckpointCli, ConvertMegatronBertFromHfFinetuneAndBack) {
  TempDir dir;
  const std::string src = dir.str() + "/src", ckpt = dir.str() + "/ckpt", hf = dir.str() + "/hf";
  {
    shardlm::ckpt::HfModel m;
    shardlm::model::TransformerConfig& c = m.config;
    c.family = shardlm::model::ModelFamily::kBert;
    c.num_layers = 2;
    c.hidden_size = 16;
    c.num_attention_heads = 2;
    c.ffn_hidden_size = 64;
    c.seq_length = 32;
    c.vocab_size = 64;
    shardlm::DeviceContext ctx = shardlm::DeviceContext::cpu();
    shardlm::model::GPTModel model(c);
    shardlm::model::ParameterRegistry reg;
    model.register_parameters(reg);
    reg.finalize(ctx, shardlm::DType::kF32, 5);
    for (const shardlm::model::Parameter& p : reg.parameters()) {
      shardlm::OwnedTensor t = shardlm::OwnedTensor::empty(shardlm::DType::kF32, p.value.shape());
      std::memcpy(t.view().raw(), p.value.raw(), p.value.nbytes());
      m.tensors[p.spec.name] = std::move(t);
    }
    shardlm::ckpt::write_hf_megatron_bert(m, src);
  }
  const Result c = run("convert --from hf --model-type megatron-bert --input " + src +
                       " --output " + ckpt);
  ASSERT_EQ(c.exit_code, 0) << c.output;
  const std::string model =
      "--model-type bert --num-layers 2 --hidden-size 16 --num-attention-heads 2 "
      "--ffn-hidden-size 64 --max-position-embeddings 32 --vocab-size 64";
  EXPECT_NE(c.output.find("--finetune " + model + " "), std::string::npos) << c.output;
  EXPECT_EQ(c.output.find("note:"), std::string::npos) << c.output;  // gelu_new: exact
  const std::string train =
      "train " + model + " --seq-length 16 --mock-data --micro-batch-size 2 --lr 1e-4 "
      "--eval-iters 0 --log-interval 1 --device cpu --hidden-dropout 0 --attention-dropout 0 ";
  const Result ft = run(train + "--train-iters 2 --load " + ckpt + " --finetune --save " +
                        dir.str() + "/ft");
  ASSERT_EQ(ft.exit_code, 0) << ft.output;
  EXPECT_NE(ft.output.find("loaded checkpoint"), std::string::npos) << ft.output;
  EXPECT_NE(ft.output.find("sop loss"), std::string::npos) << ft.output;
  EXPECT_TRUE(fs::exists(dir.str() + "/ft/iter_0000002/metadata.json")) << ft.output;
  std::string gpt = train;
  gpt.replace(gpt.find("--model-type bert "), 18, "");
  const Result wrong = run(gpt + "--train-iters 1 --load " + ckpt + " --finetune");
  EXPECT_EQ(wrong.exit_code, 2) << wrong.output;
  EXPECT_NE(wrong.output.find("--model-type (model_type)"), std::string::npos) << wrong.output;

  const Result back = run("convert --to hf --model-type megatron-bert --input " + dir.str() +
                          "/ft --output " + hf);
  ASSERT_EQ(back.exit_code, 0) << back.output;
  EXPECT_NE(read_file(hf + "/config.json").find("\"MegatronBertForPreTraining\""),
            std::string::npos);
  EXPECT_TRUE(fs::exists(hf + "/model.safetensors"));

  std::string config = read_file(src + "/config.json");
  config.replace(config.find("\"gelu_new\""), 10, "\"gelu\"");
  std::ofstream(src + "/config.json") << config;
  const Result erf = run("convert --from hf --model-type megatron-bert --input " + src +
                         " --output " + dir.str() + "/erf");
  EXPECT_EQ(erf.exit_code, 0) << erf.output;
  EXPECT_NE(erf.output.find("note: hidden_act \"gelu\""), std::string::npos) << erf.output;
  const Result unknown = run("convert --from hf --model-type t5 --input " + src + " --output " +
                             dir.str() + "/t5");
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("gpt2, llama or megatron-bert"), std::string::npos)
      << unknown.output;
}

}  // namespace
