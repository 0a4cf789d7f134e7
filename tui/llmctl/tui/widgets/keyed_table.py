"""A DataTable whose rows have stable keys: each refresh updates only the cells that changed, in place.

Subclasses declare COLUMNS and turn data into `{row key: cells}`; set_rows() diffs that against what is
on screen (new rows are added, vanished ones removed, the rest touched cell by cell), so a fleet of
hundreds of rows redraws only what moved. A filter (from the `/` bar) hides rows whose key and text do
not contain every word typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None = None
    """None: as wide as the widest cell."""


def _same(a: Cell | None, b: Cell | None) -> bool:
    # rich's Text equality ignores the base style, and a colour change (green -> red) is a change here.
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return a == b


def plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


class KeyedTable(DataTable[Cell]):
    COLUMNS: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._all: dict[str, tuple[Cell, ...]] = {}
        """Every row the data has, in order, whether the filter shows it or not."""
        self._words: list[str] = []
        self._title_text = ""
        self.cells_updated = 0
        """Cells rewritten in place since the table was created (a measure of how little a refresh does)."""

    def on_mount(self) -> None:
        for column in self.COLUMNS:
            self.add_column(column.label, key=column.key, width=column.width)
        self._rebuild()

    # -- data ---------------------------------------------------------------------------------------------
    def set_rows(self, rows: Mapping[str, Sequence[Cell]]) -> int:
        """Show `rows`; returns how many cells were rewritten in place."""
        before, self._all = self._all, {key: tuple(cells) for key, cells in rows.items()}
        if not self.is_mounted or not self.columns:
            return 0  # on_mount draws _all
        changed = 0
        moved = False
        for key in before.keys() - self._all.keys():
            if key in self.rows:
                self.remove_row(key)
                moved = True
        for key, cells in self._all.items():
            shown = key in self.rows
            if not self._matches(key, cells):
                if shown:
                    self.remove_row(key)
                    moved = True
            elif not shown:
                self.add_row(*cells, key=key)
                moved = True
            else:
                for column, new, old in zip(self.COLUMNS, cells, before[key], strict=True):
                    if not _same(new, old):
                        self.update_cell(key, column.key, new)
                        changed += 1
        self.cells_updated += changed
        if moved and [r.key.value for r in self.ordered_rows] != [
                k for k, cells in self._all.items() if self._matches(k, cells)]:
            self._rebuild()  # a row arrived mid-list (a new node, a new revision): put it in its place
        return changed

    def set_title(self, title: str) -> None:
        if title != self._title_text:  # a border title change repaints the table: only when it differs
            self._title_text = title
            self.border_title = title

    def row_data(self, key: str) -> tuple[Cell, ...] | None:
        return self._all.get(key)

    def cell(self, key: str, column: str) -> Cell | None:
        """Row `key`'s cell in the column whose Column.key is `column`; None when there is no such row."""
        cells = self._all.get(key)
        return None if cells is None else cells[[c.key for c in self.COLUMNS].index(column)]

    @property
    def cursor_key(self) -> str | None:
        """The key of the highlighted row; None when the table shows no rows."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return None if key is None else str(key)

    # -- filter -------------------------------------------------------------------------------------------
    @property
    def filter_text(self) -> str:
        return " ".join(self._words)

    def set_filter(self, text: str) -> None:
        words = text.lower().split()
        if words != self._words:
            self._words = words
            self._rebuild()

    def _matches(self, key: str, cells: Sequence[Cell]) -> bool:
        if not self._words:
            return True
        haystack = " ".join([key, *(plain(c) for c in cells)]).lower()
        return all(word in haystack for word in self._words)

    def _rebuild(self) -> None:
        """Redraw every row from the data (the filter changed), keeping the highlighted row if it stays."""
        highlighted = self.cursor_key
        self.clear()
        for key, cells in self._all.items():
            if self._matches(key, cells):
                self.add_row(*cells, key=key)
        if highlighted is not None and highlighted in self.rows:
            self.move_cursor(row=self.get_row_index(highlighted), animate=False)
