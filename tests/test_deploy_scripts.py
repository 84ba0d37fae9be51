"""The deploy scripts' dry runs with sample .env files, their IAM files, shellcheck.

A dry run must print every command and run none: the cloud CLIs (and python3) on PATH
are stand-ins that leave a mark if anything calls them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import ROOT

SCRIPTS = ["gcp-run-deploy.sh", "gcp-func-deploy.sh", "aws-deploy.sh", "azure-deploy.sh"]
SECRETS = {"s3_secret_access_key": "S3-SECRET-VALUE-xyz", "drop_token": "DROP-TOKEN-VALUE-xyz"}
COMMON = """
# a sample .env
MIXPANEL_TOKEN=tok-public
FRONTEND_URL="https://shop.example"
PORT=9999
RUNTIME=LOCAL
DROP_TOKEN=DROP-TOKEN-VALUE-xyz
snowflake_password=NOT-CHOSEN-xyz
"""
ENVS = {
    "gcp-run-deploy.sh": COMMON
    + "DESTINATIONS=mixpanel,gcs\ngcs_bucket=my-lake\nLAKE_PREFIX=mp\npubsub_bad_topic=dead\npubsub_project=my-proj\n"
    + "s3_bucket=not-chosen-bucket\ns3_secret_access_key=S3-SECRET-VALUE-xyz\nGCP_PROJECT=my-proj\nGCP_REGION=europe-west1\n",
    "gcp-func-deploy.sh": COMMON
    + "DESTINATIONS=mixpanel,gcs\ngcs_bucket=my-lake\ns3_bucket=not-chosen-bucket\n"
    + "s3_secret_access_key=S3-SECRET-VALUE-xyz\nGCP_PROJECT=my-proj\nGCP_FUNCTION=mp-fn\n",
    "aws-deploy.sh": COMMON
    + "DESTINATIONS=mixpanel,s3\ns3_bucket=my-lake\ns3_region=us-east-1\ns3_secret_access_key=S3-SECRET-VALUE-xyz\n"
    + "s3_access_key_id=AKIAEXAMPLE\nLAKE_PREFIX=/mp/\ngcs_bucket=not-chosen-bucket\nAWS_REGION=eu-west-1\n",
    "azure-deploy.sh": COMMON
    + "DESTINATIONS=mixpanel,azure\nazure_account=mylake\nazure_container=events\nazure_key=AZURE-KEY-VALUE-xyz\n"
    + "s3_bucket=not-chosen-bucket\nAZ_RESOURCE_GROUP=mp-rg\nAZ_LOCATION=westeurope\nAZ_FUNCTION_APP=mp-app\n"
    + "AZ_STORAGE_ACCOUNT=mphost\nAZ_KEY_VAULT=mp-kv\n",
}


def dry_run(script: str, env_text: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    env_file = tmp_path / f"{script}.env"
    env_file.write_text(env_text)
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    mark = tmp_path / "something-ran"
    for tool in ("gcloud", "aws", "az", "python3", "pip", "zip"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> {mark}\nexit 3\n')
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", f"scripts/{script}", "--dry-run", "--env-file", str(env_file), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, mark


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def heredoc(output: str, name: str) -> str:
    match = re.search(rf"^\+ cat > \S*{re.escape(name)} <<'EOF'\n(.*?)\nEOF$", output, re.S | re.M)
    assert match, f"{name} not written in the dry run"
    return match.group(1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_prints_commands_runs_nothing_and_leaks_no_secret(script: str, tmp_path: Path) -> None:
    done, mark = dry_run(script, ENVS[script], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not mark.exists(), f"a dry run ran: {mark.read_text()}"
    out = done.stdout
    assert len(commands(out)) >= 5
    for value in [*SECRETS.values(), "AZURE-KEY-VALUE-xyz", "NOT-CHOSEN-xyz"]:
        assert value not in out and value not in done.stderr
    assert "not-chosen-bucket" not in out  # another destination's settings stay home
    assert "snowflake" not in out.lower()
    assert not re.search(r"\bPORT\b", out) and "RUNTIME" not in out  # the platform's and the entry point's
    assert re.search(r"^Deployed\. Point your SDKs at it: api_host = \S+", out, re.M)


def test_gcp_run(tmp_path: Path) -> None:
    done, _ = dry_run("gcp-run-deploy.sh", ENVS["gcp-run-deploy.sh"], tmp_path)
    out = done.stdout
    env = yaml.safe_load(heredoc(out, "env.yaml"))
    assert env == {
        "DESTINATIONS": "mixpanel,gcs",
        "FRONTEND_URL": "https://shop.example",
        "GCS_BUCKET": "my-lake",
        "LAKE_PREFIX": "mp",
        "MIXPANEL_TOKEN": "tok-public",
        "PUBSUB_BAD_TOPIC": "dead",
        "PUBSUB_PROJECT": "my-proj",
        "GRACEFUL_TIMEOUT": "8",
    }
    [deploy] = [c for c in commands(out) if c.startswith("gcloud run deploy ")]
    assert "--source " in deploy and "--allow-unauthenticated" in deploy
    assert "--service-account mpproxy-runtime@my-proj.iam.gserviceaccount.com" in deploy
    assert "--no-cpu-throttling" in deploy  # batch delivery needs CPU between requests
    assert "DROP_TOKEN=mpproxy-drop-token:latest" in deploy.replace("\\", "")
    assert "--region europe-west1" in deploy
    cmds = commands(out)
    assert any("gcloud secrets versions add mpproxy-drop-token" in c and "value of DROP_TOKEN" in c for c in cmds)
    assert any(c.startswith("gcloud storage buckets add-iam-policy-binding gs://my-lake") and "mpproxyRuntime" in c for c in cmds)
    probe = [c for c in cmds if "mpproxyProbe" in c and "add-iam-policy-binding" in c]
    assert probe and "objects/mp/_proxy_probe/" in probe[0].replace("\\", "")
    assert any("pubsub topics add-iam-policy-binding projects/my-proj/topics/dead" in c for c in cmds)
    assert commands(out)[-1].startswith("gcloud run services describe mixpanel-dwh-proxy")

    sync, _ = dry_run("gcp-run-deploy.sh", ENVS["gcp-run-deploy.sh"] + "DELIVERY=sync\n", tmp_path)
    assert "--cpu-throttling" in sync.stdout.split() and "--no-cpu-throttling" not in sync.stdout


def test_gcp_run_with_the_pubsub_destination(tmp_path: Path) -> None:
    """Its topics are made if missing and the runtime role (publish only) is bound on each."""
    base = ENVS["gcp-run-deploy.sh"].replace("DESTINATIONS=mixpanel,gcs", "DESTINATIONS=mixpanel,pubsub")
    per_kind, _ = dry_run("gcp-run-deploy.sh", base + "EVENTS_TABLE_NAME=mp_events\n", tmp_path)
    cmds = commands(per_kind.stdout)
    for topic in ("mp_events", "users", "groups"):
        path = f"projects/my-proj/topics/{topic}"
        assert any(c.startswith(f"gcloud pubsub topics describe {path}") and f"topics create {path}" in c for c in cmds), topic
        assert any(f"pubsub topics add-iam-policy-binding {path}" in c and "mpproxyRuntime" in c for c in cmds), topic
    good, _ = dry_run("gcp-run-deploy.sh", base + "PUBSUB_GOOD_TOPIC=projects/other/topics/rows\n", tmp_path)
    bindings = [c for c in commands(good.stdout) if "pubsub topics add-iam-policy-binding" in c]
    assert len(bindings) == 2 and "projects/other/topics/rows" in bindings[1]  # the bad topic, then the good one
    assert yaml.safe_load(heredoc(good.stdout, "env.yaml"))["PUBSUB_GOOD_TOPIC"] == "projects/other/topics/rows"


def test_gcp_functions(tmp_path: Path) -> None:
    done, _ = dry_run("gcp-func-deploy.sh", ENVS["gcp-func-deploy.sh"], tmp_path)
    out = done.stdout
    [deploy] = [c for c in commands(out) if c.startswith("gcloud functions deploy ")]
    for flag in ("mp-fn --gen2", "--runtime python311", "--entry-point handler", "--trigger-http", "--allow-unauthenticated"):
        assert flag in deploy
    assert any("main.py" in c and c.startswith("cp ") for c in commands(out))
    assert any("requirements-gcp-functions.txt" in c for c in commands(out))
    env = yaml.safe_load(heredoc(out, "env.yaml"))
    assert set(env) == {"DESTINATIONS", "FRONTEND_URL", "GCS_BUCKET", "MIXPANEL_TOKEN"}
    assert commands(out)[-1].startswith("gcloud functions describe mp-fn --gen2")
    assert "serviceConfig.uri" in commands(out)[-1]


def test_aws(tmp_path: Path) -> None:
    done, _ = dry_run("aws-deploy.sh", ENVS["aws-deploy.sh"], tmp_path)
    out = done.stdout
    cmds = commands(out)
    variables = json.loads(heredoc(out, "environment.json"))["Variables"]
    assert variables == {
        "DESTINATIONS": "mixpanel,s3",
        "FRONTEND_URL": "https://shop.example",
        "LAKE_PREFIX": "/mp/",
        "MIXPANEL_TOKEN": "tok-public",
        "S3_BUCKET": "my-lake",
        "S3_REGION": "us-east-1",
        "SECRETS_ARN": "<SECRET_ARN>",
    }
    assert "(JSON object of DROP_TOKEN S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY from" in out
    s3 = json.loads(heredoc(out, "mpproxy-s3.json"))
    assert [s["Resource"] for s in s3["Statement"]] == ["arn:aws:s3:::my-lake/mp/*", "arn:aws:s3:::my-lake/mp/_proxy_probe/*"]
    secrets = json.loads(heredoc(out, "mpproxy-secrets.json"))
    assert secrets["Statement"][0]["Resource"] == "<SECRET_ARN>"
    assert any(c.startswith("aws lambda create-function ") and "--handler lambda_handler.handler" in c for c in cmds)
    assert any(c.startswith("aws lambda update-function-code ") for c in cmds)
    assert any("create-function-url-config" in c and "--auth-type NONE" in c for c in cmds)
    assert any("--action lambda:InvokeFunctionUrl" in c for c in cmds) and any("--invoked-via-function-url" in c for c in cmds)
    # Only the SDKs the chosen destinations import go into the zip.
    trim = [c for c in cmds if c.startswith("sed -E -i")][0].replace("\\", "")
    assert "google-cloud-storage" in trim and "azure-storage-blob" in trim and "boto3" not in trim
    assert cmds[-1].startswith("aws lambda get-function-url-config")


def test_azure(tmp_path: Path) -> None:
    done, _ = dry_run("azure-deploy.sh", ENVS["azure-deploy.sh"], tmp_path)
    out = done.stdout
    cmds = commands(out)
    settings = {s["name"]: s["value"] for s in json.loads(heredoc(out, "settings.json"))}
    assert settings == {
        "AZURE_ACCOUNT": "mylake",
        "AZURE_CONTAINER": "events",
        "AZURE_KEY": "@Microsoft.KeyVault(VaultName=mp-kv;SecretName=mpproxy-azure-key)",
        "DESTINATIONS": "mixpanel,azure",
        "DROP_TOKEN": "@Microsoft.KeyVault(VaultName=mp-kv;SecretName=mpproxy-drop-token)",
        "FRONTEND_URL": "https://shop.example",
        "MIXPANEL_TOKEN": "tok-public",
    }
    role = json.loads(heredoc(out, "role.json"))
    assert role["AssignableScopes"] == ["/subscriptions/<SUBSCRIPTION_ID>/resourceGroups/mp-rg"]
    assignments = [c.replace("\\", "") for c in cmds if c.startswith("az role assignment create")]
    assert any("/containers/events" in a and "StringStartsWith '_proxy_probe/'" in a for a in assignments)
    assert any(a.endswith("/vaults/mp-kv --output none") for a in assignments)
    assert any("functionapp create" in c and "--runtime python --runtime-version 3.11" in c for c in cmds)
    assert any("config-zip" in c and "--build-remote true" in c for c in cmds)
    assert any("function_app.py" in c and "host.json" in c for c in cmds if c.startswith("cp "))
    assert cmds[-1].startswith("az functionapp show") and "defaultHostName" in cmds[-1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_refuses_without_destinations(script: str, tmp_path: Path) -> None:
    text = "\n".join(line for line in ENVS[script].splitlines() if not line.startswith("DESTINATIONS"))
    done, mark = dry_run(script, text, tmp_path)
    assert done.returncode != 0
    assert "DESTINATIONS is not set" in done.stderr
    assert commands(done.stdout) == [] and not mark.exists()


def _actions(value: object) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def test_iam_files_grant_no_wildcard_actions() -> None:
    found = 0
    for path in sorted((ROOT / "scripts" / "aws").glob("policy-*.json")):
        for statement in json.loads(path.read_text())["Statement"]:
            for action in _actions(statement["Action"]):
                assert "*" not in action, (path, action)
                found += 1
    for path in sorted((ROOT / "scripts" / "gcp").glob("*.yaml")):
        for permission in yaml.safe_load(path.read_text())["includedPermissions"]:
            assert "*" not in permission, (path, permission)
            found += 1
    role = json.loads((ROOT / "scripts" / "azure" / "proxy-role.json").read_text().replace("${ASSIGNABLE_SCOPES}", '"/x"'))
    for action in role["Actions"] + role["DataActions"]:
        assert "*" not in action
        found += 1
    assert found >= 10
    trust = json.loads((ROOT / "scripts" / "aws" / "lambda-trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing: scripts/test.d/deploy.sh installs it")
        pytest.skip("shellcheck not installed (scripts/test.d/deploy.sh installs it)")
    files = [f"scripts/{s}" for s in SCRIPTS] + ["scripts/image-replay.sh", "scripts/test.d/deploy.sh"]
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "scripts" / "lib").glob("*.sh")]
    done = subprocess.run(["shellcheck", "-x", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_one_click_manifests() -> None:
    assert (ROOT / "Procfile").read_text().strip() == "web: gunicorn -c gunicorn.conf.py app:app"
    app_json = json.loads((ROOT / "app.json").read_text())
    assert app_json["env"]["DESTINATIONS"]["required"] is True
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    [service] = render["services"]
    assert service["startCommand"] == "gunicorn -c gunicorn.conf.py app:app"
    assert service["healthCheckPath"] == "/ping"
    keys = {v["key"]: v for v in service["envVars"]}
    assert keys["DESTINATIONS"]["sync"] is False  # asked for at creation
    for name in ("s3_bucket", "gcs_bucket", "azure_container", "MIXPANEL_TOKEN"):
        assert name in keys and name in app_json["env"]
