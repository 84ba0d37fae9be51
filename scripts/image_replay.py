"""Replay the Dockerfile without a Docker engine, then start the app exactly as the image would.

    scripts/image-replay.sh [--keep] [--exact-pip]

Steps, read from the Dockerfile and .dockerignore in the project root (stdlib only):
1. the base image's Python (`FROM python:3.11-slim` -> `python3.11` on PATH; else the
   default python3, with a warning) in a fresh venv standing in for the image's Python;
2. every COPY, from the build context as .dockerignore filters it, into a fresh root
   (`WORKDIR /app` -> <tmp>/root/app);
3. every RUN: `pip ...` runs in the venv (without `--no-cache-dir` unless --exact-pip:
   that flag only keeps the image small); `useradd`, `mkdir -p`, `chown` are replayed on
   the fresh root; any other command stops the replay, so a new system step cannot be
   skipped silently;
4. the image's CMD with the image's ENV only (plus PATH to the venv and a free PORT, as
   every platform sets it), in WORKDIR, as the image's USER (a numeric uid, used as is
   when this runs as root);
5. the HEALTHCHECK command until it passes, a /track event, SIGTERM (gunicorn drains),
   and the event read back from the files destination's DATA_DIR under WORKDIR.

The parsing helpers are imported by tests/test_container.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- Dockerfile ------------------------------------------------------------------------
@dataclass
class Step:
    instruction: str  # COPY | RUN
    args: list[str]


@dataclass
class Image:
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    steps: list[Step] = field(default_factory=list)
    user: str = "root"
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def _exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    if rest.startswith("["):
        return [str(x) for x in json.loads(rest)]
    return ["/bin/sh", "-c", rest]


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def parse_dockerfile(path: Path) -> Image:
    image = Image()
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            image.base = rest.split()[0]
        elif instruction == "ENV":
            image.env.update(_env_pairs(rest))
        elif instruction == "WORKDIR":
            image.workdir = rest.strip() if rest.strip().startswith("/") else f"{image.workdir.rstrip('/')}/{rest.strip()}"
        elif instruction in {"COPY", "ADD", "RUN"}:
            args = shlex.split(rest) if instruction != "RUN" else [rest.strip()]
            image.steps.append(Step(instruction, [a for a in args if not a.startswith("--")] if instruction != "RUN" else args))
        elif instruction == "USER":
            image.user = rest.strip()
        elif instruction == "CMD":
            image.cmd = _exec_form(rest)
        elif instruction == "EXPOSE":
            image.expose += rest.split()
        elif instruction == "HEALTHCHECK":
            words = rest.split()
            while words and words[0].startswith("--"):
                words.pop(0)
            if words and words[0].upper() == "CMD":
                image.healthcheck = _exec_form(rest[rest.upper().index("CMD") + 3 :])
    return image


# -- .dockerignore (moby patternmatcher semantics) --------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    """The last matching pattern wins; a pattern also matches everything under a directory
    it matches; `!` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((negate, _pattern_regex(line)))

    @classmethod
    def load(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls(path.read_text() if path.exists() else "")

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for negate, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                verdict = not negate
        return verdict


def context_files(context: Path, ignore: DockerIgnore) -> set[str]:
    """Files the build context sends to the builder (what COPY can see)."""
    files = set()
    for dirpath, dirnames, filenames in os.walk(context):
        rel_dir = os.path.relpath(dirpath, context)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not ignore.excluded(rel):
                files.add(rel)
    return files


def copied_files(image: Image, context: Path, ignore: DockerIgnore) -> dict[str, str]:
    """Absolute path in the image -> path in the build context, for every COPY.
    Raises FileNotFoundError for a source the context does not hold (the build would fail)."""
    available = context_files(context, ignore)
    out: dict[str, str] = {}
    workdir = image.workdir
    for step in image.steps:
        if step.instruction == "RUN":
            continue
        *sources, dest = step.args
        dest_abs = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
        into_dir = dest.endswith("/") or dest in {".", "./"} or len(sources) > 1
        for src in sources:
            src = os.path.normpath(src)
            under = sorted(f for f in available if f.startswith(src + "/"))
            if src in available:
                target = f"{dest_abs.rstrip('/')}/{os.path.basename(src)}" if into_dir else dest_abs
                out[os.path.normpath(target)] = src
            elif under:
                for f in under:
                    out[os.path.normpath(f"{dest_abs.rstrip('/')}/{f[len(src) + 1 :]}")] = f
            else:
                raise FileNotFoundError(f"COPY {src}: not in the build context (missing, or excluded by .dockerignore)")
    return out


# -- replay ----------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"image-replay: {message}", flush=True)


def _world_reachable(path: str) -> bool:
    """Whether any user can run `path`: the image's non-root user must (pyenv lives in /root)."""
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & stat.S_IXOTH for p in [real, *real.parents])


def base_python(base: str) -> str:
    """The interpreter standing in for the base image's: its version, one any user can run."""
    match = re.match(r"(?:.*/)?python:(\d+\.\d+)", base)
    if match:
        name = f"python{match.group(1)}"
        dirs = ["/usr/local/bin", "/usr/bin", *os.environ.get("PATH", "").split(os.pathsep)]
        found = [p for p in (shutil.which(name, path=d) for d in dirs) if p]
        for candidate in found:
            if _world_reachable(candidate):
                return candidate
        if found:
            say(f"WARNING: {found[0]} is not reachable by other users; the app will run as the current user")
            return found[0]
    say(f"WARNING: no python matching {base} found; using {sys.executable}")
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uid(user: str) -> int | None:
    name = user.split(":", 1)[0]
    return int(name) if name.isdigit() else None


