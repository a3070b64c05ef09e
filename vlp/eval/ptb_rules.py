"""The rules of Stanford CoreNLP 3.4.1's PTB tokenizer (PTBLexer.flex, a JFlex scanner) as
regular expressions, for vlp.eval.ptb_tokenize.

Each rule is ``(pattern, action)`` in the order of PTBLexer.flex. A pattern's ``t`` group, where
it has one, is the token and the rest of the match the rule's trailing context (JFlex's
``r1/r2``: r1 only where r2 follows, the length of r1r2 deciding between rules); an action maps
the token's text to ``(token or None, characters consumed)`` (fewer than matched where JFlex
pushes characters back to be lexed again). Literal words match in any case (the scanner is
``%caseless``), character classes only as written.

The rules and abbreviation lists are the ones the 3.4.1 jar (coco-caption's copy) shows; they
differ in places from both older and newer PTBLexer.flex sources. They were checked token for
token against the jar on tens of thousands of generated lines of words, numbers, abbreviations,
quotes, brackets, symbols, URLs, e-mail addresses, markup and smileys (tests/eval keeps a
sample of those checks).
"""

from __future__ import annotations

from collections.abc import Callable

import regex

# Macros of PTBLexer.flex ([:letter:] and [:digit:], Java's isLetter and isDigit, are \p{L} and \d).
# LETTER: [:letter:], soft hyphen, and the combining marks it lists
LETTER = (r"[\p{L}\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384"
          r"\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD"
          r"\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
          r"\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903"
          r"\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD"
          r"\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
          r"\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
          r"\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
APOS = r"(?:['\u0092\u2019]|&apos;)"
APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201B]|&apos;)"
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
SPACENL = r"[ \t\u00A0\u2000-\u200A\u3000\r\n\u2028\u2029\u000B\u000C\u0085]"
NUM = r"(?:\d+|\d*(?:[.:,\u00AD\u066B\u066C]\d+)+)"
NUMBER = rf"[-+]?{NUM}"
WORD = rf"{LETTER}[{LETTER[1:-1]}\d]*(?:[.!?]{LETTER}[{LETTER[1:-1]}\d]*)*"
HYPHEN = r"[-_\u058A\u2010\u2011]"
ACRO_TAIL = r"(?i:canada|sino|korean|eu|japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)"
ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{ACRO_TAIL})"
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{ACRO_TAIL})"
REDAUX = rf"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SREDAUX = rf"(?i:n){APOSETC}(?i:t)"
THING_PART = rf"(?:[dDoOlL]{APOSETC}[\p{{L}}\d])?[\p{{L}}\d]+"
THING = rf"{THING_PART}(?:{HYPHEN}{THING_PART})*"
HTHING = r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|" + ACRO2 + r"\.))+"
THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
FILENAME_EXT = ("bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf"
                "|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip|3gp|wm[va]|avi|flv|mp[34g]")
INSENTP = r"[,;:\u3001]"
ABBREV1 = (r"(?:(?i:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri|ala|ariz"
           r"|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt|wisc?"
           r"|wyo|inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|jr|sr|bros"
           r"|(?:ed|ph)\.d|esq|blvd|rd|etc|al|seq|bldg)"
           r"|A(?i:z)|A(?i:rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass)|M(?i:iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash))\.")
ABTITLE = (r"(?i:mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt"
           r"|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme"
           r"|msgr|sfc)|M(?i:iss)")
ABBREV4 = rf"(?:[A-Za-z]|{ABTITLE}|(?i:vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph|invt|elec|natl|m[ft]g|dept)|{ACRO})"
SENTEND_WORDS = ("About According Additionally After An A As At But Earlier He Her Here However If In It Last "
                 "Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These "
                 "They This We When While What Yet You").split()
QUOTES = r"(?:" + APOS + r"|''|[`\u2018\u2019\u201A-\u201F\u0091-\u0094\u2039\u203A\u00AB\u00BB]{1,2})"
MISCSYMBOL = (r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
              r"\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B"
              r"\u061E\u066A\u066D\u0703-\u070D\u07F6-\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017"
              r"\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
              r"\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")

Action = Callable[[str], "tuple[str | None, int]"]


def _keep(tok: str) -> tuple[str, int]:
    return tok, len(tok)


