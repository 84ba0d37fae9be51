"""`flask --app app setup` and `replay` show progress as they go: setup a line as each
destination starts and ends; replay a line per batch when stdout is not a terminal (logs,
CI), a progress bar when it is."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from destinations.deadletter import DeadLetter
from tests.support.processes import ROOT, VENV_BIN


def events(n: int, start: int = 0) -> list[dict]:
    return [{"event": "e", "properties": {"distinct_id": f"u{i}", "$insert_id": f"r{i}"}} for i in range(start, start + n)]


def faulty_env(tmp_path: Path) -> dict[str, str]:
    return {
        "destinations": "files,tests.support.faulty:make",
        "faulty_control": str(tmp_path / "faulty.mode"),
        "faulty_dir": str(tmp_path / "faulty"),
        "retry_max_attempts": "2",
        "retry_base_seconds": "0.01",
        "retry_max_seconds": "0.5",
    }


def test_setup_reports_each_destination_as_it_goes(make_app, tmp_path: Path) -> None:
    out = make_app(**faulty_env(tmp_path)).test_cli_runner().invoke(args=["setup"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "setup [1/2] files: creating what is missing and checking write access ...",
        out.output.splitlines()[1],
        "setup [2/2] faulty: creating what is missing and checking write access ...",
        out.output.splitlines()[3],
        "setup: 2 of 2 destinations ready",
    ]
    assert out.output.splitlines()[1].startswith("setup [1/2] files: ready (")
    assert out.output.splitlines()[3].startswith("setup [2/2] faulty: ready (")


def test_setup_goes_on_after_a_failure_and_exits_1(make_app, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = make_app(data_dir=str(blocker / "data"), **faulty_env(tmp_path)).test_cli_runner().invoke(args=["setup"])
    assert out.exit_code == 1
    lines = out.output.splitlines()
    assert lines[1].startswith("setup [1/2] files: FAILED after ") and "cannot create DATA_DIR" in lines[1]
    assert lines[3].startswith("setup [2/2] faulty: ready (") and lines[-1] == "setup: 1 of 2 destinations ready"


def spool_three_batches(make_app, tmp_path: Path):
    (tmp_path / "faulty.mode").write_text("down")
    app = make_app(**faulty_env(tmp_path))
    for i in range(3):
        assert app.test_client().post("/track", json=events(2, i * 2)).status_code == 200
    assert [b.table for b in DeadLetter(str(tmp_path / "spool")).batches()] == ["events"] * 3
    (tmp_path / "faulty.mode").write_text("up")
    return app


def test_replay_prints_a_line_per_batch_when_not_on_a_terminal(make_app, tmp_path: Path) -> None:
    app = spool_three_batches(make_app, tmp_path)
    out = app.test_cli_runner().invoke(args=["replay"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "replay [1/3] faulty/events: 2 rows replayed",
        "replay [2/3] faulty/events: 2 rows replayed",
        "replay [3/3] faulty/events: 2 rows replayed",
        "replay: 3 batches, 6 rows: 6 replayed, 0 still failing, 0 skipped (destination not configured)",
    ]


def test_replay_reports_failing_batches_line_by_line(make_app, tmp_path: Path) -> None:
    app = spool_three_batches(make_app, tmp_path)
    (tmp_path / "faulty.mode").write_text("down")
    out = app.test_cli_runner().invoke(args=["replay"])
    assert out.exit_code == 1
    assert out.output.splitlines()[0] == "replay [1/3] faulty/events: 2 rows still failing: injected outage"


def test_replay_on_a_terminal_shows_a_progress_bar_instead(make_app, tmp_path: Path) -> None:
    spool_three_batches(make_app, tmp_path)
    env = {**os.environ, **{k.upper(): v for k, v in faulty_env(tmp_path).items()}}
    env.update(DATA_DIR=str(tmp_path / "data"), DEAD_LETTER_DIR=str(tmp_path / "spool"), DELIVERY="sync", PYTHONPATH=str(ROOT))
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [str(VENV_BIN / "flask"), "--app", "app", "replay"],
            env=env,
            cwd=ROOT,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(follower)
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end is closed: all read
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0, result.stderr
    assert b"replay [1/3]" not in terminal and b"6 replayed" in terminal
    assert b"replaying" in result.stderr  # the bar
