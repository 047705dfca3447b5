#include "shardlm/data/tokenizer/bpe_files.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shardlm/base/error.h"

namespace shardlm::data {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, "cannot open '" + path + "' for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(ErrorKind::kIo, "error while reading '" + path + "'");
  return std::move(buffer).str();
}

TokenToIdMap read_vocab_json(const std::string& path) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kCorruptData,
                path + ": not valid JSON (" + e.what() + "); expected a vocab.json object");
  }
  if (!json.is_object()) {
    throw Error(ErrorKind::kCorruptData,
                path + ": expected a JSON object {\"token\": id, ...} (a vocab.json file)");
  }
  TokenToIdMap vocab;
  vocab.reserve(json.size());
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer()) {
      throw Error(ErrorKind::kCorruptData, path + ": token '" + token + "' has a non-integer id");
    }
    vocab.emplace(token, id.get<int32_t>());
  }
  return vocab;
}

std::vector<std::pair<std::string, std::string>> read_merges_txt(const std::string& path) {
  const std::string text = read_text_file(path);
  std::vector<std::pair<std::string, std::string>> merges;
  size_t line_number = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.starts_with("#version"))) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      throw Error(ErrorKind::kCorruptData,
                  path + ":" + std::to_string(line_number) +
                      ": expected a merge 'left right' (two tokens separated by one space)");
    }
    merges.emplace_back(std::string(line.substr(0, space)), std::string(line.substr(space + 1)));
  }
  return merges;
}

}  // namespace shardlm::data
