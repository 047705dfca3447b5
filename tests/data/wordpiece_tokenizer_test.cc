// WordPieceTokenizer (Megatron's BertWordPieceLowerCase / BertWordPieceCase) on a tiny vocab
// whose expected ids follow by hand from the rules of BERT's tokenization.py.
#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/null_tokenizer.h"
#include "shardlm/data/tokenizer/tokenizer_factory.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using Ids = std::vector<int32_t>;

// id = line number
constexpr const char* kTinyVocab =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"       // 0-4
    "un\n##aff\n##able\nhello\nworld\n"          // 5-9
    ",\n!\ncafe\n\xE4\xB8\xAD\n\xE5\x9B\xBD\n"   // 10-14: , ! cafe 中 国
    "a\n##b\n$\n##s\nthe\ncat\nHello\n"          // 15-21
    "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82\n"         // 22: οδος (final sigma)
    "##a\ni\n"                                   // 23-24
    "\xE1\x84\x92\n##\xE1\x85\xA1\n##\xE1\x86\xAB\n"  // 25-27: jamo of 한
    ".\ndon\n'\nt\n";                            // 28-31

const WordPieceTokenizer& lower() {
  static const auto tok = WordPieceTokenizer::from_text(kTinyVocab, /*lower_case=*/true);
  return *tok;
}
const WordPieceTokenizer& cased() {
  static const auto tok = WordPieceTokenizer::from_text(kTinyVocab, /*lower_case=*/false);
  return *tok;
}

TEST(WordPieceTokenizer, GreedyLongestMatchWithContinuations) {
  EXPECT_EQ(lower().encode("unaffable"), (Ids{5, 6, 7}));
  EXPECT_EQ(lower().tokenize("unaffable"), (std::vector<std::string>{"un", "##aff", "##able"}));
  EXPECT_EQ(lower().encode("cats"), (Ids{20, 18}));
  EXPECT_EQ(lower().encode("xyz"), (Ids{1}));        // no piece matches: [UNK]
  EXPECT_EQ(lower().encode("unaffx"), (Ids{1}));     // a partial match is still one [UNK]
  EXPECT_EQ(lower().encode("the unx cat"), (Ids{19, 1, 20}));
}

TEST(WordPieceTokenizer, LowerCaseStripsAccentsAndSplitsPunctuation) {
  EXPECT_EQ(lower().encode("Hello, World!"), (Ids{8, 10, 9, 11}));
  EXPECT_EQ(lower().encode("Caf\xC3\xA9"), (Ids{12}));   // precomposed é
  EXPECT_EQ(lower().encode("Cafe\xCC\x81"), (Ids{12}));  // e + combining acute
  EXPECT_EQ(lower().encode("don't"), (Ids{29, 30, 31}));
  EXPECT_EQ(lower().encode("$a"), (Ids{17, 15}));  // '$' is ASCII punctuation for BERT
  EXPECT_EQ(lower().encode("hello\xC2\xBFworld"), (Ids{8, 1, 9}));  // ¿ (Po) splits
  EXPECT_EQ(lower().encode("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3"), (Ids{22}));  // ΟΔΟΣ -> οδος
  EXPECT_EQ(lower().encode("\xC4\xB0"), (Ids{24}));   // İ lower-cases to i + U+0307, dropped
  EXPECT_EQ(lower().encode("\xED\x95\x9C"), (Ids{25, 26, 27}));  // 한 decomposes into jamo
}

TEST(WordPieceTokenizer, CleansControlsAndWhiteSpace) {
  EXPECT_EQ(lower().encode(std::string("a\0b", 3)), (Ids{15, 16}));  // U+0000 dropped
  EXPECT_EQ(lower().encode("a\xE2\x80\x8B" "b"), (Ids{15, 16}));      // U+200B (Cf) dropped
  EXPECT_EQ(lower().encode("a\xEF\xBF\xBD" "b"), (Ids{15, 16}));      // U+FFFD dropped
  EXPECT_EQ(lower().encode("a\x01" "b"), (Ids{15, 16}));              // Cc dropped
  EXPECT_EQ(lower().encode("a\xC2\xA0" "b"), (Ids{15, 1}));           // NBSP (Zs) splits
  EXPECT_EQ(lower().encode("hello\t\r\nworld"), (Ids{8, 9}));
  EXPECT_EQ(lower().encode("hello\xE2\x80\xA8world"), (Ids{8, 9}));  // U+2028 splits
  EXPECT_EQ(lower().encode(" \n\t "), Ids{});
  EXPECT_EQ(lower().encode("\xFF" "a"), (Ids{15}));  // an invalid byte is dropped like U+FFFD
}

