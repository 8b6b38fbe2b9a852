"""Tables for a terminal: a rich ``Table`` that fits the console by hiding whole columns.

``reatt status`` and ``reatt report`` both print tables whose numbers must never be cut to
"5.0…" or folded over lines. Printed into a console too narrow for it, a ``FittingTable``
hides its secondary columns, in the order given, until the rest fits, and says which in its
caption.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text


class FittingTable(Table):
    """A rich Table that hides columns rather than cut their values.

    ``droppable``: column indices, hidden in this order while the table is too wide. ``caps``:
    the width a column that wraps (like a reason) needs at least, by index. ``note``: what the
    caption gains when columns are hidden, with ``{columns}`` for their headers.
    """

    def __init__(
        self,
        *args: Any,
        droppable: Sequence[int] = (),
        caps: dict[int, int] | None = None,
        note: str = " Hidden, for lack of width: {columns}.",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.droppable = tuple(droppable)
        self.caps = dict(caps or {})
        self.note = note

    def _with(self, kept: list[Any], *, capped: bool = False) -> Table:
        """A copy of this table with the columns ``kept`` only (``capped``: each capped column at
        its cap, to measure). rich numbers each column (``Column._index``, for the padding of
        the first and the last): the copies are numbered again, or the widths go wrong."""
        caps = {id(self.columns[index]): cap for index, cap in self.caps.items()}
        out = copy.copy(self)
        out.columns = []
        for index, column in enumerate(kept):
            cap = caps.get(id(column)) if capped else None
            column = copy.copy(column)
            column._index = index
            if cap is not None:
                column.max_width = cap
            out.columns.append(column)
        return out

    def __rich_console__(self, console: Any, options: Any) -> Any:
        kept, hidden = list(self.columns), []
        wide = options.update_width(100_000)  # the natural width, not clamped to the console's
        for index in self.droppable:
            needed = Table.__rich_measure__(self._with(kept, capped=True), console, wide).maximum
            if needed <= options.max_width:
                break
            hidden.append(str(self.columns[index].header))
            kept.remove(self.columns[index])
        table = self._with(kept)
        if hidden:
            caption = Text.assemble(self.caption or "")  # a str or a Text, styles kept
            caption.append(self.note.format(columns=", ".join(hidden)))
            table.caption = caption
        yield from Table.__rich_console__(table, console, options)
