"""Text processing for the contamination matcher: keep only `str.isalnum()` characters.

OpenAI's method (GPT-4 technical report, contamination appendix) removes spaces and symbols and keeps letters
and digits. `process` gives the processed text; `offset_map` gives, for each processed character, the index of
the raw character it came from, so a processed span [s, e) maps back to the raw span
[omap[s], omap[e - 1] + 1) and that raw span processes to exactly the same string.

casefold is applied per character and only where it keeps one character (ß -> ss would break the 1:1 map);
such characters are lowercased instead when that keeps one character, else kept as they are.
ASCII rows take a `bytes.translate` fast path (about 4x str.translate); other rows go through `str.translate`
with a lazily filled table, which is exact for any Unicode text (lone surrogates included).
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"\W+")  # re's \w is str.isalnum() or "_" (and "_" is gone after the bytes pass)
_ASCII_ONLY_DELETE = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_DELETE = bytes(c for c in range(128) if not chr(c).isalnum()) + bytes(range(128, 256))
_ASCII_IDENTITY = bytes(range(256))
_ASCII_LOWER = bytes(ord(chr(c).lower()) if c < 128 else c for c in range(256))


def fold_char(ch: str) -> str:
    """The casefolded form of one alphanumeric character, always a single character."""
    folded = ch.casefold()
    if len(folded) == 1:
        return folded
    lowered = ch.lower()
    return lowered if len(lowered) == 1 else ch


class _Table(dict):
    """A str.translate table filled on demand: code point -> None (dropped) or the kept character."""

    def __init__(self, casefold: bool):
        super().__init__()
        self.casefold = casefold

    def __missing__(self, code: int) -> str | None:
        ch = chr(code)
        value = (fold_char(ch) if self.casefold else ch) if ch.isalnum() else None
        self[code] = value
        return value


_TABLES = {False: _Table(False), True: _Table(True)}


def process(text: str, casefold: bool = False) -> str:
    """Keep only alphanumeric characters (optionally casefolded)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_LOWER if casefold else None, _ASCII_DELETE).decode("ascii")
    # Mostly-ASCII text: drop ASCII symbols in bytes first (UTF-8 continuation bytes are >= 0x80 and stay),
    # then the few non-ASCII symbols with a regex; about 3x faster than str.translate on the whole text.
    kept = text.encode("utf-8", "surrogatepass").translate(_ASCII_LOWER if casefold else None, _ASCII_ONLY_DELETE)
    out = kept.decode("utf-8", "surrogatepass")
    if not out.isalnum():  # a C-speed check; most non-ASCII rows hold letters only (é, ß) by now
        out = _NON_WORD.sub("", out)
    return out.translate(_TABLES[True]) if casefold else out


def process_reference(text: str, casefold: bool = False) -> str:
    """The definition, character by character (used by tests to check `process`)."""
    return "".join(fold_char(c) if casefold else c for c in text if c.isalnum())


def ascii_tables(casefold: bool) -> tuple[bytes, bytes]:
    """(table, deletechars) for `ascii_bytes.translate`: the fast path inlined by the matcher's hot loop."""
    return (_ASCII_LOWER if casefold else _ASCII_IDENTITY), _ASCII_DELETE


_ASCII_ALNUM = None  # numpy lookup table, built on first use


def offset_map(text: str) -> list[int]:
    """Raw index of each processed character (casefold keeps one character per character, so it is the same)."""
    if text.isascii():
        import numpy as np

        global _ASCII_ALNUM
        if _ASCII_ALNUM is None:
            _ASCII_ALNUM = np.array([chr(c).isalnum() if c < 128 else False for c in range(256)], dtype=bool)
        return np.flatnonzero(_ASCII_ALNUM[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]).tolist()
    return [i for i, ch in enumerate(text) if ch.isalnum()]


def offset_array(text: str):
    """offset_map as a numpy array (8 bytes per kept character, not a Python int object each): what a long
    training text with a match needs to map the match back."""
    import numpy as np

    if text.isascii():
        offset_map("")  # builds the lookup table
        return np.flatnonzero(_ASCII_ALNUM[np.frombuffer(text.encode("ascii"), dtype=np.uint8)])
    return np.fromiter((i for i, ch in enumerate(text) if ch.isalnum()), dtype=np.int64)


def raw_span(omap, start: int, end: int) -> tuple[int, int]:
    """Raw [start, end) of the processed span [start, end) (end > start); omap a list or a numpy array."""
    return int(omap[start]), int(omap[end - 1]) + 1
