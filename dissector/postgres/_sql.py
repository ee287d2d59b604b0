"""Where a simple Query's statements start and end, and a statement's first keyword.

The server splits a Query string into statements with its grammar; this is the lexical
part of that, as psql does before sending a script line by line: a ``;`` ends a statement
unless it sits in a quoted string (``'...'`` with ``''``, ``E'...'`` with backslash
escapes, ``$tag$...$tag$``), a quoted identifier, a comment (``--`` to the end of the line,
nested ``/* */``), parentheses, or the ``BEGIN ... END`` body of a ``CREATE [OR REPLACE]
FUNCTION|PROCEDURE`` (psql's heuristic: ``BEGIN`` opens, ``CASE`` inside it too, ``END``
closes). Input that ends inside a string or comment leaves the rest in the last statement.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ("first_keyword", "statement_spans")

_TOKEN: Final = re.compile(r"""
    (?P<ws>\s+)
  | (?P<line>--[^\n]*)
  | (?P<block>/\*)
  | (?P<estr>[eE]')
  | (?P<str>')
  | (?P<qid>"(?:[^"]|"")*"?)
  | (?P<dollar>\$(?:[^\W\d]\w*)?\$)
  | (?P<word>[^\W\d]\w*)
  | (?P<semi>;)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>[^\s;()'"$/\-\w]+|.)
""", re.VERBOSE | re.DOTALL)
_WORD_TAIL: Final = re.compile(r"[\w$]*")
_STR_END: Final = re.compile(r"(?:[^']|'')*'", re.DOTALL)
_ESTR_END: Final = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)
_ROUTINE: Final = (("create", "function"), ("create", "procedure"),
                   ("create", "or", "replace", "function"),
                   ("create", "or", "replace", "procedure"))


def _block_end(sql: str, i: int) -> int:
    """End of the (nested) block comment whose ``/*`` ends at ``i``."""
    depth = 1
    n = len(sql)
    while depth:
        j = sql.find("*/", i)
        k = sql.find("/*", i)
        if j < 0:
            return n
        if 0 <= k < j:
            depth += 1
            i = k + 2
        else:
            depth -= 1
            i = j + 2
    return i


def statement_spans(sql: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each non-empty statement of ``sql``, ``;`` excluded and
    surrounding whitespace trimmed; a string of only comments and ``;`` has none."""
    spans: list[tuple[int, int]] = []
    n = len(sql)
    i = 0
    start = -1  # first character of the statement's first token
    last = 0  # end of its last token
    paren = begin = 0
    words: list[str] = []  # the statement's first words, lowercase
    match = _TOKEN.match
    while i < n:
        m = match(sql, i)
        assert m is not None  # the last alternative matches any character
        kind = m.lastgroup
        j = m.end()
        if kind == "ws" or kind == "line":
            i = j
            continue
        if kind == "block":
            i = _block_end(sql, j)
            continue
        if kind == "semi" and paren == 0 and begin == 0:
            if start >= 0:
                spans.append((start, last))
            start, paren, begin = -1, 0, 0
            words.clear()
            i = j
            continue
        if kind == "str" or kind == "estr":
            lit = (_ESTR_END if kind == "estr" else _STR_END).match(sql, j)
            j = lit.end() if lit else n
        elif kind == "dollar":
            close = sql.find(m.group(), j)
            j = close + len(m.group()) if close >= 0 else n
        elif kind == "word":
            j = _WORD_TAIL.match(sql, j).end()  # type: ignore[union-attr]
            w = sql[i:j].lower()
            if len(words) < 4:
                words.append(w)
            if paren == 0 and _in_routine(words):
                if w == "begin" or (w == "case" and begin):
                    begin += 1
                elif w == "end" and begin:
                    begin -= 1
        elif kind == "open":
            paren += 1
        elif kind == "close" and paren:
            paren -= 1
        if start < 0:
            start = i
        last = j
        i = j
    if start >= 0:
        spans.append((start, last))
    return spans


def _in_routine(words: list[str]) -> bool:
    return any(tuple(words[:len(r)]) == r for r in _ROUTINE)


def first_keyword(sql: str) -> str:
    """The first word of a statement, upper case (comments, parentheses and ``;`` before it
    skipped): the command when the server gave no tag."""
    n = len(sql)
    i = 0
    match = _TOKEN.match
    while i < n:
        m = match(sql, i)
        assert m is not None
        kind = m.lastgroup
        if kind == "word":
            end = _WORD_TAIL.match(sql, m.end()).end()  # type: ignore[union-attr]
            return sql[i:end].upper()
        if kind == "block":
            i = _block_end(sql, m.end())
        elif kind in ("ws", "line", "open", "semi"):
            i = m.end()
        else:
            return ""
    return ""
