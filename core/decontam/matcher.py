"""The matchers: sampled / exhaustive 50-character substrings (OpenAI) and 13-word n-grams (GPT-3 style).

How the substring matcher is fast in pure Python + numpy: every pattern (a sampled window, or in exhaustive mode
the whole processed question) has all its q-character grams in a dict keyed by a 64-bit hash. A training
batch is processed, joined into one buffer (1 byte per character when ASCII, else UTF-32) and hashed with
numpy at a stride S = m_min - q + 1 (m_min: the shortest length that counts as a match), reading each gram as
unaligned 64-bit words of the buffer, so every occurrence of >= m_min characters contains one hashed gram.
A bitmap drops almost all positions in C; the few candidates are verified exactly and extended to the maximal
common substring with slice comparisons. Patterns are grouped in tiers by min length (short MBPP questions
would otherwise shrink the stride for all). Patterns shorter than TINY characters are searched with `str.find`.

A match never spans two training examples, nor two fields of one example: each field (and each message of a
chat list) is its own segment, so every reported span lies in one field's raw text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from core.cancel import Cancelled
from core.decontam.normalize import ascii_tables, offset_array, offset_map, process, raw_span

TINY = 16  # patterns shorter than this are searched with str.find
SHORT_OMAP = 1 << 16  # characters of a matched field up to which its offset map is a plain list
_MULT = np.uint64(0x9E3779B97F4A7C15)
MODES = ("sampled", "exhaustive", "ngram13")
NGRAM = 13
_WORD_RE = re.compile(r"[^\W_]+")  # runs of str.isalnum() characters


@dataclass
class Item:
    """One eval item as the matcher sees it."""

    benchmark: str
    task_id: str
    question: str  # raw
    processed: str = ""
    omap: list[int] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)  # processed [start, end) of sampled windows


# A hit: (row, field, item index, window index or -1, eval raw span, train raw span, processed text)
Hit = tuple[int, str, int, int, tuple[int, int], tuple[int, int], str]


def sample_windows(processed: str, *, seed: int, benchmark: str, task_id: str, window: int = 50,
                   count: int = 3) -> list[tuple[int, int]]:
    """`count` distinct random windows of `window` characters, reproducible from seed + benchmark + task id.

    The whole text if it is shorter than `window` (one window); none if it is empty."""
    n = len(processed)
    if n == 0:
        return []
    if n <= window:
        return [(0, n)]
    rng = random.Random(f"{seed}:{benchmark}:{task_id}")
    starts = rng.sample(range(n - window + 1), min(count, n - window + 1))  # distinct windows
    return [(s, s + window) for s in starts]


def prepare_items(tasks: list[tuple[str, str, str]], *, mode: str, seed: int, window: int,
                  casefold: bool) -> list[Item]:
    """tasks: (benchmark, task_id, raw question)."""
    items = []
    for bench, tid, question in tasks:
        item = Item(bench, tid, question)
        if mode != "ngram13":
            item.processed = process(question, casefold)
            item.omap = offset_map(question)
            if mode == "sampled":
                item.windows = sample_windows(item.processed, seed=seed, benchmark=bench, task_id=tid, window=window)
        items.append(item)
    return items


# Tiers of patterns by the shortest match they need: (lowest min length, gram length in characters).
# Longer grams hit common code fragments less often; the stride (min length - q + 1) stays large. One pass
# per tier: short MBPP questions (30+) share the 50-character windows' pass at stride 15.
TIERS = ((TINY, 8), (30, 16))


def _word_hashes(buf: bytes, itemsize: int, q: int, stride: int) -> np.ndarray:
    """Hash of the q characters at character positions 0, stride, 2*stride, ... of a buffer holding
    `itemsize` bytes per character, read as q * itemsize / 8 unaligned 64-bit words per position (no copies)."""
    n = len(buf) // itemsize
    count = (n - q) // stride + 1 if n >= q else 0
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = None
    for w in range(q * itemsize // 8):
        word = np.ndarray(shape=(count,), dtype="<u8", buffer=buf, offset=w * 8, strides=(stride * itemsize,))
        h = word * _MULT if h is None else (h + word) * _MULT
    return h


class _Tier:
    """Patterns whose min length is in one band, with their grams for ASCII (1 byte per character) and UTF-32
    buffers; each table is built on first use (a corpus without non-ASCII rows never needs the second)."""

    def __init__(self, q: int, m_min: int, patterns: list[tuple[int, str]]):
        self.q, self.stride = q, m_min - q + 1
        self.patterns = patterns
        self._tables: dict[int, tuple[dict[int, int | tuple[int, ...]], np.ndarray, np.uint64]] = {}

    def table(self, itemsize: int) -> tuple[dict[int, int | tuple[int, ...]], np.ndarray, np.uint64]:
        """(gram hash -> pattern k << 32 | offset or a tuple of those, bitmap of hashes, bitmap shift)."""
        if itemsize in self._tables:
            return self._tables[itemsize]
        q = self.q
        grams: dict[int, int | tuple[int, ...]] = {}
        members = [(k, t) for k, t in self.patterns if itemsize == 4 or t.isascii()]
        joined = "".join(t for _, t in members)
        buf = joined.encode("ascii") if itemsize == 1 else joined.encode("utf-32-le", "surrogatepass")
        keys = _word_hashes(buf, itemsize, q, 1)  # one numpy pass for all patterns
        hashes = keys.tolist()
        start = 0
        for k, text in members:
            base = k << 32
            for off, h in enumerate(hashes[start: start + len(text) - q + 1]):
                entries = grams.get(h)
                # ints and tuples of ints: the dict holds no GC-tracked objects, so collections skip it
                grams[h] = base | off if entries is None else (
                    (entries, base | off) if type(entries) is int else (*entries, base | off))
            start += len(text)
        bits = min(26, max(16, (len(keys) * 128).bit_length()))
        shift = np.uint64(64 - bits)
        bitmap = np.zeros(1 << bits, dtype=bool)
        bitmap[keys >> shift] = True  # (a few hashes span two patterns: harmless extra bits)
        self._tables[itemsize] = (grams, bitmap, shift)
        return self._tables[itemsize]


def _match_len_forward(a, i: int, b, j: int, limit: int) -> int:
    """Length of the common prefix of a[i:] and b[j:], at most `limit` (slice compares, binary search)."""
    if a[i: i + limit] == b[j: j + limit]:
        return limit
    lo, hi = 0, limit  # a[i:i+lo] == b[j:j+lo], a[i:i+hi] != b[j:j+hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[i: i + mid] == b[j: j + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _match_len_backward(a, i: int, b, j: int, limit: int) -> int:
    """Length of the common suffix of a[:i] and b[:j], at most `limit`."""
    if a[i - limit: i] == b[j - limit: j]:
        return limit
    lo, hi = 0, limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[i - mid: i] == b[j - mid: j]:
            lo = mid
        else:
            hi = mid
    return lo


class SubstringMatcher:
    """Sampled and exhaustive modes.

    A pattern is a sampled window (it must occur whole) or, in exhaustive mode, the whole processed question
    (any common substring of >= min(window, len) characters counts, reported as maximal spans)."""

    def __init__(self, items: list[Item], *, mode: str, window: int = 50, casefold: bool = False):
        self.items, self.mode, self.casefold = items, mode, casefold
        # patterns: (item index, window index or -1, processed text, offset of text in the question, min length)
        self.patterns: list[tuple[int, int, str, int, int]] = []
        for i, item in enumerate(items):
            if mode == "sampled":
                seen = set()
                for w, (s, e) in enumerate(item.windows):
                    if (s, e) not in seen:
                        seen.add((s, e))
                        self.patterns.append((i, w, item.processed[s:e], s, e - s))
            elif item.processed:
                self.patterns.append((i, -1, item.processed, 0, min(window, len(item.processed))))
        self.tiny = [k for k, p in enumerate(self.patterns) if p[4] < TINY]
        self.pat_bytes = [p[2].encode("ascii") if p[2].isascii() else None for p in self.patterns]
        self.tiers = []
        bounds = [lo for lo, _ in TIERS[1:]] + [1 << 62]
        for (lo, q), hi in zip(TIERS, bounds, strict=True):
            members = [(k, p[2]) for k, p in enumerate(self.patterns) if lo <= p[4] < hi]
            if members:
                self.tiers.append(_Tier(q, min(self.patterns[k][4] for k, _ in members), members))

    def scan(self, rows: list[tuple[int, list[tuple[str, str]]]]) -> list[Hit]:
        """Hits in a batch of rows: (row index, [(field, raw text), ...])."""
        seg_meta: list[tuple[int, str, str]] = []  # (row, field, raw)
        ascii_parts: list[bytes] = []
        ascii_ids: list[int] = []
        uni_parts: list[str] = []
        uni_ids: list[int] = []
        cf = self.casefold
        table, delete = ascii_tables(cf)
        sid = 0
        for row, segs in rows:  # the hottest loop: one pass over every field of every row
            for fname, raw in segs:
                seg_meta.append((row, fname, raw))
                if raw.isascii():
                    ascii_parts.append(raw.encode("ascii").translate(table, delete))
                    ascii_ids.append(sid)
                else:
                    uni_parts.append(process(raw, cf))
                    uni_ids.append(sid)
                sid += 1
        found: dict[int, dict[tuple[int, int], list[tuple[int, int, int]]]] = {}  # sid -> (pat, diag) -> spans
        for parts, ids, is_bytes in ((ascii_parts, ascii_ids, True), (uni_parts, uni_ids, False)):
            if parts and self.tiers:
                self._scan_buffer(parts, ids, is_bytes, found)
        if self.tiny:
            for parts, ids in ((ascii_parts, ascii_ids), (uni_parts, uni_ids)):
                for text, sid in zip(parts, ids, strict=True):
                    for k in self.tiny:
                        self._find_tiny(k, text, sid, found)
        return self._hits(found, seg_meta)

    def _find_tiny(self, k: int, text, sid: int, found) -> None:
        """A pattern whose min length is below TINY (short windows or questions): plain `find`.

        In exhaustive mode with a window shorter than the question, every window is searched and runs of
        matching windows on one alignment are merged, as the gram path does."""
        pat = self.pat_bytes[k] if isinstance(text, bytes) else self.patterns[k][2]
        if pat is None:
            return
        need = self.patterns[k][4]
        by_diag: dict[int, list[int]] = {}
        for i in range(len(pat) - need + 1):
            pos = text.find(pat[i: i + need])
            while pos >= 0:
                by_diag.setdefault(pos - i, []).append(i)
                if self.mode == "sampled":
                    break
                pos = text.find(pat[i: i + need], pos + 1)
        for diag, starts in by_diag.items():
            starts.sort()
            run = starts[0]
            for a, b in zip(starts, [*starts[1:], None], strict=True):
                if b is None or b != a + 1:
                    found.setdefault(sid, {}).setdefault((k, diag), []).append((run, a + need, run + diag))
                    run = b

    def _scan_buffer(self, parts, ids, is_bytes, found) -> None:
        buf = b"".join(parts) if is_bytes else "".join(parts)
        itemsize = 1 if is_bytes else 4
        hashbuf = buf if is_bytes else buf.encode("utf-32-le", "surrogatepass")
        lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        ends = np.cumsum(lens)
        starts = ends - lens
        for tier in self.tiers:
            grams, bitmap, shift = tier.table(itemsize)
            hashes = _word_hashes(hashbuf, itemsize, tier.q, tier.stride)
            cand = np.flatnonzero(bitmap[hashes >> shift])
            if len(cand):
                positions = cand * tier.stride
                self._verify(buf, is_bytes, grams, tier.q, hashes[cand].tolist(), positions.tolist(),
                             np.searchsorted(ends, positions, side="right").tolist(), starts, ends, ids, found)

    def _verify(self, buf, is_bytes, grams, Q, hashes, positions, segs, starts, ends, ids, found) -> None:
        sampled = self.mode == "sampled"
        for h, p, si in zip(hashes, positions, segs, strict=True):
            entries = grams.get(h)
            if entries is None:
                continue
            s0, s1 = int(starts[si]), int(ends[si])
            if p + Q > s1:
                continue  # the gram crosses into the next segment
            sid = ids[si]
            for entry in (entries,) if type(entries) is int else entries:
                k, off = entry >> 32, entry & 0xFFFFFFFF
                _, _, ptext, _, need = self.patterns[k]
                pat = self.pat_bytes[k] if is_bytes else ptext
                if pat is None or buf[p: p + Q] != pat[off: off + Q]:
                    continue
                diag = p - s0 - off
                spans = found.get(sid, {}).get((k, diag))
                if spans and any(a <= off < b for a, b, _ in spans):
                    continue
                left = _match_len_backward(pat, off, buf, p, min(off, p - s0))
                right = _match_len_forward(pat, off + Q, buf, p + Q, min(len(pat) - off - Q, s1 - p - Q))
                a, b = off - left, off + Q + right
                if b - a < need:
                    continue
                if sampled and sid in found and any(key[0] == k for key in found[sid]):
                    # one occurrence per window and row field: keep the first (smallest offset)
                    old_key = next(key for key in found[sid] if key[0] == k)
                    if found[sid][old_key][0][2] <= p - s0 - left:
                        continue
                    del found[sid][old_key]
                found.setdefault(sid, {}).setdefault((k, diag), []).append((a, b, p - s0 - left))

    def _hits(self, found, seg_meta) -> list[Hit]:
        hits: list[Hit] = []
        for sid in sorted(found):
            row, fname, raw = seg_meta[sid]
            # A list is quickest for the usual field; past SHORT_OMAP characters a numpy array (a list takes
            # ~36 bytes per character: a 300 MB field would need 10 GB)
            omap = offset_map(raw) if len(raw) < SHORT_OMAP else offset_array(raw)
            for (k, _diag), spans in found[sid].items():
                item_idx, widx, ptext, poff, _ = self.patterns[k]
                item = self.items[item_idx]
                for a, b, t in spans:
                    hits.append((row, fname, item_idx, widx, raw_span(item.omap, poff + a, poff + b),
                                 raw_span(omap, t, t + b - a), ptext[a:b]))
        return hits


class NgramMatcher:
    """GPT-3 / lm-eval-harness style: lowercase 13-word n-grams (words: runs of alphanumerics).

    Questions shorter than 13 words are matched as their whole word sequence. Consecutive matching n-grams on
    the same alignment merge into one maximal span."""

    def __init__(self, items: list[Item], n: int = NGRAM):
        self.items, self.n = items, n
        self.qwords: list[list[tuple[str, int, int]]] = []
        self.grams: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        for i, item in enumerate(items):
            words = [(m.group().lower(), m.start(), m.end()) for m in _WORD_RE.finditer(item.question)]
            self.qwords.append(words)
            size = min(n, len(words))
            for j in range(len(words) - size + 1) if size else ():
                self.grams.setdefault(tuple(w for w, _, _ in words[j: j + size]), []).append((i, j))
        self.sizes = sorted({len(g) for g in self.grams})
        self.firsts = {g[0] for g in self.grams}

    def scan(self, rows: list[tuple[int, list[tuple[str, str]]]]) -> list[Hit]:
        hits: list[Hit] = []
        for row, segs in rows:
            for fname, raw in segs:
                hits.extend(self._scan_text(row, fname, raw))
        return hits

    def _scan_text(self, row: int, fname: str, raw: str) -> list[Hit]:
        words = [w.lower() for w in _WORD_RE.findall(raw)]
        found: dict[tuple[int, int], list[int]] = {}  # (item, diag) -> matching start word positions
        for pos, w in enumerate(words):
            if w not in self.firsts:
                continue
            for size in self.sizes:
                for item_idx, j in self.grams.get(tuple(words[pos: pos + size]), ()):
                    if len(self.qwords[item_idx]) == size or size == self.n:
                        found.setdefault((item_idx, pos - j), []).append(j)
        if not found:
            return []
        spans = [(m.start(), m.end()) for m in _WORD_RE.finditer(raw)]
        hits: list[Hit] = []
        for (item_idx, diag), starts in sorted(found.items()):
            qw = self.qwords[item_idx]
            size = min(self.n, len(qw))
            starts = sorted(set(starts))
            run_start = prev = starts[0]
            for j in [*starts[1:], None]:
                if j is not None and j == prev + 1:
                    prev = j
                    continue
                a, b = run_start, prev + size  # question words [a, b)
                hits.append((row, fname, item_idx, -1, (qw[a][1], qw[b - 1][2]),
                             (spans[a + diag][0], spans[b - 1 + diag][1]), " ".join(w for w, _, _ in qw[a:b])))
                if j is not None:
                    run_start = prev = j
        return hits


# ---------------------------------------------------------------------------------------- long texts

LONG_WINDOW_CHARS = 1 << 20  # a long text is matched this many characters at a time, plus context


def _count_alnum(text: str) -> int:
    return len(process(text))


def _count_words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _context_end(buf: str, i: int, need: int, count, done: bool) -> int | None:
    """An index j >= i such that buf[i:j] holds `need` units and j is not inside a word; None when the
    buffer ends first and more text is coming."""
    n, step = len(buf), max(64, 2 * need)
    while True:
        j = min(n, i + step)
        if count(buf[i:j]) >= need:
            break
        if j == n:
            return n if done else None
        step *= 2
    while j < n and buf[j].isalnum():
        j += 1
    return None if j == n and not done else j


def _context_start(buf: str, i: int, need: int, count) -> int:
    """An index j <= i such that buf[j:i] holds `need` units (or j == 0) and j is not inside a word."""
    step = max(64, 2 * need)
    while True:
        j = max(0, i - step)
        if j == 0 or count(buf[j:i]) >= need:
            break
        step *= 2
    while j > 0 and buf[j - 1].isalnum():
        j -= 1
    return j


def scan_long(matcher, pieces, fname: str, cancel=None) -> tuple[list[Hit], int]:
    """Hits in ONE long text given as consecutive pieces, with memory bounded by a window, not the text;
    returns (hits with row 0 and spans over the whole text, its length in characters).

    The text is cut into own regions of LONG_WINDOW_CHARS; each is matched with enough context on both sides
    (as many alphanumerics, or words for n-grams, as the longest pattern holds, and never inside a word)
    that every match STARTING in the region lies whole in the window. Only those are kept, so each match is
    found once, whole, exactly as in the text matched at once."""
    if isinstance(matcher, NgramMatcher):
        need, count = max((len(q) for q in matcher.qwords), default=0) + matcher.n, _count_words
    else:
        need, count = max((len(p[2]) for p in matcher.patterns), default=0) + 1, _count_alnum
    it = iter(pieces)
    buf, buf_at, own, left, done = "", 0, 0, 0, False
    hits: list[Hit] = []
    while True:
        own_end = right = None
        while True:
            while not done and buf_at + len(buf) - own < LONG_WINDOW_CHARS + 4 * need + 64:
                try:
                    buf += next(it)
                except StopIteration:
                    done = True
            own_end = min(own + LONG_WINDOW_CHARS, buf_at + len(buf))
            end = _context_end(buf, own_end - buf_at, need, count, done)
            if end is not None:
                right = buf_at + end
                break
            try:  # the right context runs past what is buffered: read on
                buf += next(it)
            except StopIteration:
                done = True
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        window = buf[left - buf_at: right - buf_at]
        for _row, name, item, widx, espan, (ts, te), text in matcher.scan([(0, [(fname, window)])]):
            if own <= left + ts < own_end:
                hits.append((0, name, item, widx, espan, (left + ts, left + te), text))
        if done and own_end >= buf_at + len(buf):
            break
        own = own_end
        left = buf_at + _context_start(buf, own - buf_at, need, count)
        buf, buf_at = buf[left - buf_at:], left
    if getattr(matcher, "mode", None) == "sampled":
        # one occurrence per window and field, the first, as when the text is matched at once
        first: dict[tuple[int, int], Hit] = {}
        for h in sorted(hits, key=lambda h: h[5][0]):
            first.setdefault((h[2], h[3]), h)
        hits = list(first.values())
    return hits, buf_at + len(buf)


def make_matcher(items: list[Item], *, mode: str, window: int, casefold: bool):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "ngram13":
        return NgramMatcher(items)
    return SubstringMatcher(items, mode=mode, window=window, casefold=casefold)
