"""Text from users, jobs and files made safe to show on one line of a terminal or a table cell.

Names (runs, clusters) and reasons are free text that ends up printed by the CLI and shown by the app; a
terminal executes escape sequences (`\\e[2J` clears the screen, others retitle the window or move the cursor),
a newline breaks one-item-per-line output, and bidirectional overrides reorder what is read. `printable`
writes such characters as visible escapes (`\\x1b`, `\\n`, `\\u202e`) and leaves all other text as it is.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line/paragraph separators, and the bidirectional embedding/override/isolate marks.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """`text` with control characters written as Python-style escapes (one line, nothing executed)."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], str(text))


def unprintable_chars(text: str) -> list[str]:
    """The control characters in `text`, escaped (for an error message that says which)."""
    return sorted({ascii(c)[1:-1] for c in _UNPRINTABLE.findall(text)})
