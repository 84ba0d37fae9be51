"""The s3, gcs and azure lakes against real local stand-ins (moto, fake-gcs-server, Azurite).

Every test writes through the proxy (or a sink built from settings, exactly as the
registry builds it) and reads back with the official client: stored bytes must be
gzip, metadata must say NDJSON + gzip, and the rows must be exactly what was sent.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import requests

from core.records import Ingest, Record
from core.settings import ConfigError, Settings
from destinations.base import PermanentError, TransientError
from destinations.rows import dumps_row, hour_of
from tests.support.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Lakes, azure_client, s3_client
from tests.support.lakes import StoredObject, bucket_exists, put_plain, read_lake
from tests.support.processes import free_port, gunicorn

pytestmark = pytest.mark.emulator
LAKES = ("s3", "gcs", "azure")
KEY_NAME = re.compile(r"^\d{8}T\d{9}Z-[A-Za-z0-9_-]+-(\d+)-[0-9a-f]{8}\.json\.gz$")


@pytest.fixture
def names() -> dict[str, str]:
    """A fresh bucket/container per lake for each test (names valid in all three services)."""
    tag = uuid.uuid4().hex[:12]
    return {"s3": f"lake-s3-{tag}", "gcs": f"lake-gcs-{tag}", "azure": f"lake-az-{tag}"}


def lake_env(lakes: Lakes, names: dict[str, str]) -> dict[str, str]:
    return {
        "destinations": "s3,gcs,azure",
        "s3_bucket": names["s3"],
        "gcs_bucket": names["gcs"],
        "azure_container": names["azure"],
        **lakes.env(),
    }


@pytest.fixture
def lake_app(make_app: Callable, lakes: Lakes, names: dict[str, str]) -> Callable:
    """The Flask app writing to all three lakes; buckets are created with each sink's setup()."""

    def build(**values: str):  # noqa: ANN202
        app = make_app(**{**lake_env(lakes, names), **values})
        for destination in app.extensions["mpproxy"].destinations:
            destination.setup()
        return app

    return build


def rows_by_table(objects: dict[str, StoredObject], prefix: str = "") -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = {}
    for key, obj in sorted(objects.items()):
        table = key[len(prefix) :].split("/", 1)[0]
        tables.setdefault(table, []).extend(obj.rows())
    return tables


def assert_partitioned(objects: dict[str, StoredObject], prefix: str = "") -> None:
    """Each object sits in the dt=/hr= partition of every row's insert_time."""
    for key, obj in objects.items():
        table = key[len(prefix) :].split("/", 1)[0]
        for row in obj.rows():
            stamp = row["insert_time"]
            assert key.startswith(f"{prefix}{table}/dt={stamp[:10]}/hr={stamp[11:13]}/"), (key, stamp)


def canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


# -- what we send -----------------------------------------------------------------------------------
def encoded(items: list[dict]) -> dict[str, str]:
    return {"data": base64.b64encode(json.dumps(items).encode()).decode()}


def make_events(tag: str, count: int, start: int = 0, ticks: int = 40) -> list[dict]:
    return [
        {
            "event": "Signed Up" if i % 2 else "Page Viewed",
            "properties": {
                "distinct_id": f"user-{i % 7}",
                "time": 1767225600 + i,
                "$insert_id": f"{tag}-{i}",
                "plan": "pro",
                "note": "héllo wörld " + "✓" * ticks,  # 3 bytes each in UTF-8
                "nested": {"n": i, "list": [1, 2, {"deep": True}]},
            },
        }
        for i in range(start, start + count)
    ]


PROFILE_UPDATES = [
    {"$distinct_id": "user-1", "$set": {"$email": "a@example.com", "plan": "pro"}},
    {"$distinct_id": "user-2", "$set_once": {"first_seen": "2026-01-01"}},
    {"$distinct_id": "user-2", "$add": {"logins": 1}},
    {"$distinct_id": "user-3", "$unset": ["plan"]},
    {"$distinct_id": "user-4", "$union": {"tags": ["a", "b"]}},
]
GROUP_UPDATES = [
    {"$group_key": "company", "$group_id": "acme", "$set": {"name": "Acme", "size": 12}},
    {"$group_key": "company", "$group_id": "acme", "$union": {"regions": ["eu"]}},
    {"$group_key": "company", "$group_id": "globex", "$unset": ["size"]},
]