def _word(tok: str) -> tuple[str, int]:
    # soft hyphens only mark where a word may break
    return tok.replace("\u00AD", "") or "-", len(tok)


def _as(text: str) -> Action:
    return lambda tok: (text, len(tok))


def _pushback(n: int) -> Action:
    """Emit all but the last ``n`` characters, which are lexed again."""
    return lambda tok: (tok[:-n], len(tok) - n)


def _period_again(tok: str) -> tuple[str, int]:
    """An abbreviation ending a sentence: itself with its period, then the period once more
    (a one-letter acronym, ``I.``, without it)."""
    return (tok[:-1], 1) if len(tok) == 2 else (tok, len(tok) - 1)


def _quotes(left: bool) -> Action:
    """PTBLexer's latexQuotes: straight quotes by the side they probably open or close."""
    def action(tok: str) -> tuple[str, int]:
        s = regex.sub(r"&apos;|'", "`" if left else "'", tok)
        s = regex.sub(r"\"|&quot;", "``" if left else "''", s)
        s = regex.sub("[\u0091\u2018\u201B\u2039]", "`", s)
        s = regex.sub("[\u0092\u2019\u203A]", "'", s)
        s = regex.sub("[\u0093\u201C\u00AB]", "``", s)
        return regex.sub("[\u0094\u201D\u00BB]", "''", s), len(tok)
    return action


def _currency(tok: str) -> tuple[str, int]:
    return regex.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok.replace("\u00A2", "cents").replace("\u00A3", "#")), 1


def _fraction(tok: str) -> tuple[str, int]:
    return {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}.get(tok, tok), 1


def _brackets(tok: str) -> tuple[str, int]:
    return {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}[tok], 1


def _smiley(tok: str) -> tuple[str, int]:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-"), len(tok)


def _dashes(tok: str) -> tuple[str, int]:
    return ("--" if 3 <= len(tok) <= 4 else tok), len(tok)


def _with_spaces(tok: str) -> tuple[str, int]:
    # a token with a space in it (a fraction "5 1/2") gets a non-breaking one; the scorers,
    # which split on any whitespace, see two words
    return tok.replace(" ", "\u00A0"), len(tok)


def _phone(tok: str) -> tuple[str, int]:
    return _with_spaces(tok.replace("(", "-LRB-").replace(")", "-RRB-"))[0], len(tok)


def _amp(tok: str) -> tuple[str, int]:
    return regex.sub("(?i:&amp;)", "&", tok), len(tok)


def _skip(tok: str) -> tuple[None, int]:
    return None, len(tok)


def _sentend_context() -> str:
    # PTBLexer's list of sentence openers after an acronym: first letter uppercase only
    return "(?:" + "|".join(w[0] + (f"(?i:{regex.escape(w[1:])})" if len(w) > 1 else "")
                            for w in SENTEND_WORDS) + ")"


