#include "shardlm/data/sentence_splitter.h"

#include <gtest/gtest.h>

namespace shardlm::data {
namespace {

using Sentences = std::vector<std::string_view>;

TEST(SentenceSplitter, SplitsAfterTerminalPunctuationBeforeACapital) {
  EXPECT_EQ(split_sentences("It rained. We stayed in! Why? Because."),
            (Sentences{"It rained.", "We stayed in!", "Why?", "Because."}));
  EXPECT_EQ(split_sentences("  Leading and trailing.   "), (Sentences{"Leading and trailing."}));
  EXPECT_EQ(split_sentences("He said \"Stop.\" Then he left."),
            (Sentences{"He said \"Stop.\"", "Then he left."}));
  EXPECT_EQ(split_sentences("It was 1851. 1852 came next."),
            (Sentences{"It was 1851.", "1852 came next."}));
  EXPECT_EQ(split_sentences("Wait... \"Really?\" she asked."),
            (Sentences{"Wait...", "\"Really?\" she asked."}));
}

TEST(SentenceSplitter, DoesNotSplitAbbreviationsInitialsOrLowerCaseStarts) {
  EXPECT_EQ(split_sentences("Mr. Smith met Dr. Jones at St. Paul. They talked."),
            (Sentences{"Mr. Smith met Dr. Jones at St. Paul.", "They talked."}));
  EXPECT_EQ(split_sentences("J. R. R. Tolkien wrote it. Fans agree."),
            (Sentences{"J. R. R. Tolkien wrote it.", "Fans agree."}));
  EXPECT_EQ(split_sentences("Apples, e.g. Fuji, etc. Are good."),
            (Sentences{"Apples, e.g. Fuji, etc. Are good."}));
  EXPECT_EQ(split_sentences("the value 3.14 is pi. and so on"),
            (Sentences{"the value 3.14 is pi. and so on"}));
  EXPECT_EQ(split_sentences("No space.After it."), (Sentences{"No space.After it."}));
}

TEST(SentenceSplitter, ParagraphBreaksSplitAndSingleNewlinesDoNot) {
  EXPECT_EQ(split_sentences("A title\n\nThe first line\ncontinues here.\n \nlast one"),
            (Sentences{"A title", "The first line\ncontinues here.", "last one"}));
  EXPECT_EQ(split_sentences(""), Sentences{});
  EXPECT_EQ(split_sentences(" \n\n \n"), Sentences{});
}

TEST(SentenceSplitter, KeepNewlinesKeepsTheWhiteSpaceAfterASentence) {
  EXPECT_EQ(split_sentences("One.\nTwo.\n\nThree.", /*keep_newlines=*/true),
            (Sentences{"One.\n", "Two.\n\n", "Three."}));
}

}  // namespace
}  // namespace shardlm::data
