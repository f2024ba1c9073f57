"""Training rows tokenized when a client first uses them (`data.tokenize: lazy`).

Tokenizing every row at start-up costs ~0.2-0.3 ms a row: about 5 minutes for a million rows, for
a run whose clients may touch a few thousand. Lazily, a row is tokenized the first time a local
step draws it, and kept. The split is over the examples as read (their labels need no tokens), so
a row that turns out unusable (no response token left within data.max_length, or longer than it
under data.over_length: drop) is found only when drawn: it is then replaced by the client's next
usable row, and counted. Eager tokenization drops such rows before the split instead, so the two
modes split a file with unusable rows differently; on a file without them they train the same
steps (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import UserError


class LazyRows(Sequence):
    """All training rows: the examples, tokenized on first access; rows appended later (the
    poisoning attack's) are already tokenized."""

    def __init__(self, examples: list, tokenize: Callable):
        self.examples, self._tokenize = examples, tokenize
        self.cache: dict[int, object] = {}
        self.extra: list = []
        self.dropped = 0  # rows found unusable so far
        self.over_length = 0  # rows found longer than data.max_length so far

    def __len__(self) -> int:
        return len(self.examples) + len(self.extra)

    def __getitem__(self, i):
        if i >= len(self.examples):
            return self.extra[i - len(self.examples)]
        if i not in self.cache:
            row, over = self._tokenize(self.examples[i])
            self.over_length += over
            self.dropped += row is None
            self.cache[i] = row
        return self.cache[i]

    def append(self, row) -> None:
        self.extra.append(row)


class ClientRows(Sequence):
    """One client's rows of a LazyRows; an unusable row stands in for the client's next usable one."""

    def __init__(self, rows: LazyRows, indices: list[int]):
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        for step in range(len(self.indices)):
            row = self.rows[self.indices[(k + step) % len(self.indices)]]
            if row is not None:
                return row
        raise UserError(
            f"data: none of a client's {len(self.indices)} training rows keeps a response within data.max_length"
        )


def client_rows(rows, indices: list[int]):
    """A client's training rows: a list (eager), or a lazy view (LazyRows)."""
    return ClientRows(rows, list(indices)) if isinstance(rows, LazyRows) else [rows[i] for i in indices]