def _inside(root: Path, path: str, workdir: str) -> Path:
    absolute = path if path.startswith("/") else f"{workdir}/{path}"
    return root / absolute.lstrip("/")


def replay_run(command: str, root: Path, venv: Path, workdir: str, exact_pip: bool) -> None:
    for part in (p.strip() for p in command.split("&&")):
        words = shlex.split(part)
        if words[0] in {"pip", "pip3", "python", "python3"}:
            if not exact_pip:
                words = [w for w in words if w != "--no-cache-dir"]
            exe = venv / "bin" / words[0]
            say(f"RUN {' '.join(words)}")
            subprocess.run([str(exe), *words[1:]], cwd=_inside(root, workdir, "/"), check=True)
        elif words[0] == "useradd":
            say(f"RUN {part}  (replayed as the numeric uid in USER)")
        elif words[0] == "mkdir":
            for path in (w for w in words[1:] if not w.startswith("-")):
                _inside(root, path, workdir).mkdir(parents=True, exist_ok=True)
            say(f"RUN {part}")
        elif words[0] == "chown":
            owner, *paths = [w for w in words[1:] if not w.startswith("-")]
            uid = _uid(owner)
            if os.geteuid() == 0 and uid is not None:
                for path in paths:
                    os.chown(_inside(root, path, workdir), uid, uid)
            say(f"RUN {part}" + ("" if os.geteuid() == 0 else "  (not root: ownership unchanged)"))
        else:
            raise SystemExit(
                f"image-replay: cannot replay RUN step {part!r}: teach scripts/image_replay.py or change the Dockerfile"
            )


def replay(keep: bool, exact_pip: bool) -> int:
    image = parse_dockerfile(ROOT / "Dockerfile")
    ignore = DockerIgnore.load(ROOT)
    work = Path(tempfile.mkdtemp(prefix="image-replay-"))
    os.chmod(work, 0o755)  # the image's user must reach the app
    root, venv = work / "root", work / "venv"
    server = None
    try:
        python = base_python(image.base)
        say(f"FROM {image.base}: {python} ({subprocess.check_output([python, '--version'], text=True).strip()}) -> {venv}")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        workdir = _inside(root, image.workdir, "/")
        workdir.mkdir(parents=True)
        copies = copied_files(image, ROOT, ignore)
        for step in image.steps:
            if step.instruction == "RUN":
                replay_run(step.args[0], root, venv, image.workdir, exact_pip)
                continue
            *sources, dest = step.args
            for target, src in copies.items():
                if any(src == s or src.startswith(os.path.normpath(s) + "/") for s in map(os.path.normpath, sources)):
                    path = root / target.lstrip("/")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, path)
            say(f"COPY {' '.join(sources)} {dest}")
        say(f"{len(copies)} files copied into {image.workdir}")

        port = free_port()
        env = {**image.env, "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "PORT": str(port)}
        uid = _uid(image.user)
        can_switch = os.geteuid() == 0 and uid is not None and _world_reachable(str(venv / "bin" / "python"))
        as_user = {"user": uid, "group": uid, "extra_groups": []} if can_switch else {}
        say(f"CMD {json.dumps(image.cmd)} in {image.workdir} as uid {uid if as_user else os.geteuid()}, env {sorted(env)}")
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed with the server below
        server = subprocess.Popen(
            image.cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user
        )

        def healthy() -> bool:
            return subprocess.run(image.healthcheck, cwd=workdir, env=env, capture_output=True, **as_user).returncode == 0

        deadline = time.monotonic() + 60
        while not healthy():
            if server.poll() is not None or time.monotonic() > deadline:
                say("FAILED: the app did not become healthy:\n" + (work / "server.log").read_text(errors="replace")[-3000:])
                return 1
            time.sleep(0.5)
        say(f"HEALTHCHECK {json.dumps(image.healthcheck)}: healthy")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
            say(f"GET /ping -> {reply.status} {reply.read().decode()}")
        marker = f"replay-{os.getpid()}-{int(time.time())}"
        body = f'data={{"event":"image replay","properties":{{"distinct_id":"u1","$insert_id":"{marker}"}}}}'.encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/track", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            answer = reply.read().decode()
            say(f"POST /track -> {reply.status} {answer}")
        if answer != "1":
            return 1
        os.killpg(server.pid, signal.SIGTERM)
        code = server.wait(60)
        say(f"SIGTERM: gunicorn drained and exited with {code}")
        data_dir = workdir / env.get("DATA_DIR", "data")
        rows = [
            json.loads(line)
            for path in sorted((data_dir / "events").rglob("*.json.gz"))
            for line in gzip.decompress(path.read_bytes()).splitlines()
        ]
        stored = [r for r in rows if r.get("insert_id") == marker]
        if len(stored) != 1:
            say(f"FAILED: the /track event is not in {data_dir} ({len(rows)} rows there)")
            return 1
        say(f"stored: {json.dumps(stored[0], ensure_ascii=False)}")
        say(f"healthcheck after stop: {'healthy (wrong)' if healthy() else 'unhealthy'}")
        say("OK")
        return 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the replayed root, venv and server log")
    parser.add_argument("--exact-pip", action="store_true", help="keep pip's --no-cache-dir (downloads everything again)")
    args = parser.parse_args(argv)
    return replay(args.keep, args.exact_pip)


if __name__ == "__main__":
    raise SystemExit(main())
