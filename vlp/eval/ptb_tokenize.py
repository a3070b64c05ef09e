"""Words of captions as coco-caption tokenises them, without Java.

coco-caption (pycocoevalcap/tokenizer/ptbtokenizer.py) writes the captions one per line to a
file, runs Stanford CoreNLP 3.4.1's PTBTokenizer on it (``-preserveLines -lowerCase``), drops
the tokens in its ``PUNCTUATIONS`` list, and its scorers split what is left on whitespace.
``caption_words`` does the same with PTBLexer's rules (vlp.eval.ptb_rules) lexed as JFlex does:
at each position the longest match of any rule wins (trailing context counted), the earlier rule
a tie. What that gives, as coco-caption scores it:

- hyphenated words, numbers and decimals stay whole (``well-known``, ``3.5``, ``1,000``,
  ``12:30``, ``1.5-inch``); ``'s 'm 'd 're 've 'll`` and ``n't`` are split off (``man 's``,
  ``do n't``), and ``cannot gonna gotta wanna lemme gimme`` are split in two;
- abbreviations and acronyms keep their period (``mr.``, ``u.s.``, ``etc.``), and so does a
  word before ``,;:`` (``dog.,`` -> ``dog.``); other periods are tokens, and dropped;
- quotes become `` `` ` ' '' `` and brackets ``-LRB- -RRB- -LSB- -RSB- -LCB- -RCB-``; the filter
  lists the uppercase names but sees lowercased tokens, so it drops quotes, dashes and the
  other punctuation and keeps ``-lrb-`` and the like as words;
- ``$ # % & @ * + = / < >`` and other symbols are words of their own; characters no rule knows
  (emoji, anything outside Unicode's first plane) are deleted.

Known differences: letters and digits of scripts added to Unicode after 2014 (the jar's tables
are older) and a caption holding a line break other than "\n" (coco-caption's file would get
an extra line and every later caption would be out of step; here it is a space).
"""

from __future__ import annotations

import functools

import regex

from vlp.eval.ptb_rules import RULES, Action

# coco-caption's PUNCTUATIONS (ptbtokenizer.py): the bracket names are uppercase there but the
# tokens are lowercased first, so those four never match and "-lrb-" etc. stay words.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# a run of ASCII letters before a space or the line's end is a word whichever rule wins (none
# reads further), unless it is one that PTB splits: it skips the rule search
_PLAIN = regex.compile(r"[A-Za-z]+(?=[ \n])")
_SPLIT_WORDS = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}
_BLANK = regex.compile(r"[ \t\u00A0\u2000-\u200A\u3000\n]+")  # no rule but the skipping one starts with these
# the lexer's line breaks: coco-caption replaces "\n" in a caption by a space; the others too here
_NEWLINES = regex.compile(r"\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085]")
# Java strings are UTF-16 and JFlex 1.4 reads them a char at a time: a letter or digit beyond the
# first plane is two halves that no rule knows (a symbol there, an emoji, is unknown to both)
_ASTRAL_WORD_CHAR = regex.compile(r"(?=[\U00010000-\U0010FFFF])[\p{L}\p{Nd}]")


@functools.lru_cache(maxsize=4096)
def _rules_starting_with(char: str) -> list[tuple[regex.Pattern, Action]]:
    """The rules that can match text starting with ``char`` (regex's partial match: ``char`` is
    the beginning of some match), so that the search skips the others."""
    return [(p, a) for p, a in RULES if p.match(char, partial=True) is not None]


def ptb_tokens(captions: list[str]) -> list[list[str]]:
    """PTBTokenizer 3.4.1's tokens (case kept, nothing removed) of each caption, the captions
    lexed as the lines of one text, as coco-caption does: a trailing context may read the next
    caption (``C.`` before a line starting "The" is ``C`` and a period, otherwise ``C.``)."""
    text = _ASTRAL_WORD_CHAR.sub("\uFFFF", "\n".join(_NEWLINES.sub(" ", c) for c in captions))
    tokens: list[list[str]] = [[] for _ in captions]
    line, next_break, pos = 0, text.find("\n"), 0
    while pos < len(text):
        while next_break != -1 and pos > next_break:  # tokens never span a line break
            line, next_break = line + 1, text.find("\n", next_break + 1)
        blank = _BLANK.match(text, pos)
        if blank:
            pos = blank.end()
            continue
        plain = _PLAIN.match(text, pos)
        if plain and plain.group().lower() not in _SPLIT_WORDS:
            tokens[line].append(plain.group())
            pos = plain.end()
            continue
        best, best_len = None, -1
        for pattern, action in _rules_starting_with(text[pos]):
            m = pattern.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best, best_len = (m, action), m.end() - pos
        m, action = best
        token, consumed = action(m.group("t") if "t" in m.re.groupindex else m.group())
        if token is not None:
            tokens[line].append(token)
        pos += consumed
    return tokens


def caption_words(captions: list[str]) -> list[list[str]]:
    """The words coco-caption scores for each caption: PTB tokens (captions lexed together, in
    this order), lowercased, its punctuation removed, split on whitespace as its scorers split."""
    lowered = [[t.lower() for t in line] for line in ptb_tokens(captions)]
    return [[w for t in line if t not in PUNCTUATIONS for w in t.split()] for line in lowered]


def words(text: str) -> list[str]:
    """The words coco-caption scores for one caption lexed alone (see caption_words)."""
    return caption_words([text])[0]


__all__ = ["PUNCTUATIONS", "caption_words", "ptb_tokens", "words"]
