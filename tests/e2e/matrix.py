"""The client × operation × destination matrix: in each cell, what landed against what
the client sent (records; a profile update counts once however many rows it makes).
Printed at the end of the run (tests/e2e/conftest.py) and written, as Markdown, to
`e2e-matrix.md` under the run's pytest base temp directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Matrix:
    #: (client, operation) -> destination -> cell text
    cells: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def add(self, client: str, operation: str, destination: str, landed: int | None, sent: int, note: str = "") -> None:
        if destination not in self.destinations:
            self.destinations.append(destination)
        if landed is None:
            text = note or "–"
        else:
            text = f"{landed}/{sent}" + ("" if landed == sent else " ✗") + (f" {note}" if note else "")
        self.cells.setdefault((client, operation), {})[destination] = text
        self.write()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            self.write()

    def lines(self) -> list[str]:
        if not self.cells:
            return []
        order = ["mixpanel"] + sorted(d for d in self.destinations if d != "mixpanel")
        order = [d for d in order if d in self.destinations]
        out = ["| client | operation | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
        for (client, operation), row in self.cells.items():
            out.append(f"| {client} | {operation} | " + " | ".join(row.get(d, "–") for d in order) + " |")
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return out

    def write(self) -> None:
        if self.path is not None:
            self.path.write_text("\n".join(self.lines()) + "\n", encoding="utf-8")


MATRIX = Matrix()
