from __future__ import annotations

import base64
import json


def test_track_forwards_to_mixpanel_and_lands_in_files(make_app, mp, tmp_path):
    app = make_app(destinations="mixpanel,files", mixpanel_api_host=mp.url, mixpanel_token="tok")
    data = base64.b64encode(json.dumps([{"event": "e", "properties": {"distinct_id": "u1", "time": 1700000000.5}}]).encode())
    reply = app.test_client().post("/track/?verbose=1&ip=1", data={"data": data.decode()}, headers={"X-Forwarded-For": "1.2.3.4"})
    assert reply.status_code == 200, reply.data
    body = reply.get_json()
    assert body["status"] == 1 and body["error"] is None
    assert [d["name"] for d in body["destinations"]] == ["mixpanel", "files"]
    sent = mp.records("track")
    assert sent == [{"event": "e", "properties": {"distinct_id": "u1", "time": 1700000000.5, "ip": "1.2.3.4", "token": "tok"}}]
    upstream = mp.requests("track")[0]
    assert upstream.headers["x-forwarded-for"] == "1.2.3.4"
    assert upstream.query["ip"] == "1"
    files = list((tmp_path / "data" / "events").rglob("*.json.gz"))
    assert len(files) == 1