TEST(WordPieceTokenizer, CjkIdeographsAreSingleWords) {
  EXPECT_EQ(lower().encode("\xE4\xB8\xAD\xE5\x9B\xBD"), (Ids{13, 14}));  // 中国
  EXPECT_EQ(lower().encode("a\xE4\xB8\xAD" "a"), (Ids{15, 13, 15}));
}

TEST(WordPieceTokenizer, WordsOver200CharactersAreUnknown) {
  Ids expected = {15};
  expected.insert(expected.end(), 199, 23);
  EXPECT_EQ(lower().encode(std::string(200, 'a')), expected);
  EXPECT_EQ(lower().encode(std::string(201, 'a')), (Ids{1}));
}

TEST(WordPieceTokenizer, CasedKeepsCaseAndAccents) {
  EXPECT_EQ(cased().encode("Hello hello"), (Ids{21, 8}));
  EXPECT_EQ(cased().encode("HELLO"), (Ids{1}));
  EXPECT_EQ(cased().encode("Caf\xC3\xA9"), (Ids{1}));
  EXPECT_EQ(cased().encode("cafe\xCC\x81"), (Ids{1}));  // the mark stays part of the word
  EXPECT_EQ(cased().encode("hello,world"), (Ids{8, 10, 9}));
  EXPECT_EQ(cased().type_name(), "BertWordPieceCase");
  EXPECT_EQ(lower().type_name(), "BertWordPieceLowerCase");
}

TEST(WordPieceTokenizer, SpecialIdsAndMegatronAddedTokens) {
  EXPECT_EQ(lower().cls_id(), 2);
  EXPECT_EQ(lower().sep_id(), 3);
  EXPECT_EQ(lower().pad_id(), 0);
  EXPECT_EQ(lower().mask_id(), 4);
  EXPECT_EQ(lower().unk_id(), 1);
  // Megatron appends [BOS] and [EOS]; eod is [EOS].
  EXPECT_EQ(lower().vocab_size(), 34);
  EXPECT_EQ(lower().bos_id(), 32);
  EXPECT_EQ(lower().eod_id(), 33);
  EXPECT_EQ(lower().id_to_token(33), "[EOS]");
  EXPECT_TRUE(lower().is_continuation(6));
  EXPECT_FALSE(lower().is_continuation(5));
  EXPECT_FALSE(lower().is_continuation(2));
  ASSERT_EQ(lower().random_token_ids().size(), 34u);
  EXPECT_EQ(lower().random_token_ids()[33], 33);
  // Special tokens in text are plain text, as in Megatron's FullTokenizer.
  EXPECT_EQ(lower().encode("[MASK]"), (Ids{1, 1, 1}));
  const auto t5 = WordPieceTokenizer::from_text(kTinyVocab, true, /*vocab_extra_ids=*/2);
  EXPECT_EQ(t5->vocab_size(), 36);
  EXPECT_EQ(t5->token_to_id("<extra_id_1>"), 35);
}

TEST(WordPieceTokenizer, DecodeGluesPiecesAndCleansSpaces) {
  EXPECT_EQ(lower().decode(Ids{5, 6, 7}), "unaffable");
  EXPECT_EQ(lower().decode(Ids{8, 10, 9, 11}), "hello, world!");
  EXPECT_EQ(lower().decode(Ids{29, 30, 31}), "don't");
  EXPECT_EQ(lower().decode(Ids{2, 8, 3}), "[CLS] hello [SEP]");
  EXPECT_THROW(lower().decode(Ids{99}), Error);
}

TEST(WordPieceTokenizer, VocabFileParsingMatchesPython) {
  const std::string specials = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
  // \r\n, \r and \n all end lines; tokens are strip()ped.
  const auto t = WordPieceTokenizer::from_text(specials + "a\r\nb\rc\n  d \t\n", true);
  EXPECT_EQ(t->token_to_id("a"), 5);
  EXPECT_EQ(t->token_to_id("b"), 6);
  EXPECT_EQ(t->token_to_id("c"), 7);
  EXPECT_EQ(t->token_to_id("d"), 8);
  EXPECT_EQ(t->vocab_size(), 11);
  // A repeated token keeps its last id; vocab_size counts distinct tokens.
  const auto dup = WordPieceTokenizer::from_text(specials + "x\ny\nx\n", true);
  EXPECT_EQ(dup->token_to_id("x"), 7);
  // Megatron gives [BOS] the id len(vocab) = 7, which x also has; inv_vocab[7] becomes [BOS].
  EXPECT_EQ(dup->token_to_id("[BOS]"), 7);
  EXPECT_EQ(dup->id_to_token(7), "[BOS]");
  EXPECT_EQ(dup->vocab_size(), 9);  // 7 distinct + [BOS] + [EOS]
  try {
    WordPieceTokenizer::from_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", true, 0, "v.txt");
    ADD_FAILURE() << "no error for a vocab without [MASK]";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("[MASK]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("v.txt"), std::string::npos) << e.what();
  }
  EXPECT_THROW(WordPieceTokenizer::from_file("/nonexistent/vocab.txt", true), Error);
}

TEST(WordPieceTokenizer, FactoryBuildsItAndExposesTheMaskedLmVocab) {
  TokenizerOptions o{.type = "BertWordPieceLowerCase",
                     .vocab_file = testing::golden_data("bert/vocab-lowercase-8k.txt")};
  std::shared_ptr<const Tokenizer> tok = make_tokenizer(o);
  EXPECT_EQ(tok->vocab_size(), 8194);
  const auto vocab = masked_lm_vocab_of(tok);
  EXPECT_EQ(vocab->pad_id(), 0);
  EXPECT_EQ(vocab->mask_id(), 4);
  std::shared_ptr<const Tokenizer> null = std::make_shared<NullTokenizer>(100);
  try {
    masked_lm_vocab_of(null);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("BertWordPieceLowerCase"), std::string::npos);
  }
  o.vocab_file.clear();
  EXPECT_THROW(make_tokenizer(o), Error);
}