def expected_profiles(updates: list[dict], id_keys: tuple[str, ...]) -> Counter:
    """(ids..., operation, properties) for each update, derived from what was sent."""
    out: Counter = Counter()
    for update in updates:
        for op, value in update.items():
            if not op.startswith("$") or op in id_keys or op in ("$token", "$ip", "$time"):
                continue
            out[(*(update[k] for k in id_keys), op, json.dumps(value, sort_keys=True))] += 1
    return out


def got_profiles(rows: list[dict], columns: tuple[str, ...]) -> Counter:
    return Counter((*(r[c] for c in columns), r["operation"], json.dumps(r["properties"], sort_keys=True)) for r in rows)


def assert_events_exact(rows: list[dict], sent: list[dict]) -> None:
    """Every sent event exactly once, nothing else, every sent property intact."""
    by_id = {e["properties"]["$insert_id"]: e for e in sent}
    counts = Counter(r["insert_id"] for r in rows)
    assert set(counts) == set(by_id), f"missing {set(by_id) - set(counts)}; extra {set(counts) - set(by_id)}"
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    for row in rows:
        event = by_id[row["insert_id"]]
        assert row["event"] == event["event"]
        assert row["distinct_id"] == event["properties"]["distinct_id"]
        assert {k: row["properties"][k] for k in event["properties"]} == event["properties"]


# -- tests ------------------------------------------------------------------------------------------
def test_events_profiles_and_groups_land_in_all_three_lakes(lake_app, lakes, names):
    app = lake_app(delivery="sync")
    client = app.test_client()
    events = make_events("sync", 12)
    for chunk in (events[:5], events[5:]):
        reply = client.post("/track?verbose=1", data=encoded(chunk))
        assert reply.status_code == 200, reply.data
        body = reply.get_json()
        assert [(d["name"], d["status"]) for d in body["destinations"]] == [(n, "success") for n in LAKES], body
    assert client.post("/engage?verbose=1", data=encoded(PROFILE_UPDATES)).get_json()["status"] == 1
    assert client.post("/groups?verbose=1", data=encoded(GROUP_UPDATES)).get_json()["status"] == 1

    tables_per_lake = {}
    for lake in LAKES:
        objects = read_lake(lakes, lake, names[lake])
        assert objects, f"{lake}: nothing written"
        for key in objects:
            assert re.match(r"^(events|users|groups)/dt=\d{4}-\d{2}-\d{2}/hr=\d{2}/", key), key
            assert KEY_NAME.match(key.rsplit("/", 1)[1]), key
        assert not [k for k in objects if k.startswith("_proxy_probe/")], "setup left its probe object behind"
        tables = rows_by_table(objects)
        assert set(tables) == {"events", "users", "groups"}
        assert_events_exact(tables["events"], events)
        assert got_profiles(tables["users"], ("distinct_id",)) == expected_profiles(PROFILE_UPDATES, ("$distinct_id",))
        assert got_profiles(tables["groups"], ("group_key", "group_id")) == expected_profiles(
            GROUP_UPDATES, ("$group_key", "$group_id")
        )
        assert_partitioned(objects)
        tables_per_lake[lake] = {t: canonical(r) for t, r in tables.items()}
    # The three lakes hold identical rows.
    assert tables_per_lake["s3"] == tables_per_lake["gcs"] == tables_per_lake["azure"]


def test_batching_turns_many_requests_into_few_objects(lake_app, lakes, names, capsys):
    app = lake_app(delivery="batch", batch_max_seconds="3600", batch_max_records="100000")
    client = app.test_client()
    events = make_events("ratio", 200)
    for event in events:  # 200 requests, one event each, as a browser SDK sends them
        assert client.post("/track", data=encoded([event])).status_code == 200
    for update in PROFILE_UPDATES:
        assert client.post("/engage", data=encoded([update])).status_code == 200
    for lake in LAKES:
        assert read_lake(lakes, lake, names[lake], "events/") == {}, "batch mode wrote before its flush"
    app.extensions["mpproxy"].close()  # what gunicorn's worker_exit does: drain every buffer

    for lake in LAKES:
        objects = read_lake(lakes, lake, names[lake], "events/")
        rows = [row for obj in objects.values() for row in obj.rows()]
        assert_events_exact(rows, events)
        partitions = {key.rsplit("/", 1)[0] for key in objects}
        # One object per hour partition touched (1, or 2 if the test straddled an hour).
        assert len(objects) == len(partitions) <= 2, sorted(objects)
        users = read_lake(lakes, lake, names[lake], "users/")
        assert len(users) <= 2 and sum(len(o.rows()) for o in users.values()) == len(PROFILE_UPDATES)
        with capsys.disabled():
            print(f"\n[{lake}] 200 event requests -> {len(objects)} object(s); 5 engage requests -> {len(users)} object(s)")


