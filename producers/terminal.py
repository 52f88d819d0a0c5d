"""The two consoles every ``wanq`` command writes to: progress and messages on stderr, data
(results, JSON, tables asked for) on stdout; and ``plain``, for text wanq did not write.

Rich reads ``[...]`` in printed strings as markup: a custom_id of ``[/]`` raised an error
halfway through ``wanq submit`` and ``[link=...]`` became a link. Rich also lets the escape
character through, so a batch line could move the cursor or recolour the terminal. Anything
from a batch file, the provider or the command line goes through ``plain`` before printing.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape

# C0 and C1 controls (ESC among them), DEL, bidirectional overrides and lone surrogates
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

console = Console(stderr=True, soft_wrap=True)
if not console.is_terminal:  # logs and CI: room for the progress line's counts
    console = Console(stderr=True, soft_wrap=True, width=160)
out = Console(soft_wrap=True)


def plain(value: object) -> str:
    """``value`` as literal text for Rich: markup escaped, unprintable characters shown as
    escapes (``\\x1b``, ``\\u202e``) instead of being sent to the terminal."""
    text = _UNPRINTABLE.sub(_visible, str(value))
    return escape(text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
