"""sent_as_is(): a request goes to Mixpanel as the SDK sent it exactly when normalising would
add nothing to its records but the client IP (which Mixpanel then gets in X-Forwarded-For)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import normalize, sent_as_is

CLIENT = "203.0.113.7"

_values = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.floats(allow_nan=False))
_object = st.dictionaries(st.sampled_from(["time", "ip", "token", "distinct_id", "x"]), _values, max_size=4)
_props = st.one_of(_object, _object, st.none(), st.lists(_values, max_size=2))  # a list: Mixpanel's to judge
_event = st.one_of(
    st.fixed_dictionaries({"event": st.just("e"), "properties": _props}),
    st.fixed_dictionaries({"event": st.just("e"), "properties": _props}),
    st.just({"event": "e"}),  # no properties
    _values,  # not an object at all
)
_profile = st.one_of(
    st.dictionaries(st.sampled_from(["$distinct_id", "$ip", "$token", "$set"]), _values, max_size=3),
    _values,
)


def _without_added_ip(endpoint: str, before: Any, after: Any) -> Any:
    """`after` with the IP normalising added taken out again (an IP the SDK sent stays)."""
    if not isinstance(after, dict):
        return after
    out = dict(after)
    if endpoint in ("engage", "groups"):
        if "$ip" in out and not (isinstance(before, dict) and "$ip" in before):
            del out["$ip"]
        return out
    props, sent = out.get("properties"), before.get("properties") if isinstance(before, dict) else None
    if isinstance(props, dict) and "ip" in props and not (isinstance(sent, dict) and "ip" in sent):
        out["properties"] = {k: v for k, v in props.items() if k != "ip"}
    return out


@settings(max_examples=300)
@given(
    endpoint=st.sampled_from(["track", "import", "engage", "groups"]),
    events=st.lists(_event, max_size=4),
    profiles=st.lists(_profile, max_size=4),
    token=st.sampled_from([None, "", "tok-override"]),
)
def test_sent_as_is_exactly_when_normalising_adds_nothing_but_the_ip(endpoint, events, profiles, token) -> None:
    items = events if endpoint in ("track", "import") else profiles
    before = copy.deepcopy(items)
    verdict = sent_as_is(endpoint, items, token)
    assert items == before  # asking changes nothing
    records = normalize(endpoint, items, client_ip=CLIENT, ip_enabled=True, token=token, received_at=1_700_000_000.5)
    unchanged = [_without_added_ip(endpoint, b, r.payload) for b, r in zip(before, records, strict=True)] == before
    if verdict:  # never wrong: Mixpanel would miss a change
        assert unchanged
    if endpoint == "import":
        assert not verdict  # no ip=1 upstream: its events keep the `ip` property
    elif not token:  # and never needlessly re-encoding (a token override always is: it rewrites records)
        assert verdict == unchanged