def test_a_flush_over_the_object_size_limit_rolls_over(lake_app, lakes, names, capsys):
    limit = 4096
    app = lake_app(delivery="batch", batch_max_seconds="3600", lake_max_object_bytes=str(limit))
    events = make_events("roll", 60, ticks=300)  # each row ~1,230 bytes of UTF-8 but only ~630 characters
    assert app.test_client().post("/track", data=encoded(events)).status_code == 200
    for destination in app.extensions["mpproxy"].destinations:
        assert destination.flush() == len(events)

    for lake in LAKES:
        objects = read_lake(lakes, lake, names[lake], "events/")
        sizes = [len(gzip.decompress(o.raw)) for o in objects.values()]
        total = sum(sizes)
        assert len(objects) >= -(-total // limit) and len(objects) > 1, sizes
        assert max(sizes) <= limit, f"{lake}: an object of {max(sizes)} bytes exceeds LAKE_MAX_OBJECT_BYTES={limit}"
        assert_events_exact([r for o in objects.values() for r in o.rows()], events)
        with capsys.disabled():
            print(f"\n[{lake}] one flush of {total} bytes with LAKE_MAX_OBJECT_BYTES={limit} -> {len(objects)} objects")


def test_a_flush_spanning_midnight_lands_under_both_dates(lake_app, lakes, names):
    app = lake_app(delivery="batch", batch_max_seconds="3600")
    midnight = datetime(2031, 1, 1, tzinfo=UTC).timestamp()
    records = tuple(
        Record("event", {"event": "tick", "properties": {"distinct_id": "u", "$insert_id": f"mid-{i}", "time": at}}, at)
        for i, at in enumerate([midnight - 1.5, midnight - 0.25, midnight + 0.25, midnight + 3600.5])
    )
    for destination in app.extensions["mpproxy"].destinations:
        destination.sink.writer.clock = lambda: midnight + 2  # the flush happens just after midnight
        assert destination.write(Ingest("track", records)).status == "queued"
        assert destination.flush() == len(records)

    expected = {
        "events/dt=2030-12-31/hr=23": {"mid-0", "mid-1"},
        "events/dt=2031-01-01/hr=00": {"mid-2"},
        "events/dt=2031-01-01/hr=01": {"mid-3"},
    }
    for lake in LAKES:
        objects = read_lake(lakes, lake, names[lake], "events/")
        found = {}
        for key, obj in objects.items():
            partition, name = key.rsplit("/", 1)
            assert name.startswith("20310101T000002000Z-"), name  # named by the writer's clock, not the rows'
            rows = obj.rows()
            for row in rows:
                assert partition == f"events/dt={row['insert_time'][:10]}/hr={row['insert_time'][11:13]}", (key, row)
            found.setdefault(partition, set()).update(r["insert_id"] for r in rows)
        assert found == expected, lake


def test_setup_creates_a_missing_bucket_and_leaves_existing_objects_alone(lakes, names, make_settings):
    from destinations.azure import AzureSink
    from destinations.gcs import GCSSink
    from destinations.s3 import S3Sink

    fresh = {lake: name + "-new" for lake, name in names.items()}
    old_object = gzip.compress(b'{"old":true}\n')
    for lake in LAKES:
        put_plain(lakes, lake, names[lake], "events/dt=2020-01-01/hr=00/old.json.gz", old_object)
        put_plain(lakes, lake, names[lake], "notes.txt", b"keep me")
    before = {lake: read_lake(lakes, lake, names[lake]) for lake in LAKES}

    for bucket_names in (names, fresh):
        settings = make_settings(**lake_env(lakes, bucket_names))
        for sink in (S3Sink(settings), GCSSink(settings), AzureSink(settings)):
            sink.setup()
            sink.setup()  # idempotent
            sink.close()

    for lake in LAKES:
        assert read_lake(lakes, lake, names[lake]) == before[lake], f"{lake}: setup touched existing objects"
        assert bucket_exists(lakes, lake, fresh[lake]), f"{lake}: setup did not create the missing bucket"
        assert read_lake(lakes, lake, fresh[lake]) == {}, f"{lake}: setup left objects (its probe?) behind"


def test_s3_setup_creates_the_bucket_in_its_region(lakes, names, make_settings):
    from destinations.s3 import S3Sink

    settings = make_settings(**{**lake_env(lakes, names), "s3_region": "eu-west-1"})
    sink = S3Sink(settings)
    sink.setup()
    sink.close()
    location = s3_client(lakes.s3.url, "eu-west-1").get_bucket_location(Bucket=names["s3"])["LocationConstraint"]
    assert location == "eu-west-1"


def test_drop_deletes_only_this_proxys_exact_table_prefixes(lake_app, lakes, names):
    app = lake_app(delivery="sync", lake_prefix="proxy")
    assert app.test_client().post("/track", data=encoded(make_events("drop", 3))).status_code == 200
    assert app.test_client().post("/engage", data=encoded(PROFILE_UPDATES[:1])).status_code == 200
    survivors = [
        "proxy/events_archive/dt=2026-01-01/hr=00/a.json.gz",
        "proxy/other/events/b.json.gz",
        "proxy/eventsx.json.gz",
        "events/dt=2026-01-01/hr=00/outside-the-prefix.json.gz",
        "other/proxy/events/c.json.gz",
    ]
    planted = ["proxy/events/dt=2026-01-01/hr=00/planted.json.gz", "proxy/groups/x.json.gz"]
    for lake in LAKES:
        for key in survivors + planted:
            put_plain(lakes, lake, names[lake], key, b"x")
    ours = {lake: sorted(k for k in read_lake(lakes, lake, names[lake], "proxy/") if k not in survivors) for lake in LAKES}

    for destination in app.extensions["mpproxy"].destinations:
        dropped = destination.drop()
        assert sorted(dropped) == ours[destination.name]
        assert any(k.startswith("proxy/users/") for k in dropped) and any(k.startswith("proxy/events/") for k in dropped)
    for lake in LAKES:
        assert sorted(read_lake(lakes, lake, names[lake])) == sorted(survivors), lake


def test_two_gunicorn_workers_never_overwrite_or_interleave(lakes, names, make_settings, tmp_path, capsys):
    from destinations.azure import AzureSink
    from destinations.gcs import GCSSink
    from destinations.s3 import S3Sink

    env = {k.upper(): v for k, v in lake_env(lakes, names).items()}
    env.update(
        DELIVERY="batch",
        BATCH_MAX_RECORDS="5",  # many small flushes, from both workers at once
        BATCH_MAX_SECONDS="3600",
        DATA_DIR=str(tmp_path / "data"),
        DEAD_LETTER_DIR=str(tmp_path / "spool"),
    )
    for sink in (S3Sink(make_settings(**env)), GCSSink(make_settings(**env)), AzureSink(make_settings(**env))):
        sink.setup()  # as a deploy's set-up step would
        sink.close()

    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    events = make_events("gunicorn", 480)
    try:

        def send(request: tuple[str, list[dict]]) -> int:
            path, items = request
            return requests.post(f"http://127.0.0.1:{port}/{path}", data=encoded(items), timeout=30).status_code

        batches = [("track", events[i : i + 4]) for i in range(0, len(events), 4)]
        batches += [("engage", [u]) for u in PROFILE_UPDATES] + [("groups", [g]) for g in GROUP_UPDATES]
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, batches))
    finally:
        server.signal(signal.SIGTERM)  # workers drain their buffers on the way out
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert statuses == [200] * len(batches)

    pids: set[str] = set()
    for lake in LAKES:
        objects = read_lake(lakes, lake, names[lake], "events/")
        rows = [row for obj in objects.values() for row in obj.rows()]  # each object parses whole: no interleaving
        assert_events_exact(rows, events)
        tables = rows_by_table(read_lake(lakes, lake, names[lake]))
        assert got_profiles(tables["users"], ("distinct_id",)) == expected_profiles(PROFILE_UPDATES, ("$distinct_id",))
        assert got_profiles(tables["groups"], ("group_key", "group_id")) == expected_profiles(
            GROUP_UPDATES, ("$group_key", "$group_id")
        )
        lake_pids = {KEY_NAME.match(k.rsplit("/", 1)[1]).group(1) for k in objects}
        pids |= lake_pids
        with capsys.disabled():
            print(f"\n[{lake}] 2 gunicorn workers (pids {sorted(lake_pids)}): {len(events)} events -> {len(objects)} objects")
    assert len(pids) == 2, f"only {pids} wrote: the test did not exercise two workers"


