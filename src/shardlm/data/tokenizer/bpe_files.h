// Readers for BPE vocabulary files: vocab.json ({"token": id, ...}) and merges.txt (optional
// "#version" first line, then "left right" per line, rank order). Errors name the file and line.
//
//   TokenToIdMap vocab = read_vocab_json("gpt2-vocab.json");
//   auto merges = read_merges_txt("gpt2-merges.txt");   // {{"Ġ", "t"}, {"Ġ", "a"}, ...}
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "shardlm/data/tokenizer/bpe_model.h"

namespace shardlm::data {

std::string read_text_file(const std::string& path);
TokenToIdMap read_vocab_json(const std::string& path);
std::vector<std::pair<std::string, std::string>> read_merges_txt(const std::string& path);

}  // namespace shardlm::data
