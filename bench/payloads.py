"""Request bodies for the scenarios, generated from a fixed seed.

Each scenario gets a file with one request body per line (the wrk script cycles
through them). The shapes follow what the SDKs really send (docs/wire-formats.md):

- `browser`: mixpanel-browser 2.x batch, 50 events, `data=<percent-encoded base64>`;
- `single`: one browser event per request (batching off), same encoding;
- `engage`: mixpanel-browser people batch, 50 profile updates, same encoding;
- `import`: /import batch of 2,000 events, a raw JSON array (Basic auth in a header).
"""

from __future__ import annotations

import base64
import json
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

TOKEN = "0f3c5e7a9b1d2f4e6a8c0b2d4f6e8a1c"  # 32 hex chars, like a real project token
LIB_VERSION = "2.83.0"
BROWSERS = [
    ("Chrome", ["131.0.0.0", "130.0.0.0", "129.0.0.0"]),
    ("Safari", ["18.1", "17.6"]),
    ("Firefox", ["133.0", "132.0"]),
    ("Microsoft Edge", ["131.0.0.0"]),
    ("Mobile Safari", ["18.1"]),
]
OSES = ["Windows", "Mac OS X", "iOS", "Android", "Linux"]
SCREENS = [(1920, 1080), (1440, 900), (1536, 864), (390, 844), (414, 896), (2560, 1440)]
PAGES = ["/", "/pricing", "/docs/getting-started", "/blog/how-we-scaled", "/signup", "/product/analytics", "/checkout"]
EVENTS = ["$mp_web_page_view", "Button Clicked", "Signed Up", "Viewed Item", "Added To Cart", "Search", "Video Played"]
REFERRERS = ["$direct", "https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/abc", "https://duckduckgo.com/"]
CAMPAIGNS = ["spring_sale", "brand", "retargeting", "newsletter_42"]
PAGE_ORIGIN = "https://www.example.com"  # the site whose pages run the browser SDK


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str  # request path + query, as the SDK sends it
    content_type: str
    events_per_request: int
    connections: int
    bodies: int  # distinct bodies generated
    authorization: str | None = None
    # The page's origin: a browser sends it with every POST (cross-origin or not), so the
    # proxy's CORS runs as it does for real pages. Server-side senders (/import) send none.
    origin: str | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "browser",
            "browser batch (50 events)",
            "/track/?verbose=1&ip=1",
            "application/x-www-form-urlencoded",
            50,
            32,
            200,
            origin=PAGE_ORIGIN,
        ),
        Scenario(
            "single",
            "single event",
            "/track/?verbose=1&ip=1",
            "application/x-www-form-urlencoded",
            1,
            32,
            2000,
            origin=PAGE_ORIGIN,
        ),
        Scenario(
            "engage",
            "engage batch (50 updates)",
            "/engage/?verbose=1&ip=1",
            "application/x-www-form-urlencoded",
            50,
            32,
            200,
            origin=PAGE_ORIGIN,
        ),
        Scenario(
            "import",
            "/import batch (2,000 events)",
            "/import?strict=1&project_id=424242",
            "application/json",
            2000,
            4,
            6,
            "Basic " + base64.b64encode(b"bench-service-account.1a2b3c:s3cr3tS3cr3t").decode(),
        ),
    )
}