def test_missing_required_variables_name_the_variable(make_settings):
    from destinations import build_destinations

    for lake, variable in (("s3", "S3_BUCKET"), ("gcs", "GCS_BUCKET"), ("azure", "AZURE_CONTAINER")):
        with pytest.raises(ConfigError, match=variable):  # spelt as the README does
            build_destinations(make_settings(destinations=lake, azure_connection_string="UseDevelopmentStorage=true"))


def test_unreachable_service_is_transient_and_errors_carry_no_secrets(make_settings):
    from destinations.azure import AzureSink
    from destinations.gcs import GCSSink
    from destinations.s3 import S3Sink

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here: connection refused
    secret = "SECRETvalue123"
    settings = make_settings(
        s3_bucket="b-unreachable",
        s3_endpoint_url=dead,
        s3_access_key_id="AKIDsecretish",
        s3_secret_access_key=secret,
        gcs_bucket="b-unreachable",
        storage_emulator_host=dead,
        azure_container="b-unreachable",
        azure_connection_string=(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={dead}/x;"
        ),
    )
    rows = [{"insert_time": "2026-01-01T00:00:00.000000Z", "payload": "PAYLOADMARKER"}]
    for sink in (S3Sink(settings), GCSSink(settings), AzureSink(settings)):
        with pytest.raises(TransientError) as caught:
            sink.write("events", [(hour_of(r), dumps_row(r)) for r in rows])
        message = str(caught.value)
        for forbidden in (secret, "AKIDsecretish", AZURITE_KEY, "PAYLOADMARKER"):
            assert forbidden not in message, message
        assert sink.name in message
        sink.close()


