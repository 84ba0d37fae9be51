"""The container image without a Docker engine: what the Dockerfile copies (after
.dockerignore) against what the app really imports, the image's contract (non-root,
PORT, HEALTHCHECK on /ping, the Procfile's command), and a full replay of the image's
steps by scripts/image-replay.sh."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.settings import Settings
from proxy.healthcheck import ping_url
from tests.support.processes import ROOT

spec = importlib.util.spec_from_file_location("image_replay", ROOT / "scripts" / "image_replay.py")
image_replay = importlib.util.module_from_spec(spec)
sys.modules["image_replay"] = image_replay  # dataclasses look their module up
spec.loader.exec_module(image_replay)

IMAGE = image_replay.parse_dockerfile(ROOT / "Dockerfile")
IGNORE = image_replay.DockerIgnore.load(ROOT)
WORKDIR = IMAGE.workdir.rstrip("/")

# Start the app with every destination and hook it can load (all endpoints on 127.0.0.1:9,
# where nothing listens, so nothing leaves the machine), serve every kind of request, load
# gunicorn.conf.py and the healthcheck, then list the project files Python imported or
# opened (an audit hook sees hooks loaded from a file path and any data file too).
COLLECT = textwrap.dedent(
    """
    import json, os, runpy, sys
    from pathlib import Path
    root = Path.cwd().resolve()
    opened = set()

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.add(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    runpy.run_path("gunicorn.conf.py")
    import proxy.healthcheck
    from app import create_app
    app = create_app()
    client = app.test_client()
    for path in ("/ping", "/health", "/metrics", "/lib.min.js"):
        client.get(path)
    client.post("/track", data={"data": '{"event":"e","properties":{"distinct_id":"u","$email":"a@b.c"}}'})
    client.post("/engage", json={"$distinct_id": "u", "$set": {"plan": "pro"}})
    client.post("/groups", json={"$group_key": "company", "$group_id": "c1", "$set": {"n": 1}})
    client.post("/import", json=[{"event": "e", "properties": {"distinct_id": "u", "time": 1700000000}}])
    client.get("/track/?data=eyJldmVudCI6ImUifQ==")
    client.options("/track/", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    paths = {m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)} | opened
    files = set()
    for raw in paths:
        path = Path(raw).resolve() if Path(raw).is_absolute() else (root / raw).resolve()
        if not path.is_relative_to(root) or "site-packages" in path.parts or path.name == ".env":
            continue
        if path.parent.name == "__pycache__":  # a cached module: its source is what the image holds
            path = path.parent.parent / (path.name.split(".")[0] + ".py")
        files.add(str(path.relative_to(root)))
    print(json.dumps(sorted(files | {"gunicorn.conf.py"})))
    sys.stdout.flush()
    os._exit(0)  # no drain: nothing was meant to be delivered
    """
)


def image_files() -> dict[str, str]:
    return image_replay.copied_files(IMAGE, ROOT, IGNORE)


def test_every_module_the_app_imports_at_runtime_is_in_the_image(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"
    env = {
        "PATH": "/usr/bin:/bin",
        "DESTINATIONS": "mixpanel,files,s3,gcs,azure",
        "MIXPANEL_API_HOST": dead,
        "MIXPANEL_CDN_URL": dead + "/libs/",
        "MIXPANEL_TIMEOUT_SECONDS": "1",
        "DELIVERY": "batch",
        "DATA_DIR": str(tmp_path / "data"),
        "DEAD_LETTER_DIR": str(tmp_path / "spool"),
        "BUFFER_DIR": str(tmp_path / "buffer"),
        "S3_BUCKET": "b",
        "S3_REGION": "us-east-1",
        "S3_ENDPOINT_URL": dead,
        "S3_ACCESS_KEY_ID": "x",
        "S3_SECRET_ACCESS_KEY": "x",
        "GCS_BUCKET": "b",
        "STORAGE_EMULATOR_HOST": dead,
        "AZURE_CONTAINER": "c",
        "AZURE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint={dead}/devstoreaccount1;",
        "PUBSUB_BAD_TOPIC": "projects/p/topics/dead",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
        "TRANSFORM": "examples/strip_pii.py:transform",
        "WAREHOUSE_TRANSFORM": "examples/truncate_ip.py:transform",
    }
    done = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    for package in ("core", "proxy", "destinations", "examples"):
        assert any(f.startswith(package + "/") for f in imported), f"nothing imported from {package}/: the check is blind"
    copied = image_files()
    missing = [f for f in imported if f"{WORKDIR}/{f}" not in copied]
    assert not missing, f"imported at runtime but not copied into the image: {missing}"


def test_every_python_file_of_the_app_packages_is_in_the_image() -> None:
    copied = image_files()
    sources = [
        p.relative_to(ROOT).as_posix() for d in ("core", "proxy", "destinations", "examples") for p in (ROOT / d).rglob("*.py")
    ]
    sources += ["app.py", "gunicorn.conf.py", "requirements.txt"]
    assert not [s for s in sources if "__pycache__" not in s and f"{WORKDIR}/{s}" not in copied]


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", "node_modules/azurite/package.json", "data/events/dt=2026-01-01/hr=00/x.json.gz",
     "spool/s3/x.ndjson", "buffer/vm-1-abc/000001.seg", "tests/test_smoke.py", "bench/run.sh", ".env", ".git/HEAD", "main.py",
     "lambda_handler.py", "function_app.py", "proxy/__pycache__/app.cpython-311.pyc", "scripts/test.sh"],
)  # fmt: skip
def test_dockerignore_keeps_out_what_the_app_does_not_load(path: str) -> None:
    assert IGNORE.excluded(path)


@pytest.mark.parametrize("path", ["app.py", "gunicorn.conf.py", "requirements.txt", "core/green.py", "examples/strip_pii.py"])
def test_dockerignore_keeps_what_the_app_loads(path: str) -> None:
    assert not IGNORE.excluded(path)


def test_image_contract() -> None:
    uid = IMAGE.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "run as a numeric non-root user"
    assert IMAGE.env["PORT"] == "8080" and "8080" in IMAGE.expose
    procfile = (ROOT / "Procfile").read_text().strip()
    assert procfile == "web: gunicorn -c gunicorn.conf.py app:app"
    assert IMAGE.cmd == shlex.split(procfile.split(":", 1)[1])
    assert IMAGE.healthcheck == ["python", "-m", "proxy.healthcheck"]


def test_healthcheck_probes_ping_where_gunicorn_listens() -> None:
    assert ping_url(Settings.from_mapping({})) == "http://127.0.0.1:8080/ping"
    assert ping_url(Settings.from_mapping({"PORT": "9000", "BASE_PATH": "/mp/"})) == "http://127.0.0.1:9000/mp/ping"
    assert ping_url(Settings.from_mapping({"PORT": "9000", "BIND": "0.0.0.0:7000"})) == "http://127.0.0.1:7000/ping"


def test_dockerignore_semantics() -> None:
    rules = image_replay.DockerIgnore("*\n!keep/\n**/*.log\n!keep/important.log\n# comment\n/abs")
    assert rules.excluded("top.txt") and rules.excluded("dir/deep/file")
    assert not rules.excluded("keep/a.py") and not rules.excluded("keep/sub/b.py")
    assert rules.excluded("keep/sub/debug.log") and not rules.excluded("keep/important.log")


@pytest.mark.slow
def test_image_replay_starts_the_app_as_the_image_would() -> None:
    """The script a person runs: fresh venv with the base image's Python, the image's steps,
    its CMD and ENV as its user; /ping answers and a /track event is stored."""
    done = subprocess.run(["bash", "scripts/image-replay.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("image-replay:")]
    report = "\n".join(lines) + "\n" + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert any("HEALTHCHECK" in line and line.endswith("healthy") for line in lines), report
    assert any(line.startswith('image-replay: GET /ping -> 200 {"status":"ok"') for line in lines), report
    assert "image-replay: POST /track -> 200 1" in lines, report
    assert any(line.startswith("image-replay: stored:") and '"event": "image replay"' in line for line in lines), report
    assert lines[-1] == "image-replay: OK", report
