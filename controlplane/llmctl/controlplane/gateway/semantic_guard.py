"""The semantic cache's second opinion: reject a similar stored question that differs from the new one in a
way that changes the answer, which sentence embeddings are known to miss.

all-MiniLM-L6-v2 embeds a question and its near miss almost identically when the wording is the same but
one detail changed: "convert 5 kilograms to pounds" / "convert 5 pounds to kilograms" score 0.99, "every 5
minutes" / "every 5 hours" 0.97, "enable" / "disable" 0.98 (benchmarks/semantic_threshold.py lists them).
No threshold separates those from true rewordings, so a hit also has to pass these word-level checks:

- the same numbers and arithmetic operators (digits and number words: "fifteen" is 15),
- the same count of negations ("with yeast" / "without yeast"),
- no opposite words on the two sides ("larger" / "smaller", "on" / "off", "install" / "uninstall"),
- not a swap of the words after to / from / than / for / before ... ("from the host to a container"),
- not the same wording with one content word replaced ("Roth IRA" / "Roth 401k", "minutes" / "hours").

Each check only ever turns a hit into a miss: a reworded question that trips one costs a replica call,
never a wrong answer.
"""

from __future__ import annotations

import re
from collections import Counter

_JOINER = re.compile(r"(?<=[a-z0-9])-(?=[a-z])")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.#+][a-z0-9#+]+)*[#+]*|[-+*/^=<>%]")
STOPWORDS = frozenset(
    "a an the is are was were be been being am do does did doing done can could should would will shall may might "
    "must i me my mine we our you your it its this that these those what which who whom whose how when where why "
    "there here of in on at by with about as and or if so s t ll ve re d m please just some any to from into than "
    "for vs versus per get got way good tell explain give show need want know make have has had many much go "
    "going".split()
)
NEGATIONS = frozenset({"not", "no", "never", "without", "nor", "none", "cannot", "nothing"})
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()) if w != "one"}  # "one day" asks what "a day" asks
_NUMBER_WORDS |= {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                  "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1e6", "billion": "1e9",
                  "twice": "2", "half": "0.5", "percent": "%", "dozen": "12", "double": "2",
                  "triple": "3", "plus": "+", "minus": "-", "times": "*", "multiplied": "*", "divided": "/"}