def _b36(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


class Population:
    """A pool of simulated visitors so ids repeat across events like real traffic."""

    def __init__(self, rng: random.Random, size: int = 5000) -> None:
        self.rng = rng
        self.visitors = []
        for _ in range(size):
            device = f"{_uuid(rng)[:18]}-{_b36(rng, 14)}"
            browser, versions = rng.choice(BROWSERS)
            width, height = rng.choice(SCREENS)
            self.visitors.append(
                {
                    "device": device,
                    "user": f"user_{rng.randrange(10**7):07d}" if rng.random() < 0.4 else None,
                    "browser": browser,
                    "version": float(rng.choice(versions).split(".")[0]),
                    "os": rng.choice(OSES),
                    "screen": (width, height),
                    "referrer": rng.choice(REFERRERS),
                    "campaign": rng.choice(CAMPAIGNS) if rng.random() < 0.3 else None,
                }
            )

    def pick(self) -> dict:
        return self.rng.choice(self.visitors)


def browser_event(rng: random.Random, visitor: dict, now: float) -> dict:
    """One event as mixpanel-browser 2.8x builds it (about 20 properties)."""
    page = rng.choice(PAGES)
    referrer = visitor["referrer"]
    distinct = visitor["user"] or f"$device:{visitor['device']}"
    event = rng.choice(EVENTS)
    props = {
        "$os": visitor["os"],
        "$browser": visitor["browser"],
        "$current_url": f"https://www.example.com{page}" + (f"?utm_source={visitor['campaign']}" if visitor["campaign"] else ""),
        "$browser_version": visitor["version"],
        "$screen_height": visitor["screen"][1],
        "$screen_width": visitor["screen"][0],
        "mp_lib": "web",
        "$lib_version": LIB_VERSION,
        "$insert_id": _b36(rng, 16),
        "time": round(now - rng.uniform(0, 30), 3),
        "distinct_id": distinct,
        "$device_id": visitor["device"],
        "$initial_referrer": referrer,
        "$initial_referring_domain": referrer.split("/")[2] if referrer.startswith("http") else "$direct",
        "current_page_title": f"Example - {page.strip('/').replace('-', ' ').title() or 'Home'}",
        "current_url_path": page,
        "token": TOKEN,
        "$mp_api_timestamp_ms": int(now * 1000),
    }
    if visitor["user"]:
        props["$user_id"] = visitor["user"]
    if event == "Button Clicked":
        props.update({"button_id": f"cta-{rng.randrange(40)}", "section": rng.choice(["hero", "footer", "nav"])})
    elif event in ("Viewed Item", "Added To Cart"):
        props.update({"item_id": f"sku-{rng.randrange(10**5):05d}", "price": round(rng.uniform(3, 400), 2), "currency": "USD"})
    if visitor["campaign"]:
        props.update({"utm_source": visitor["campaign"], "utm_medium": "cpc", "utm_campaign": visitor["campaign"]})
    return {"event": event, "properties": props}


def engage_update(rng: random.Random, visitor: dict) -> dict:
    distinct = visitor["user"] or f"$device:{visitor['device']}"
    base = {"$token": TOKEN, "$distinct_id": distinct, "$device_id": visitor["device"]}
    if visitor["user"]:
        base["$user_id"] = visitor["user"]
    op = rng.random()
    if op < 0.6:
        base["$set"] = {
            "$email": f"{distinct.replace('$device:', 'd')[:20]}@example.com",
            "$name": f"Visitor {rng.randrange(10**6)}",
            "plan": rng.choice(["free", "team", "enterprise"]),
            "$browser": visitor["browser"],
            "$os": visitor["os"],
            "$initial_referrer": visitor["referrer"],
            "last_seen_page": rng.choice(PAGES),
            "seats": rng.randrange(1, 200),
        }
    elif op < 0.8:
        base["$set_once"] = {"first_seen": time.strftime("%Y-%m-%dT%H:%M:%S"), "signup_source": rng.choice(CAMPAIGNS)}
    elif op < 0.9:
        base["$add"] = {"page_views": rng.randrange(1, 5), "lifetime_value": round(rng.uniform(0, 90), 2)}
    else:
        base["$union"] = {"viewed_categories": rng.sample(["shoes", "hats", "bags", "coats", "socks"], 2)}
    return base


def import_event(rng: random.Random, visitor: dict, now: float) -> dict:
    """A server-side event as sent to /import: `time` in ms, explicit $insert_id."""
    event = browser_event(rng, visitor, now)
    props = event["properties"]
    props.pop("$mp_api_timestamp_ms", None)
    props["time"] = int(props["time"] * 1000)
    props["$insert_id"] = _uuid(rng)
    props["mp_lib"] = "python"
    props["$lib_version"] = "5.4.1"
    return event


def _form(items: list[dict]) -> str:
    """`data=` + encodeURIComponent(base64(JSON)), as mixpanel-browser builds its body."""
    raw = json.dumps(items, separators=(",", ":")).encode()
    return "data=" + quote(base64.b64encode(raw).decode(), safe="")


def generate(out_dir: Path, seed: int = 20241129) -> dict[str, dict]:
    """Write one bodies file per scenario; returns {name: {path, bytes_mean, properties_mean}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info: dict[str, dict] = {}
    for name, scenario in SCENARIOS.items():
        rng = random.Random(f"{seed}-{name}")
        people = Population(rng)
        lines: list[str] = []
        props = 0
        count = 0
        for _ in range(scenario.bodies):
            if name == "engage":
                items = [engage_update(rng, people.pick()) for _ in range(scenario.events_per_request)]
                lines.append(_form(items))
            elif name == "import":
                items = [import_event(rng, people.pick(), now) for _ in range(scenario.events_per_request)]
                lines.append(json.dumps(items, separators=(",", ":")))
            else:
                items = [browser_event(rng, people.pick(), now) for _ in range(scenario.events_per_request)]
                lines.append(_form(items))
            for item in items:
                inner = item.get("properties") or next(
                    (v for k, v in item.items() if k.startswith("$") and isinstance(v, dict)), {}
                )
                props += len(inner)
                count += 1
        path = out_dir / f"{name}.bodies"
        path.write_text("\n".join(lines) + "\n")
        info[name] = {
            "path": str(path),
            "bytes_mean": round(sum(len(line) for line in lines) / len(lines)),
            "properties_mean": round(props / count, 1),
        }
    return info
