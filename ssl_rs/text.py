"""Text helpers every part of ssl-rs shares: the "did you mean" hint of an error and the
Markdown table of a listing or a result. Low level on purpose (standard library only), so any
module can import it without pulling in torch or the registries."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping, Sequence


def did_you_mean(name: object, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to ``name``, or ``""`` if none is close.

    The hint is meant to be appended to an error line: ``f"unknown method {name!r}{did_you_mean(...)}"``.
    A dotted name (``trainer.max_epoch``) whose whole does not match is matched on its last
    component, so a typo in the leaf of a long key is still found.
    """
    text = str(name)
    options = [str(c) for c in candidates]
    close = difflib.get_close_matches(text, options, n=1, cutoff=cutoff)
    if not close and "." in text:
        tails = {}
        for option in options:
            tails.setdefault(option.rsplit(".", 1)[-1], option)
        # a short leaf matches more loosely than a whole key: ask for at least the default ratio
        leaf = difflib.get_close_matches(text.rsplit(".", 1)[-1], list(tails), n=1, cutoff=max(cutoff, 0.6))
        close = [tails[leaf[0]]] if leaf else []
    return f"; did you mean {close[0]!r}?" if close else ""


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], align: bool = True) -> str:
    """A Markdown table of ``rows``' values in ``columns``; a missing value is an empty cell, a
    ``|`` inside one is escaped so the row keeps its columns.

    ``align``: pad the columns to one width, so the table reads as plain text on a terminal too;
    without it the cells are left as they are (tables meant for a Markdown renderer, whose
    cells hold long links).
    """
    cells = [[str(r.get(c, "")).replace("|", "\\|") for c in columns] for r in rows]
    if align:
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    else:
        widths = [0] * len(columns)
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace runs collapsed), at most ``limit``
    characters: what an error line quotes of a library's own, often multi-line, message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
