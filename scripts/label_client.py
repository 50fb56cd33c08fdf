"""A small client of the MONAI Label server that ``apps/monailabel`` runs (standard library only).

Used by ``scripts/submit_labels.py`` and ``scripts/simulate_annotator.py`` (import it from there, or load
it by path). Every call takes the server's base URL (``http://127.0.0.1:8000``). :func:`label_server`
starts a real ``monailabel start_server`` on the app, on a free loopback port, the way
``make label-server`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "MODEL",
    "label_venv",
    "label_server",
    "get_json",
    "post_json",
    "put_label",
    "datastore_images",
    "train",
    "next_image",
]

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mssn_mitosis"


def label_venv(path: str | os.PathLike | None = None) -> Path:
    """The MONAI Label environment: ``path``, else ``MSSN_LABEL_VENV``, else ``.venvs/label`` in the checkout."""
    return Path(path or os.environ.get("MSSN_LABEL_VENV") or ROOT / ".venvs" / "label").resolve()


def _url(server: str, path: str, query: Mapping[str, Any] | None = None) -> str:
    url = server.rstrip("/") + path
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


def _error_detail(e: urllib.error.HTTPError) -> str:
    body = e.read().decode("utf-8", "replace")
    try:
        return str(json.loads(body).get("detail", body))
    except (ValueError, AttributeError):
        return body.strip()[:500]


def get_json(server: str, path: str, query: Mapping[str, Any] | None = None, timeout: float = 60) -> Any:
    """``GET`` and decode the JSON answer."""
    with urllib.request.urlopen(_url(server, path, query), timeout=timeout) as r:
        return json.loads(r.read())


def post_json(
    server: str,
    path: str,
    query: Mapping[str, Any] | None = None,
    body: Mapping[str, Any] | None = None,
    timeout: float = 600,
) -> Any:
    """``POST`` a JSON body (``{}`` when none) and decode the JSON answer (``None`` for an empty one)."""
    req = urllib.request.Request(
        _url(server, path, query),
        data=json.dumps(dict(body or {})).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return json.loads(data) if data.strip() else None


def put_label(
    server: str, image: str, filename: str, content: bytes, tag: str = "final", timeout: float = 120
) -> tuple[int, Any]:
    """``PUT /datastore/label?image=..&tag=..`` with a multipart ``label`` file: ``(HTTP status, JSON answer)``.

    An HTTP error is returned, not raised: ``(status, {"detail": ...})``.
    """
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    req = urllib.request.Request(
        _url(server, "/datastore/label", {"image": image, "tag": tag}),
        data=head + content + f"\r\n--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="PUT",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, {"detail": _error_detail(e)}


def datastore_images(server: str) -> dict[str, Any]:
    """The datastore's objects: ``{image id: {"image": ..., "labels": {tag: ...}}}``."""
    return get_json(server, "/datastore/", {"output": "all"})["objects"]


def train(
    server: str, params: Mapping[str, Any], model: str = MODEL, timeout: float = 3600, poll: float = 5
) -> dict[str, Any]:
    """``POST /train/<model>`` and wait until MONAI Label reports the task ``DONE`` or ``ERROR``.

    Returns:
        the last ``GET /train/?check_if_running=false`` answer, with ``seconds`` (wall time) added.

    Raises:
        TimeoutError: still running after ``timeout`` seconds.
    """
    t0 = time.monotonic()
    post_json(server, f"/train/{model}", body=params, timeout=60)
    while True:
        task = get_json(server, "/train/", {"check_if_running": "false"}, timeout=30)
        if task.get("status") in ("DONE", "ERROR"):
            return {**task, "seconds": time.monotonic() - t0}
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"/train/{model} still {task.get('status')} after {timeout:.0f} s")
        time.sleep(poll)


def next_image(server: str, strategy: str) -> dict[str, Any] | None:
    """``POST /activelearning/<strategy>``: the image to label next (``{"id", ...}``), ``None`` when none is left."""
    res = post_json(server, f"/activelearning/{strategy}")
    return res if res and res.get("id") else None


@contextlib.contextmanager
def label_server(
    studies: str | os.PathLike,
    log_path: str | os.PathLike,
    conf: Mapping[str, str] | None = None,
    venv: str | os.PathLike | None = None,
    start_timeout: float = 180,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A real ``monailabel start_server`` on ``apps/monailabel``, on a free loopback port, log to ``log_path``.

    Yields:
        ``(base URL, /info answer)``; the server is stopped on exit.

    Raises:
        FileNotFoundError: no ``monailabel`` in the environment (``make label-venv`` makes it).
        RuntimeError: the server exited or did not answer within ``start_timeout`` (the log's tail).

    The server runs in a process group of its own, stopped whole on exit (train and scoring subprocesses too).
    """
    venv = label_venv(venv)
    exe = venv / "bin" / "monailabel"
    if not exe.exists():
        raise FileNotFoundError(f"no MONAI Label at {exe}: run `make label-venv` (or set MSSN_LABEL_VENV)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MONAILABEL_PYEXE"] = str(venv / "bin" / "python")
    cmd = [str(exe), "start_server", "--app", str(ROOT / "apps" / "monailabel"), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "models", MODEL]
    cmd += ["--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    for k, v in (conf or {}).items():
        cmd += ["--conf", k, str(v)]
    log_path = Path(log_path)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        # its own process group: the train and scoring tasks MONAI Label starts as subprocesses stop with it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    info = get_json(url, "/info/", timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"MONAI Label did not start (log {log_path}):\n{tail}") from None
                    time.sleep(1)
            yield url, info
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (itself and the tasks it started), SIGKILL what is left after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