def test_missing_bucket_and_missing_permission_are_permanent_and_named(lakes, names, make_settings):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from destinations.azure import AzureSink
    from destinations.gcs import GCSSink
    from destinations.s3 import S3Sink

    rows = [{"insert_time": "2026-01-01T00:00:00.000000Z"}]
    settings = make_settings(**lake_env(lakes, names))  # buckets not created
    for sink in (S3Sink(settings), GCSSink(settings), AzureSink(settings)):
        with pytest.raises(PermanentError, match="not found"):
            sink.write("events", [(hour_of(r), dumps_row(r)) for r in rows])
        sink.close()

    # A read/list-only SAS: the write probe must name the missing permission.
    azure_client(lakes.azure.connection_string).create_container(names["azure"])
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        names["azure"],
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime(2099, 1, 1, tzinfo=UTC),
    )
    read_only = f"BlobEndpoint={lakes.azure.url}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"
    sink = AzureSink(make_settings(azure_container=names["azure"], azure_connection_string=read_only))
    with pytest.raises(PermanentError, match=f"blobs/write denied on container {names['azure']}") as caught:
        sink.setup()
    assert sas not in str(caught.value)
    sink.close()


def test_s3_error_classification(make_settings):
    from botocore.exceptions import ClientError

    from destinations.s3 import classify

    def error(code: str, status: int, operation: str = "PutObject") -> Exception:
        reply = {
            "Error": {"Code": code, "Message": "server text with secret-ish detail"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return classify(ClientError(reply, operation), "bkt")

    assert isinstance(error("SlowDown", 503), TransientError)
    assert isinstance(error("InternalError", 500), TransientError)
    assert isinstance(error("RequestTimeout", 400), TransientError)
    denied = error("AccessDenied", 403)
    assert isinstance(denied, PermanentError) and str(denied) == "s3:PutObject denied on bucket bkt"
    assert str(error("AccessDenied", 403, "ListObjectsV2")) == "s3:ListBucket denied on bucket bkt"
    assert isinstance(error("NoSuchBucket", 404), PermanentError)
    assert isinstance(error("InvalidAccessKeyId", 403), PermanentError)
    assert "server text" not in str(error("MalformedXML", 400))


def test_settings_repr_keeps_secrets_out():
    from destinations.azure import AzureConfig
    from destinations.gcs import GCSConfig
    from destinations.s3 import S3Config

    settings = Settings.from_mapping(
        {
            "s3_bucket": "b",
            "s3_secret_access_key": "S3SECRET",
            "gcs_bucket": "b",
            "gcs_service_account": "sa@example.iam.gserviceaccount.com",
            "gcs_service_account_private_key": "PEMSECRET",
            "azure_container": "c",
            "azure_account": "acct",
            "azure_key": "AZSECRET",
        }
    )
    text = repr((S3Config.from_settings(settings), GCSConfig.from_settings(settings), AzureConfig.from_settings(settings)))
    assert "S3SECRET" not in text and "PEMSECRET" not in text and "AZSECRET" not in text
