"""Plain-text tables for the terminal."""


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return [line(header)] + [line(r) for r in rows]
