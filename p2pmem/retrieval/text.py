"""Words: how memory text and questions become search terms.

One analyzer serves indexing and querying, so a word in a question and the
same word in a memory always meet: tantivy's simple tokenizer (runs of
letters and digits), lower case, accents folded, over-long tokens dropped,
English (Porter 2) stems. Stopwords are removed from *queries* only, and
only when something else is left, so the index keeps every word and a query
made of stopwords alone ("who is it") still finds what contains them.
"""

from __future__ import annotations

import functools

import tantivy

ANALYZER = "p2pmem_en"
PLAIN_ANALYZER = "p2pmem_plain"
MAX_TOKEN = 40  # longer runs are ids, hashes or base64: noise for ranking
MAX_QUERY_TERMS = 32

# English function words and the words questions are made of (what, when,
# did, ...): they match most memories and say nothing about which one is
# meant. Measured on LoCoMo (docs/retrieval.md), this short list beats a
# longer one; the one-letter and two-letter pieces are what contractions
# split into ("Caroline's" -> caroline, s). The first person singular (I,
# me, my) is not on it: a question in the first person asks about what its
# asker said of themselves, and those memories say "I" and "my" (+0.030 R@10
# on techchat, +0.044 on lifechat, LoCoMo unchanged: docs/retrieval.md).
_STOPWORD_TEXT = """
a an and are as at be but by did do does for from had has have how if in into is it its
no not of on or our so that the their them then there these they this to was we were what
when where which who why will with you your s t m ll re ve d
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@functools.cache
def analyzer() -> tantivy.TextAnalyzer:
    """The analyzer of the ranked fields: stopwords out, English stems."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN))
        .filter(tantivy.Filter.custom_stopword(sorted(STOPWORDS)))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


@functools.cache
def plain_analyzer() -> tantivy.TextAnalyzer:
    """Every word stemmed, stopwords kept: the field a query made only of
    stopwords searches."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


@functools.cache
def _word_analyzer() -> tantivy.TextAnalyzer:
    """The same tokens, unstemmed: what the stopword list is written in."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN))
        .build()
    )


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    stems = plain_analyzer().analyze(word)
    return stems[0] if stems else word


def words(text: str) -> list[str]:
    """Lower-cased, accent-folded tokens of ``text``, in order."""
    return _word_analyzer().analyze(text)


def stems(text: str) -> list[str]:
    """The indexed terms of ``text``, in order (repeats kept)."""
    return analyzer().analyze(text)


def analyse_query(text: str) -> tuple[list[str], bool]:
    """The distinct stemmed search terms of a question, stopwords dropped
    unless nothing else is left; and whether nothing else was left (such a
    query searches the field that keeps stopwords)."""
    tokens = list(dict.fromkeys(words(text)))
    content = [w for w in tokens if w not in STOPWORDS]
    terms = list(dict.fromkeys(stem(w) for w in content or tokens))[:MAX_QUERY_TERMS]
    return terms, bool(tokens) and not content


def query_terms(text: str) -> list[str]:
    """The search terms of :func:`analyse_query`."""
    return analyse_query(text)[0]


def register(index: tantivy.Index) -> None:
    """Make the analyzers known to an index whose schema names them."""
    index.register_tokenizer(ANALYZER, analyzer())
    index.register_tokenizer(PLAIN_ANALYZER, plain_analyzer())
