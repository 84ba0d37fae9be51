"""Configuration errors: checked once, in gunicorn's master, one line naming the variable
(as the README spells it), the bad value and what is allowed; exit status 4 every time.
The check builds what a worker builds, and building it touches no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.settings import ConfigError, Settings, error_line
from tests.support.processes import ROOT, VENV_BIN, free_port

# (environment, what the one line must contain besides "configuration error:")
BAD_CONFIGS = [
    ({"LOG_LEVEL": "verbose"}, ("LOG_LEVEL='verbose'", "DEBUG, INFO, WARNING, ERROR, CRITICAL")),
    ({"log_level": "chatty"}, ("LOG_LEVEL='chatty'", "DEBUG, INFO")),  # a lower-case name is spelt as the README does
    ({"RUNTIME": "mars"}, ("RUNTIME='mars'", "LOCAL, GCP, AWS, AZURE, LAMBDA, FUNCTIONS")),
    ({"LAKE_GZIP_LEVEL": "12"}, ("LAKE_GZIP_LEVEL='12'", "between 1 and 9")),
    ({"DESTINATIONS": "files,nosuchthing"}, ("DESTINATIONS", "'nosuchthing'", "mixpanel, files, s3, gcs, azure")),
    ({"destinations": "s3"}, ("S3_BUCKET is required by the s3 destination",)),
    ({"DESTINATIONS": "s3", "S3_BUCKET": "b", "S3_BATCH_MAX_SECONDS": "soon"}, ("S3_BATCH_MAX_SECONDS='soon'", "number")),
    ({"FILES_DELIVERY": "later"}, ("FILES_DELIVERY='later'", "batch, sync")),
    ({"MIXPANEL_DELIVERY": "async"}, ("MIXPANEL_DELIVERY='async'", "batch, sync")),
    (
        {"DESTINATIONS": "gcs", "GCS_BUCKET": "b", "GCS_KEYFILE": "/nonexistent/key.json"},
        ("GCS_KEYFILE='/nonexistent/key.json'",),
    ),
    ({"EVENTS_EXTRA_COLUMNS": "cart:MONEY"}, ("EVENTS_EXTRA_COLUMNS", "'cart:MONEY'", "STRING")),
    ({"TRANSFORM": "no_such_module:fn"}, ("TRANSFORM='no_such_module:fn'", "ModuleNotFoundError")),
    ({"WEB_CONCURRENCY": "0"}, ("WEB_CONCURRENCY='0'", "at least 1")),
    ({"BIND": "everywhere"}, ("BIND='everywhere'", "HOST:PORT")),
    ({"DEMO": "maybe"}, ("DEMO='maybe'", "true or false")),
]
IDS = ["-".join(f"{k}={v}" for k, v in env.items()) for env, _ in BAD_CONFIGS]


def run_gunicorn(env: dict[str, str], cwd: Path, workers: int = 2) -> subprocess.CompletedProcess[str]:
    """gunicorn as the Procfile runs it, from a directory without a .env; bounded by a timeout."""
    full = {k: v for k, v in os.environ.items() if k.lower() not in {e.lower() for e in env}}
    full.update(env)
    full.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    args = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-b", f"127.0.0.1:{free_port()}"]
    args += ["-w", str(workers), "--chdir", str(ROOT), "app:app"]
    return subprocess.run(args, env=full, cwd=cwd, capture_output=True, text=True, timeout=60)


def assert_one_line_and_status_4(result: subprocess.CompletedProcess[str], expected: tuple[str, ...]) -> str:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 4, output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("configuration error: ") and output.endswith("(variable names are case-insensitive)")
    for part in expected:
        assert part in output, output
    return output


@pytest.mark.parametrize(("env", "expected"), BAD_CONFIGS, ids=IDS)
def test_bad_configuration_stops_gunicorn_with_one_line_and_status_4(env, expected, tmp_path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DEAD_LETTER_DIR": str(tmp_path / "spool"), **env}
    assert_one_line_and_status_4(run_gunicorn(env, tmp_path), expected)
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_the_same_line_and_status_ten_times_in_a_row(tmp_path) -> None:
    # Before the master checked, workers raced: one line per worker, and now and then a HaltServer
    # traceback with status 1. A destination's own setting is the deepest the check goes.
    env = {"DATA_DIR": str(tmp_path / "data"), "DESTINATIONS": "files,s3", "S3_BUCKET": "b", "S3_MAX_BUFFER_BYTES": "lots"}
    lines = {
        assert_one_line_and_status_4(run_gunicorn(env, tmp_path, workers=4), ("S3_MAX_BUFFER_BYTES='lots'",)) for _ in range(10)
    }
    assert len(lines) == 1


def test_good_configuration_starts_after_the_check(tmp_path) -> None:
    import requests

    from tests.support.processes import Server, wait_until

    port = free_port()
    args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", "1", "app:app"]
    env = {"DATA_DIR": str(tmp_path / "data"), "DEAD_LETTER_DIR": str(tmp_path / "spool"), "LOG_LEVEL": "warn"}
    server = Server(args, env={"PYTHONUNBUFFERED": "1", **env}, log=tmp_path / "log").start()
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok, 30, what="gunicorn")
    finally:
        server.stop()
    assert "configuration error" not in server.log()


def test_create_app_checks_the_same_things(make_settings) -> None:
    from app import create_app

    for values in ({"lake_gzip_level": "0"}, {"destinations": "azure", "azure_container": "c"}):
        with pytest.raises(ConfigError) as caught:
            create_app(make_settings(**values))
        assert "LAKE_GZIP_LEVEL='0'" in str(caught.value) or "AZURE_CONNECTION_STRING or AZURE_ACCOUNT" in str(caught.value)


def test_python_app_py_exits_4_with_one_line(tmp_path) -> None:
    env = {**os.environ, "RUNTIME": "venus", "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 4
    assert (result.stdout + result.stderr).strip() == error_line(
        ConfigError("RUNTIME='venus' must be one of LOCAL, GCP, AWS, AZURE, LAMBDA, FUNCTIONS")
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": "http"}, "PORT='http' is not a whole number"),
        ({"mixpanel_timeout_seconds": "nan"}, "MIXPANEL_TIMEOUT_SECONDS='nan' is not a finite number"),
        ({"https_proxy": "user:secret@proxy:3128"}, "HTTPS_PROXY='proxy:3128' must be a full URL"),
        ({"base_path": "/mp/ space"}, "BASE_PATH='/mp/ space' must be a path such as /mp"),
        ({"drop_allow_production": "sure"}, "DROP_ALLOW_PRODUCTION='sure' is not a boolean"),
        ({"mixpanel_cdn_url": "cdn.example.com"}, "MIXPANEL_CDN_URL='cdn.example.com' must be a full URL"),
    ],
)
def test_settings_messages_name_variable_value_and_what_is_allowed(values, message) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(values)
    assert str(caught.value).startswith(message)
    assert "secret" not in str(caught.value)


def test_settings_normalise_what_they_accept() -> None:
    settings = Settings.from_mapping({"log_level": "warn", "runtime": "lambda", "base_path": "mp/"})
    assert (settings.log_level, settings.runtime, settings.base_path) == ("WARNING", "LAMBDA", "/mp")
    assert settings.is_production and not settings.demo  # a cloud runtime: no demo page unless DEMO=true
    assert Settings.from_mapping({"k_service": "svc"}).is_production
    assert Settings.from_mapping({"dyno": "web.1", "demo": "true"}).demo
    assert Settings.from_mapping({}).demo and not Settings.from_mapping({"demo": "false"}).demo


NO_IO_SCRIPT = textwrap.dedent(
    """
    import json, sys
    seen = []
    # Reaching out, starting programs, writing files. (Not socket.bind: urllib3 binds ::1 port 0 on import
    # to learn whether IPv6 works, which goes nowhere.)
    WATCHED = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "subprocess.Popen",
               "os.mkdir", "os.remove", "os.rename", "shutil.rmtree", "urllib.Request")

    def hook(event, args):
        if event in WATCHED or (event == "open" and isinstance(args[1], str) and any(m in args[1] for m in "wax+")):
            seen.append([event, repr(args)[:200]])

    sys.addaudithook(hook)
    from core.settings import Settings
    from proxy.runtime import build_runtime

    for values in json.loads(sys.argv[1]):
        runtime = build_runtime(Settings.from_mapping(values))
        assert len(runtime.destinations) == len(values["destinations"].split(","))
    print(json.dumps(seen))
    """
)


def test_building_every_destination_touches_no_network_and_writes_nothing(tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # were anything to connect, the audit hook would see it
    common = {
        "data_dir": str(tmp_path / "data"),
        "dead_letter_dir": str(tmp_path / "spool"),
        "s3_bucket": "b",
        "s3_endpoint_url": dead,
        "s3_access_key_id": "AKID",
        "s3_secret_access_key": "secret",
        "gcs_bucket": "b",
        "storage_emulator_host": dead,
        "azure_container": "c",
        "azure_connection_string": (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint={dead}/x;"
        ),
        "pubsub_bad_topic": "projects/p/topics/dead",
        "pubsub_emulator_host": dead.removeprefix("http://"),
        "mixpanel_api_host": dead,
        "transform": "examples/strip_pii.py:transform",
        "warehouse_transform": "examples/truncate_ip.py:transform",
        "events_extra_columns": "utm_source:STRING",
    }
    configs = [
        {**common, "destinations": "mixpanel,files,s3,gcs,azure"},
        {**common, "destinations": "mixpanel,files", "mixpanel_delivery": "batch", "mixpanel_api_secret": "x"},
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", NO_IO_SCRIPT, json.dumps(configs)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "data").exists() and not (tmp_path / "spool").exists()
