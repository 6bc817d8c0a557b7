"""Very long JSONL lines, read without holding them: the line's structure is parsed from the file in blocks,
and every string longer than LONG_STRING_BYTES stays in the file as a LongText, decoded piece by piece when
the matcher reads it.

Why: one 300 MB line held as bytes, then as a Python str (up to 4 bytes per character when a single character
is outside Latin-1), then processed and mapped character by character took 27x its size. Streamed, the
memory a long line costs is a few blocks plus the matcher's window (see matcher.scan_long).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from core.decontam.errors import READ_BYTES, DecontamError

LONG_LINE_BYTES = 8 << 20  # a JSONL line longer than this is parsed from the file in a stream
LONG_STRING_BYTES = 1 << 20  # a JSON string longer than this (encoded) is not held: it becomes a LongText
MAX_TOKEN_BYTES = 1 << 20  # a number or literal longer than this is malformed
MAX_DEPTH = 100  # nesting of arrays/objects within a row
PIECE_BYTES = READ_BYTES  # a LongText is decoded this many bytes at a time
_WS = frozenset(b" \t\r")
_DELIMITERS = frozenset(b",]}\n \t\r")
_BACKSLASH = 0x5C
_QUOTE = b'"'


class LongRow(dict):
    """A row parsed by LineParser: the only kind of row that may hold LongText values (the matcher's hot
    loop tells it apart with one type check)."""


class LongText:
    """A JSON string of a training row too long to hold in memory: where its bytes are in the file.

    `pieces()` yields its text in order (JSON escapes decoded, never splitting an escape, a surrogate pair or
    a UTF-8 sequence). It is not a str on purpose: code that needs the whole text has to say so."""

    __slots__ = ("end", "path", "start")

    def __init__(self, path: str, start: int, end: int):
        self.path, self.start, self.end = path, start, end  # byte offsets of the content between the quotes

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"<text of {self.nbytes:,} bytes at byte {self.start} of {self.path}>"

    __str__ = __repr__

    def pieces(self, block: int | None = None) -> Iterator[str]:
        block = block or PIECE_BYTES
        decoder = codecs.getincrementaldecoder("utf-8")()
        carry = ""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            left = self.end - self.start
            while left > 0:
                data = f.read(min(block, left))
                if not data:
                    raise DecontamError(f"{self.path}: the file changed while it was read (ended at byte "
                                        f"{self.end - left})")
                left -= len(data)
                try:
                    text = carry + decoder.decode(data, final=left == 0)
                except UnicodeDecodeError as exc:
                    raise DecontamError(f"{self.path}: undecodable bytes near byte {self.end - left}: not UTF-8 "
                                        f"({exc.reason})") from None
                cut = _safe_cut(text) if left else len(text)
                piece, carry = text[:cut], text[cut:]
                if piece:
                    yield self._decode(piece)

    def _decode(self, piece: str) -> str:
        try:
            return json.loads('"' + piece + '"')
        except json.JSONDecodeError as exc:
            raise DecontamError(f"{self.path}: malformed JSON string near byte {self.start}: {exc.msg}") from None

    def read(self) -> str:
        """The whole text (only for callers that know it fits in memory)."""
        return "".join(self.pieces())


def _safe_cut(text: str) -> int:
    """Where `text` (which starts at a safe point) can be cut so that no JSON escape is split and a high
    surrogate escape stays with the low one that may follow: len(text), or the start of the escape to keep."""
    n = len(text)
    while True:
        cut = _cut_before_pending_escape(text, n)
        if cut == n:
            return n
        n = cut  # what is left may itself end in a high surrogate escape: look again


def _cut_before_pending_escape(text: str, n: int) -> int:
    """n, or the start of the escape at the end of text[:n] that cannot be decoded on its own yet."""
    pos = text.rfind("\\", max(0, n - 6), n)
    if pos < 0:
        return n
    run = pos
    while run > 0 and text[run - 1] == "\\":
        run -= 1
    if (pos - run + 1) % 2 == 0:  # the backslashes pair up: each escapes the next, nothing is pending
        return n
    if pos == n - 1:
        return pos  # a lone backslash at the end: its escaped character comes next
    if text[pos + 1] != "u":
        return n
    if pos + 6 > n:
        return pos  # \uXXX: incomplete
    if pos + 6 == n and 0xD800 <= int(text[pos + 2: pos + 6], 16) <= 0xDBFF:
        return pos  # a high surrogate at the very end: its low half may come next
    return n


class LineParser:
    """Parses one JSONL line from the file, from byte `start`, in blocks. Strings longer than
    LONG_STRING_BYTES become LongText; everything else is what json.loads gives."""

    def __init__(self, f: BinaryIO, path: str, start: int, limit: int, where: Any):
        self.f, self.path, self.start, self.limit, self.where = f, path, start, limit, where
        f.seek(start)
        self.buf = b""
        self.base = start  # absolute offset of buf[0]
        self.i = 0

    # ---------------------------------------------------------------------------------------- reading

    def _fill(self, want: int = READ_BYTES) -> bool:
        """Keep the unread part of the buffer and read up to `want` more bytes; False at the end."""
        available = self.limit - (self.base + len(self.buf))
        if available <= 0:
            return False
        data = self.f.read(min(want, available))
        if not data:
            return False
        self.buf = self.buf[self.i:] + data
        self.base += self.i
        self.i = 0
        return True

    def _peek(self) -> int | None:
        while self.i >= len(self.buf):
            if not self._fill():
                return None
        return self.buf[self.i]

    def _ws(self) -> int | None:
        while True:
            c = self._peek()
            if c is None or c not in _WS:
                return c
            self.i += 1

    def error(self, what: str) -> DecontamError:
        return DecontamError(f"{self.where}: malformed JSON line ({what} at byte {self.base + self.i - self.start} "
                             "of the line)")

    # ---------------------------------------------------------------------------------------- grammar

    def line(self) -> tuple[LongRow | None, int]:
        """(the row, or None for a blank line; offset just past the line's newline)."""
        c = self._ws()
        row = None
        if c is not None and c != 0x0A:
            row = self._value(0)
            c = self._ws()
        if c is not None and c != 0x0A:
            raise self.error("extra data after the JSON value")
        end = self.base + self.i + (1 if c == 0x0A else 0)
        if row is not None and type(row) is not dict:
            raise DecontamError(f"{self.where}: expected a JSON object, got {type(row).__name__}")
        return (LongRow(row) if row is not None else None), end

    def _value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} levels deep")
        c = self._ws()
        if c == 0x7B:  # {
            return self._object(depth)
        if c == 0x5B:  # [
            return self._array(depth)
        if c == 0x22:  # "
            return self._string()
        if c is None or c == 0x0A:
            raise self.error("unexpected end of the line")
        return self._scalar()

    def _object(self, depth: int) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        if self._ws() == 0x7D:
            self.i += 1
            return out
        while True:
            if self._ws() != 0x22:
                raise self.error("expected a quoted key")
            key = self._string()
            if isinstance(key, LongText):
                raise self.error(f"a key longer than {LONG_STRING_BYTES:,} bytes")
            if self._ws() != 0x3A:
                raise self.error("expected ':'")
            self.i += 1
            out[key] = self._value(depth + 1)
            c = self._ws()
            self.i += 1
            if c == 0x7D:
                return out
            if c != 0x2C:
                self.i -= 1
                raise self.error("expected ',' or '}'")

    def _array(self, depth: int) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        if self._ws() == 0x5D:
            self.i += 1
            return out
        while True:
            out.append(self._value(depth + 1))
            c = self._ws()
            self.i += 1
            if c == 0x5D:
                return out
            if c != 0x2C:
                self.i -= 1
                raise self.error("expected ',' or ']'")

    def _scalar(self) -> Any:
        """A number, true, false or null (json.loads decides), up to the next delimiter."""
        while True:
            j, n = self.i, len(self.buf)
            while j < n and self.buf[j] not in _DELIMITERS:  # tokens are short: a byte loop is fine
                j += 1
            if j < n or n - self.i > MAX_TOKEN_BYTES or not self._fill():
                break
        token = self.buf[self.i: j]
        if len(token) > MAX_TOKEN_BYTES:
            raise self.error(f"a value longer than {MAX_TOKEN_BYTES:,} bytes")
        try:
            value = json.loads(token)
        except ValueError as exc:  # JSONDecodeError, and integers beyond Python's 4300-digit limit
            raise self.error(f"bad value {token[:40]!r}: {str(exc)[:100]}") from None
        self.i = j
        return value

    def _string(self) -> str | LongText:
        """At an opening quote: a short string decoded, or a LongText for a long one."""
        # The first LONG_STRING_BYTES after the quote in the buffer: the usual string ends in there.
        while len(self.buf) - self.i < LONG_STRING_BYTES + 2 and self._fill(LONG_STRING_BYTES):
            pass
        content = self.i + 1
        stop = min(len(self.buf), content + LONG_STRING_BYTES + 1)
        newline = self.buf.find(b"\n", content, stop)  # a JSON string never spans lines
        end = _closing_quote(self.buf, content, stop if newline < 0 else newline)
        if end is None and newline >= 0:
            raise self.error("a string that is not closed on its line")
        if end is not None:
            raw = self.buf[self.i: end + 1]
            self.i = end + 1
            try:
                return json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise self.error(f"bad string: {exc}") from None
        # A long string: find its end in the file, keeping nothing of it.
        start = self.base + content
        scanned = content
        backslashes = 0
        while True:
            q, backslashes = _scan_for_quote(self.buf, scanned, backslashes)
            newline = self.buf.find(b"\n", scanned, len(self.buf) if q is None else q)
            if newline >= 0:
                self.i = newline
                raise self.error("a string that is not closed on its line")
            if q is not None:
                end_abs = self.base + q
                self.i = q + 1
                return LongText(self.path, start, end_abs)
            self.i = len(self.buf)
            if not self._fill():
                raise self.error("a string that is never closed")
            scanned = 0


def _closing_quote(buf: bytes, start: int, stop: int) -> int | None:
    """Index of the first unescaped quote in buf[start:stop], or None."""
    j = start
    while True:
        q = buf.find(_QUOTE, j, stop)
        if q < 0:
            return None
        k = q
        while k > start and buf[k - 1] == _BACKSLASH:
            k -= 1
        if (q - k) % 2 == 0:
            return q
        j = q + 1


def _scan_for_quote(buf: bytes, start: int, backslashes: int) -> tuple[int | None, int]:
    """The first unescaped quote in buf[start:], given `backslashes` unresolved ones just before `start`;
    (its index, 0), or (None, the backslashes left unresolved at the end of buf)."""
    j = start
    while True:
        q = buf.find(_QUOTE, j)
        if q < 0:
            tail = buf[start:]
            stripped = len(tail.rstrip(b"\\"))
            run = len(tail) - stripped
            return None, (backslashes + run) if stripped == 0 else run
        k = q
        while k > start and buf[k - 1] == _BACKSLASH:
            k -= 1
        run = q - k + (backslashes if k == start else 0)
        if run % 2 == 0:
            return q, 0
        j = q + 1
        start, backslashes = q + 1, 0