# (pattern, action) in PTBLexer.flex's order; a pattern's ``t`` group is the token, the rest of
# the match its trailing context.
_RULE_TABLE: list[tuple[str, Action]] = [
    (r"(?i:c\+\+|[cf]#)", _keep),
    (r"(?i:cannot|'twas)", _pushback(3)),
    (r"(?i:'tis|gonna|gotta|lemme|gimme|wanna)", _pushback(2)),
    (r"<(?:[!?][A-Za-z-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*|[A-Za-z][A-Za-z0-9_:.-]*"
     r"[ ]*=[ ]*(?:'[^'\r\n]*'|\"[^\"\r\n]*\"|[A-Za-z][A-Za-z0-9_:.-]*)))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.-]*)[ ]*>",
     _with_spaces),
    (r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", _as("--")),
    (r"&(?i:amp);", _as("&")),
    (r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", _keep),
    (rf"(?P<t>{WORD}){REDAUX}", _word),
    (rf"(?P<t>[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*){SREDAUX}", _word),
    (WORD, _word),
    (rf"{APOS}(?i:n){APOS}?|[lLdDjJ]{APOS}|(?i:dunkin|somethin|ol){APOS}|{APOS}(?i:em)"
     rf"|[A-HJ-XZn]{APOSETC}\p{{L}}{{2,}}|{APOS}[2-9]0(?i:s)|{APOS}(?i:till?)"
     rf"|\p{{L}}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]\p{{L}}*|{APOS}(?i:cause)"
     rf"|(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)|(?i:o){APOSETC}(?i:o)", _keep),
    (rf"(?P<t>(?i:y){APOS})\p{{L}}", _keep),
    (r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]", _keep),
    (r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
     r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){}\u002C-\u005F$]+\.)+(?i:com|net|org|edu)))"
     r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?", _keep),
    (r"(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
     r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:&gt;|>)?", _keep),
    (rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+", _keep),
    (rf"(?P<t>{REDAUX})[^A-Za-z]", _quotes(False)),
    (SREDAUX, _quotes(False)),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", _keep),
    (NUMBER, _word),
    (r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", _keep),
    (r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", _with_spaces),
    (r"[\u00BC\u00BD\u00BE\u2153-\u215E]", _fraction),
    (rf"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-)|(?i:s)(?:&|(?i:&amp;))(?i:p-500|ls)"
     rf"|(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)", _amp),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", _keep),
    (r"[A-Z]*\$|#", _keep),
    (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", _currency),
    (rf"(?P<t>{ACRO}\.){SPACENL}+{_sentend_context()}{SPACENL}", _period_again),
    (rf"(?P<t>(?i:ca|figs?|prop|nos?|art|pp|op)\.){SPACENL}?\d", _keep),
    (rf"(?P<t>(?i:pt[eyEY]|co)\.){SPACE}(?i:ltd|lim)", _keep),
    (rf"(?P<t>{ABBREV1}){SPACENL}(?:{SPACENL}|\p{{Lu}})", _period_again),
    (rf"(?P<t>{ABBREV1})(?s:..)", _keep),
    (ABBREV1, _period_again),
    (rf"{ABBREV4}\.", _keep),
    (rf"(?P<t>{ABBREV4}){SPACE}", _keep),
    (rf"(?P<t>{ACRO}){SPACENL}", _keep),
    (rf"(?P<t>{APOS}\d\d){SPACENL}", _keep),
    (rf"(?P<t>[\p{{L}}\u00AD\d]+(?:\.[\p{{L}}\u00AD\d]+)*\.(?i:{FILENAME_EXT}))(?:{SPACENL}|[.?!,])", _keep),
    (rf"(?P<t>{WORD}\.){INSENTP}", _word),
    (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00A0])?[0-9]{2,4}[- \u00A0])[0-9]{3,4}"
     r"[- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}", _phone),
    (r"(?P<t>\"|&quot;)[A-Za-z0-9$]", _quotes(True)),
    (r"\"|&quot;", _quotes(False)),
    (r"\x7f", _skip),
    (r"<|&lt;", _as("<")),
    (r">|&gt;", _as(">")),
    (r"(?P<t>[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]])[^A-Za-z0-9]", _smiley),
    (r"[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)", _smiley),
    (r"[(){}\[\]]", _brackets),
    (r"-+", _dashes),
    (r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", _as("...")),
    (r"@+|#+|_+", _keep),
    (r"\*+|(?:\\\*){1,3}", _keep),
    (INSENTP, _keep),
    (r"[?!]+", _keep),
    (r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", _keep),
    (r"=", _keep),
    (r"/", _keep),
    (rf"(?P<t>{HTHING}\.){INSENTP}", _word),
    (HTHING, _word),
    (rf"(?P<t>{THING}\.){INSENTP}", _keep),
    (THING, _keep),
    (rf"(?P<t>{THINGA}\.){INSENTP}", _amp),
    (THINGA, _amp),
    (r"(?P<t>')[A-Za-z][^ \t\n\r\u00A0]", _quotes(True)),
    (REDAUX, _quotes(False)),
    (QUOTES, _quotes(False)),
    (r"<<|>>", _keep),
    (MISCSYMBOL, _keep),
    (rf"\x00|{SPACE}+|[\u200B\u200E\u200F\uFEFF]|{SPACENL}|&(?i:nbsp);", _skip),
    (r"(?s:.)", _skip),  # untokenizable: deleted
]
# POSIX: each rule matches the longest text it can, as a JFlex DFA does (not the first alternative)
RULES = [(regex.compile(p, regex.POSIX), action) for p, action in _RULE_TABLE]


__all__ = ["RULES", "Action"]