// _BertWordPieceTokenizer.__init__: add_token("[BOS]"), add_token("[EOS]"), then
// <extra_id_0..N-1> (--vocab-extra-ids); each absent token takes id len(vocab), and vocab_size
// is len(vocab) after the additions. additional_special_tokens_ids looks each sentinel up.
TEST(WordPieceTokenizer, T5SentinelsAndVocabSizeFollowMegatron) {
  TokenizerOptions o{.type = "BertWordPieceLowerCase",
                     .vocab_file = testing::golden_data("bert/vocab-lowercase-8k.txt"),
                     .vocab_extra_ids = 100};
  const std::shared_ptr<const Tokenizer> tok = make_tokenizer(o);
  EXPECT_EQ(tok->vocab_size(), 8192 + 2 + 100);
  const auto vocab = masked_lm_vocab_of(tok);
  EXPECT_EQ(vocab->bos_id(), 8192);
  EXPECT_EQ(vocab->eos_id(), 8193);
  EXPECT_EQ(tok->eod_id(), 8193);
  ASSERT_EQ(vocab->sentinel_ids().size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(vocab->sentinel_ids()[i], 8194 + i);
  const auto& wp = dynamic_cast<const WordPieceTokenizer&>(*tok);
  EXPECT_EQ(wp.id_to_token(8194), "<extra_id_0>");
  EXPECT_EQ(wp.id_to_token(8293), "<extra_id_99>");
  EXPECT_EQ(wp.decode(Ids{8194, 8192, 8193}), "<extra_id_0> [BOS] [EOS]");
  // Sentinels are not reachable from text (punctuation splits them), as in Megatron.
  const Ids text_ids = wp.encode("<extra_id_0>");
  EXPECT_EQ(std::count(text_ids.begin(), text_ids.end(), 8194), 0);
  // Without extra ids: no sentinels, [BOS]/[EOS] still added.
  EXPECT_TRUE(lower().sentinel_ids().empty());
  EXPECT_EQ(lower().eos_id(), 33);
  // Tokens the vocab file already holds keep their ids; the others are appended in order.
  const std::string specials = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
  const auto own = WordPieceTokenizer::from_text(specials + "[EOS]\n<extra_id_1>\n", true, 3);
  EXPECT_EQ(own->eos_id(), 5);
  EXPECT_EQ(own->bos_id(), 7);
  EXPECT_EQ(std::vector<int32_t>(own->sentinel_ids().begin(), own->sentinel_ids().end()),
            (Ids{8, 6, 9}));
  EXPECT_EQ(own->vocab_size(), 10);
  // Flag errors.
  o.vocab_extra_ids = -1;
  EXPECT_THROW(make_tokenizer(o), Error);
}

TEST(WordPieceTokenizer, RealVocabEncodesTheCorpusWithoutUnknowns) {
  const auto tok =
      WordPieceTokenizer::from_file(testing::golden_data("bert/vocab-lowercase-8k.txt"), true);
  const std::string text =
      "Call me Ishmael. Some years ago\xE2\x80\x94never mind how long precisely\xE2\x80\x94having "
      "little or no money in my purse, I thought I would sail about a little.";
  const Ids ids = tok->encode(text);
  EXPECT_GT(ids.size(), 25u);
  for (int32_t id : ids) EXPECT_NE(id, tok->unk_id());
  // Decoding gives the basic tokens back (lower-cased; punctuation spacing cleaned).
  EXPECT_EQ(tok->decode(tok->encode("Call me Ishmael.")), "call me ishmael.");
}

}  // namespace
}  // namespace shardlm::data
