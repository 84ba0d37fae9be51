"""What a destination supplies to join the conformance suite.

An adapter knows how to point the proxy at its stand-in (`env`), how to read back what
landed (`rows`), and how to plant something the proxy does not own next to what it does
(`plant_foreign` / `foreign_intact`), so the suite can prove that `drop` is exact. The
suite does everything else through the running proxy under gunicorn, the `flask`
operator commands, and the fault-injecting wrapper (tests/support/faulty.py) around the
real sink. A new destination joins with a module in this folder:

    class BigQueryAdapter(Adapter):
        name = "bigquery"
        standin = "bigquery_standin"      # the session fixture that starts its stand-in
        def env(self): ...
        def rows(self, table): ...
        def plant_foreign(self): ...
        def foreign_intact(self): ...

    ADAPTERS = [BigQueryAdapter]          # several, for several write modes

`variant` tells apart adapters of one destination (e.g. `stream` and `load`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class Adapter:
    #: The DESTINATIONS name (a registered row sink, or `mixpanel`).
    name: ClassVar[str]
    #: A label for this configuration of it (write mode, load path...).
    variant: ClassVar[str] = ""
    #: The session fixture that starts the stand-in, or None.
    standin: ClassVar[str | None] = None
    #: False where the service holds nothing the proxy owns (Mixpanel): drop must delete nothing.
    owns_data: ClassVar[bool] = True
    #: Checks that cannot apply, with the reason (shown in the matrix), e.g. {"drop": "..."}.
    not_applicable: ClassVar[dict[str, str]] = {}

    def __init__(self, standin: Any, unique: str) -> None:
        """`unique` is short, lower-case, [a-z0-9]: use it in every bucket, dataset, schema,
        prefix or topic name so that tests never see each other's data."""
        self.standin = standin
        self.unique = unique

    @property
    def label(self) -> str:
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def env(self) -> dict[str, str]:
        """Proxy variables for this destination (lower- or upper-case names)."""
        raise NotImplementedError

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row stored in `table` (`events`, `users`, `groups`), as dicts with at least
        `insert_id` (events) and `properties` parsed into Python values. An absent table or
        bucket is an empty list."""
        raise NotImplementedError

    def plant_foreign(self) -> None:
        """Create something the proxy does not own, beside what it does (another table,
        an object outside its prefixes, another topic)."""
        raise NotImplementedError

    def foreign_intact(self) -> bool:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what the test made, if the stand-in keeps state across tests."""