_ORDINALS = {w: f"{i + 1}th" for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth".split())}
_ROMAN = {w: str(i + 2) for i, w in enumerate("ii iii iv v vi vii viii ix x xi xii".split())}  # not "i": a pronoun
OPPOSITES = (
    ("on", "off"), ("enable", "disable"), ("increase", "decrease"), ("larger", "smaller"), ("bigger", "smaller"),
    ("more", "less"), ("more", "fewer"), ("most", "least"), ("most", "fewest"), ("first", "last"),
    ("best", "worst"), ("before", "after"), ("over", "under"), ("above", "below"), ("min", "max"),
    ("minimum", "maximum"), ("add", "remove"), ("add", "drop"), ("open", "close"), ("start", "stop"),
    ("start", "end"), ("install", "uninstall"), ("encode", "decode"), ("encrypt", "decrypt"),
    ("compress", "extract"), ("upload", "download"), ("import", "export"), ("read", "write"), ("buy", "sell"),
    ("pros", "cons"), ("advantages", "disadvantages"), ("soft", "hard"), ("high", "low"), ("highest", "lowest"),
    ("north", "south"), ("east", "west"), ("hot", "cold"), ("up", "down"), ("keep", "discard"),
    ("accept", "decline"), ("include", "exclude"), ("allow", "deny"), ("lock", "unlock"), ("mount", "unmount"),
    ("upgrade", "downgrade"), ("backup", "restore"), ("long", "short"), ("fast", "slow"), ("early", "late"),
    ("earliest", "latest"), ("push", "pull"), ("send", "receive"), ("win", "lose"), ("input", "output"),
    ("positive", "negative"), ("left", "right"), ("horizontally", "vertically"), ("horizontal", "vertical"),
    ("absorb", "release"), ("inner", "outer"), ("true", "false"), ("yes", "no"), ("old", "new"),
    ("oldest", "newest"), ("local", "remote"), ("public", "private"), ("server", "client"), ("sync", "async"),
    ("synchronous", "asynchronous"), ("lowercase", "uppercase"), ("ascending", "descending"), ("raw", "cooked"),
)
_ARGUMENT_PREPOSITIONS = ("to", "from", "into", "than", "for", "vs", "versus", "before", "after", "over", "against")
_OPERATORS = frozenset("-+*/^=<>%")
_ARTICLES = frozenset({"a", "an", "the", "my", "your", "our", "this", "that"})


def tokens(text: str) -> list[str]:
    """Lowercased words, numbers and operators; contractions opened ("don't" -> "do not"); a hyphen before a
    letter joins words ("base64-encode"), before a digit it is a minus."""
    text = text.lower().replace("\u2019", "'").replace("n't", " not").replace("'s", "").replace("'", " ")
    return _TOKEN.findall(_JOINER.sub(" ", text))


def stem(word: str) -> str:
    """A crude suffix stripper: enough that "causes", "caused" and "cause", or "declining" and "decline",
    compare equal; both sides go through it, so a cut that is not a real stem costs nothing."""
    if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ies", "es")):
        word = word[:-1]  # a plural first, so "servers" and "server" then lose the same suffix
    for suffix in ("ings", "ing", "ies", "ied", "ed", "es", "er", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith(("ss", "us", "is")):
            word = word[:-len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def anchors(words: list[str]) -> Counter[str]:
    """Numbers and operators: any difference changes the answer."""
    out: Counter[str] = Counter()
    for w in words:
        if any(c.isdigit() for c in w) or w in _OPERATORS:
            out[w] += 1
        elif w in _NUMBER_WORDS:
            out[_NUMBER_WORDS[w]] += 1
        elif w in _ORDINALS:
            out[_ORDINALS[w]] += 1
        elif w in _ROMAN:
            out[_ROMAN[w]] += 1
    return out


def content(words: list[str]) -> Counter[str]:
    return Counter(stem(w) for w in words if w not in STOPWORDS and w not in NEGATIONS and not anchors([w]))


def _argument(words: list[str], preposition: str) -> tuple[str, ...] | None:
    """The words after the first `preposition`, articles skipped, up to the next stopword."""
    if preposition not in words:
        return None
    out: list[str] = []
    for w in words[words.index(preposition) + 1:]:
        if w in _ARTICLES and not out:
            continue
        if w in STOPWORDS:
            break
        out.append(stem(w))
        if len(out) == 3:
            break
    return tuple(out) or None


def swapped(a: list[str], b: list[str]) -> bool:
    """The same words with two arguments traded ("from X to Y" / "from Y to X", "A for B" / "B for A")."""
    a_words, b_words = {stem(w) for w in a}, {stem(w) for w in b}
    for preposition in _ARGUMENT_PREPOSITIONS:
        x, y = _argument(a, preposition), _argument(b, preposition)
        if x is None or y is None:
            continue
        # Each side's own words after the preposition appear elsewhere on the other side: "soda for baking
        # powder" / "powder for baking soda"; "rice" / "rice ratio" (nothing of its own on one side) is no swap.
        own_x, own_y = set(x) - set(y), set(y) - set(x)
        if own_x and own_y and own_x <= b_words and own_y <= a_words:
            return True
    return False


def opposed(a: set[str], b: set[str]) -> bool:
    """One side says X where the other says its opposite (and neither says both)."""
    for x, y in OPPOSITES:
        if (x in a and y in b and y not in a and x not in b) or (y in a and x in b and x not in a and y not in b):
            return True
    for w in a ^ b:  # un-/dis-/non- prefixes: "install" / "uninstall", "like" / "dislike"
        for prefix in ("un", "dis", "non"):
            base = w.removeprefix(prefix)
            if base != w and base and ((w in a and base in b and base not in a) or
                                       (w in b and base in a and base not in b)):
                return True
    return False


def compatible(new: str, stored: str) -> bool:
    """Whether the stored question's answer may serve the new one, as far as the words can tell."""
    a, b = tokens(new), tokens(stored)
    if anchors(a) != anchors(b):
        return False
    if sum(w in NEGATIONS for w in a) != sum(w in NEGATIONS for w in b):
        return False
    if opposed(set(a), set(b)) or swapped(a, b):
        return False
    only_a, only_b = content(a) - content(b), content(b) - content(a)
    # One content word replaced, the rest the same: another entity, unit or attribute, not a rewording.
    return not (sum(only_a.values()) == 1 and sum(only_b.values()) == 1)
