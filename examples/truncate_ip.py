"""Example WAREHOUSE_TRANSFORM hook: truncate IP addresses in the warehouse and lake copy only.

    WAREHOUSE_TRANSFORM=examples/truncate_ip.py:transform

Mixpanel still receives the full address (it needs it for geolocation); your
warehouse keeps only the network: IPv4 /24 and IPv6 /48, as Google Analytics does.
"""

from __future__ import annotations

import ipaddress


def truncate(address):
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return None  # not an address: keep nothing rather than something unknown
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def transform(row: dict, kind: str) -> dict:
    if row.get("ip"):
        row["ip"] = truncate(row["ip"])  # the users table's column
    properties = row.get("properties")
    if isinstance(properties, dict):
        for key in ("ip", "$ip"):
            if properties.get(key):
                properties[key] = truncate(properties[key])
    return row
