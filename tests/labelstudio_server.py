"""A real Label Studio on 127.0.0.1 for the round-trip test, from its own virtual environment.

Label Studio's first start migrates its SQLite database (minutes on 2 cores), so a migrated
data folder is kept as a template beside its venv (``make`` builds it once:
``python tests/labelstudio_server.py template``) and each test run starts from a copy.

    python tests/labelstudio_server.py template   # build the migrated template
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LABEL_STUDIO_VENV", ROOT / ".venv-labelstudio"))
BINARY = VENV / "bin" / "label-studio"
TEMPLATE = VENV / "data-template"
USER, PASSWORD = "labeler@example.com", "lookalike-test-pass"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a legacy token, made for this test only
START_TIMEOUT_S = 600.0  # a first start migrates the database


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(data_dir: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Label Studio serving ``data_dir`` on a free loopback port; yields its URL. The whole
    process group is stopped at the end."""
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data_dir.parent),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",  # no call to the package index at each start
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = open(data_dir.parent / "label-studio.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(BINARY),
            "start",
            "--no-browser",
            "--host",
            f"http://127.0.0.1:{port}",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        cwd=data_dir.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped whole
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, timeout_s, data_dir.parent / "label-studio.log")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited ({process.returncode}): {_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            health = httpx.get(f"{url}/health", timeout=2)
            users = httpx.get(
                f"{url}/api/current-user/whoami",
                headers={"authorization": f"Token {TOKEN}"},
                timeout=5,
            )
            if health.status_code == 200 and users.status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"Label Studio did not answer within {timeout_s:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else "(no log)"


def make_template() -> None:
    """Migrate a fresh data folder once (start, wait until it answers, stop) and keep it."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        with running(data):
            pass
        if TEMPLATE.exists():
            shutil.rmtree(TEMPLATE)
        shutil.copytree(data, TEMPLATE)


@contextlib.contextmanager
def label_studio(workdir: Path) -> Iterator[str]:
    """A Label Studio started from a copy of the migrated template (made first if missing)."""
    if not TEMPLATE.exists():
        make_template()
    data = workdir / "label-studio-data"
    shutil.copytree(TEMPLATE, data)
    with running(data) as url:
        yield url


if __name__ == "__main__":
    if sys.argv[1:] != ["template"]:
        sys.exit("usage: python tests/labelstudio_server.py template")
    started = time.monotonic()
    make_template()
    print(f"Label Studio data template at {TEMPLATE} ({time.monotonic() - started:.0f} s)")
