"""`mixpanel` with MIXPANEL_DELIVERY=batch, against the Mixpanel test double.

Records are what the double received, read as rows: events by `$insert_id`, profile and
group updates as their `$set`. `drop` must leave Mixpanel alone: the foreign data is a
record the double already holds from outside the proxy."""

from __future__ import annotations

import json
from typing import Any

import requests

from tests.destinations.adapters.base import Adapter
from tests.support.mixpanel_double import MixpanelDouble

ENDPOINTS = {"events": ("track", "import"), "users": ("engage",), "groups": ("groups",)}


class MixpanelBatchAdapter(Adapter):
    name = "mixpanel"
    variant = "batch"
    standin = "mixpanel"
    owns_data = False

    def __init__(self, standin: MixpanelDouble, unique: str) -> None:
        super().__init__(standin, unique)
        self.foreign = {"event": "foreign", "properties": {"token": "t", "$insert_id": f"foreign-{unique}"}}

    def env(self) -> dict[str, str]:
        return {"mixpanel_api_host": self.standin.url, "mixpanel_delivery": "batch"}

    def rows(self, table: str) -> list[dict[str, Any]]:
        out = []
        for endpoint in ENDPOINTS[table]:
            for record in self.standin.records(endpoint):
                if table == "events":
                    out.append({"insert_id": record["properties"].get("$insert_id"), "properties": record["properties"]})
                else:
                    out.append({"properties": record})
        return out

    def plant_foreign(self) -> None:
        reply = requests.post(f"{self.standin.url}/track", data={"data": json.dumps([self.foreign])}, timeout=5)
        assert reply.ok

    def foreign_intact(self) -> bool:
        return any(r.get("properties", {}).get("$insert_id") == f"foreign-{self.unique}" for r in self.standin.records("track"))


ADAPTERS = [MixpanelBatchAdapter]
