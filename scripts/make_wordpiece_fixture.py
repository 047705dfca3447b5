#!/usr/bin/env python3
"""Writes tests/golden/data/bert/wordpiece_fixture.json: WordPiece ids from Hugging Face's
BertTokenizer for tricky strings and corpus lines, for tests/data/wordpiece_golden_test.cc.
Needs `transformers` (run it on the GPU machine):

  python3 scripts/make_wordpiece_fixture.py --vocab tests/golden/data/bert/vocab-lowercase-8k.txt \
      --corpus /path/to/corpus/*.jsonl --output tests/golden/data/bert/wordpiece_fixture.json

Megatron's BertWordPiece tokenizers wrap the original BERT FullTokenizer, whose order of steps
Hugging Face's BasicTokenizer keeps except for an extra NFC normalisation (newer transformers)
and special-token splitting; its WordpieceTokenizer allows 200 characters per word where
Hugging Face allows 100. So the ids come from Hugging Face's own step functions (_clean_text,
_tokenize_chinese_chars, _run_strip_accents, _run_split_on_punc, WordpieceTokenizer) composed in
FullTokenizer's order, with max_input_chars_per_word = 200. transformers 5 dropped those Python
internals (its BertTokenizer is the fast one), so there the ids come from the tokenizers
library's BertNormalizer + BertPreTokenizer + WordPiece (200 characters, no special tokens). The
fixture also records how many cases plain BertTokenizer.tokenize() agrees on, as a cross-check.
"""
import argparse
import json
import os

from transformers import BertTokenizer


def whitespace_tokenize(text):
    # BERT's whitespace_tokenize (transformers 5 no longer exports it): strip, split on whitespace.
    text = text.strip()
    return text.split() if text else []

TRICKY = [
    "Hello, World!", "HELLO world", "Café au lait", "Cafe\u0301 cre\u0300me", "naïve résumé",
    "Ångström Øresund Straße", "ΟΔΟΣ Σίσυφος ΣΑΣ", "İstanbul DİYARBAKIR", "Москва Ёлка",
    "中文字符测试 and English", "日本語のテキスト", "한국어 텍스트", "emoji 😀 test 🚀!",
    "tab\tseparated\nnew line\r\nwindows", "zero\u200bwidth\u00adsoft\ufeffbom", "nul\x00char",
    "bell\x07 and \x1b escape", "replacement \ufffd char", "nbsp\u00a0here\u2003em space",
    "line\u2028separator\u2029paragraph", "¿Qué pasó? ¡Nada!", "quotes “curly” ‘single’ «guillemets»",
    "dashes – — and ellipsis…", "$100 & 50% off #1 @home ^_^ `code` ~tilde |pipe|",
    "don't can't won't it's", "e-mail: someone@example.com http://x.y/z?q=1",
    "a" * 99, "b" * 100, "c" * 101, "d" * 199, "e" * 200, "f" * 201, "x" + "y" * 250,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "MiXeD CaSe WoRdS", "numbers 3.14159 1,000,000 42nd", "[MASK] [CLS] [SEP] [PAD] [UNK]",
    "ﬁ ligature ﬀ", "Ⅻ roman ① circled", "math ∑∫√∞ ≤≥", "   ", "",
    "combining only \u0301\u0302", "Ωmega ohm \u2126", "Kelvin \u212a", "ǅ titlecase",
]


def tokenizers_bert(vocab_path, lower):
    # transformers 5's BertTokenizer is the fast one (no basic_tokenizer / wordpiece_tokenizer):
    # the same pipeline from the tokenizers library, with Megatron's 200-character word limit
    # and no special tokens registered (FullTokenizer splits "[MASK]" as text).
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    vocab = {}
    with open(vocab_path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i  # a repeated line keeps its last id, as load_vocab
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=200))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lower, lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def megatron_ids(tok, text, lower):
    bt = tok.basic_tokenizer
    text = bt._clean_text(text)
    text = bt._tokenize_chinese_chars(text)
    split = []
    for token in whitespace_tokenize(text):
        if lower:
            token = bt._run_strip_accents(token.lower())
        split.extend(bt._run_split_on_punc(token))
    pieces = []
    for word in whitespace_tokenize(" ".join(split)):
        pieces.extend(tok.wordpiece_tokenizer.tokenize(word))
    return [tok.vocab[p] for p in pieces]


def corpus_texts(paths, per_file):
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = json.loads(f.readline())["text"]
        for i in range(per_file):
            out.append(text[i * 300:(i + 1) * 300])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--corpus", nargs="*", default=[])
    parser.add_argument("--lines-per-file", type=int, default=100)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    texts = TRICKY + corpus_texts(args.corpus, args.lines_per_file)
    cases, agree = [], 0
    for lower in (True, False):
        tok = BertTokenizer(vocab_file=args.vocab, do_lower_case=lower)
        slow = hasattr(tok, "wordpiece_tokenizer")  # transformers 4's Python tokenizer
        if slow:
            tok.wordpiece_tokenizer.max_input_chars_per_word = 200
        else:
            encode = tokenizers_bert(args.vocab, lower)
        for text in texts:
            ids = megatron_ids(tok, text, lower) if slow else encode(text)
            agree += ids == tok.convert_tokens_to_ids(tok.tokenize(text))
            cases.append({"lower_case": lower, "text": text, "ids": ids})
    import transformers
    fixture = {"vocab": os.path.basename(args.vocab), "transformers": transformers.__version__,
               "plain_tokenize_agrees": agree, "cases": cases}
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0)
    print(f"wrote {len(cases)} cases to {args.output} ({agree} agree with plain tokenize())")


if __name__ == "__main__":
    main()
