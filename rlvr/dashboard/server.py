"""`rlvr dashboard`: a local web page that follows one or more run directories while they train.

The server is read-only: it opens files of the run directories for reading and never writes there.
The page polls small JSON endpoints; metrics come back as the complete lines appended since a byte
offset, so a trainer appending to metrics.jsonl is all it takes to move the charts. Charts use the
plotly.min.js that the installed plotly package ships, served from here: no CDN, works offline.

Endpoints (all GET):
  /                               the page (static/index.html)
  /static/<file>                  its script and style, and plotly.min.js
  /api/runs                       every run: name, status and metadata from run.json, config
  /api/runs/<id>/metrics?offset=N metrics.jsonl records after byte N, and the offset to ask from next
  /api/runs/<id>/samples          the steps that have sample completions, with their counts
  /api/runs/<id>/samples/<step>   the sample completions of one step
  /runs/<id>/files/<path>         a file of the run directory (nothing outside it)
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
RUN_MARKERS = ("metrics.jsonl", "run.json", "samples.jsonl")
MAX_METRICS_BYTES = 4 << 20  # per response; the page asks again at once while `more` is true
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".txt", ".log", ".md", ".csv"}
LOOPBACK_HOSTNAMES = {"localhost", "localhost.localdomain"}
# The page needs only itself and plotly; plotly sets inline styles, nothing else is allowed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def plotly_js_path() -> Path:
    """plotly.min.js as the plotly package ships it; RlvrError naming the extra when plotly is missing."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise RlvrError("rlvr dashboard needs plotly: pip install 'rlvr[dashboard]' (or pip install plotly)")
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise RlvrError(f"plotly is installed but {path} is missing; reinstall it: pip install --force-reinstall "
                        "'plotly>=5'")
    return path


# ---------------------------------------------------------------- reading what the trainer appends


def _loads(line: bytes) -> dict | None:
    """One JSON object, or None for anything else. NaN/Infinity become null: the page's JSON.parse
    would refuse them."""
    try:
        record = json.loads(line, parse_constant=lambda _: None)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_new_records(path: Path, offset: int, limit: int | None = None) -> dict:
    """The complete lines of a JSONL file after byte `offset`.

    A last line without its newline is still being written: it is left for the next call, which
    starts at the returned `offset`. Lines that are not JSON objects are skipped and counted. An
    offset past the end means the file was replaced: reading starts over (`reset`).
    """
    limit = limit or MAX_METRICS_BYTES
    out = {"records": [], "offset": offset, "malformed": 0, "reset": False, "more": False}
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        out.update(offset=0, reset=offset > 0)
        return out
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            offset, out["reset"] = 0, True
        f.seek(offset)
        want = min(limit, size - offset)
        data = f.read(want)
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) == limit:
            # One line longer than a whole response: skip it rather than ask for it forever.
            end = len(data) + len(f.readline())
            out["malformed"] += 1
            data = b""
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            record = _loads(line)
            if record is None:
                out["malformed"] += 1
            else:
                out["records"].append(record)
        out["offset"] = offset + end
        out["more"] = want == limit and out["offset"] < size
    return out


@dataclass
class SamplesIndex:
    """Where each step's sample completions lie in samples.jsonl, extended as the file grows.

    A step written again (a resumed run replaying it) replaces the earlier lines of that step.
    """

    path: Path
    offset: int = 0
    steps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    last_step: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < self.offset:  # replaced or truncated: index it again
            self.offset, self.steps, self.last_step = 0, {}, None
        if size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n") + 1
        pos = self.offset
        for line in data[:end].split(b"\n")[:-1]:
            record = _loads(line)
            step = record.get("step") if record else None
            if isinstance(step, int):
                if step != self.last_step and step in self.steps:
                    self.steps[step] = []
                self.steps.setdefault(step, []).append((pos, len(line)))
                self.last_step = step
            pos += len(line) + 1
        self.offset += end

    def summary(self) -> list[dict]:
        with self.lock:
            self.refresh()
            return [{"step": s, "count": len(lines)} for s, lines in sorted(self.steps.items())]

    def read_step(self, step: int) -> list[dict] | None:
        with self.lock:
            self.refresh()
            lines = list(self.steps.get(step, ()))
        if not lines:
            return None
        records = []
        with open(self.path, "rb") as f:
            for pos, length in lines:
                f.seek(pos)
                record = _loads(f.read(length))
                if record is not None:
                    records.append(record)
        return records


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    id: int
    name: str
    root: Path  # resolved: every file served must resolve inside it
    samples: SamplesIndex = field(init=False)

    def __post_init__(self):
        self.samples = SamplesIndex(self.root / "samples.jsonl")


def _is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in RUN_MARKERS)


def discover_runs(paths: list[str | Path]) -> list[Run]:
    """Each argument is a run directory, or a folder of them (e.g. runs/demo with sft/ and grpo/).

    A folder with neither is taken as a run that has not written anything yet.
    """
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise RlvrError(f"rlvr dashboard: {p} is not a directory; pass run directories (train.output_dir)")
        children = [] if _is_run(p) else sorted(c for c in p.iterdir() if c.is_dir() and _is_run(c))
        dirs.extend(children or [p])
    roots = list(dict.fromkeys(Path(os.path.realpath(d)) for d in dirs))
    return [Run(i, name, root) for i, (name, root) in enumerate(zip(_unique_names(roots), roots))]


def _unique_names(roots: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart: grpo, demo/grpo, ..."""
    depth = 1
    while True:
        names = ["/".join(r.parts[-depth:]) for r in roots]
        if len(set(names)) == len(names) or depth >= max(len(r.parts) for r in roots):
            return names
        depth += 1


def _read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(), parse_constant=lambda _: None)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _process_alive(pid) -> bool | None:
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_info(run: Run) -> dict:
    """What the page shows about a run: run.json (status, model, versions, times), the config as YAML
    text, and how long ago metrics.jsonl last changed."""
    import yaml

    meta = _read_json(run.root / "run.json") or {}
    config = meta.pop("config", None)
    config_file = run.root / "config.yaml"
    try:
        config_text = config_file.read_text() if config_file.is_file() else None
    except OSError:
        config_text = None
    if config_text is None and config is not None:
        config_text = yaml.safe_dump(config, sort_keys=False)
    alive = None
    if meta.get("status") == "running" and meta.get("host") == socket.gethostname():
        alive = _process_alive(meta.get("pid"))
    try:
        metrics_age = time.time() - (run.root / "metrics.jsonl").stat().st_mtime
    except OSError:
        metrics_age = None
    files = [n for n in ("config.yaml", "run.json", "metrics.jsonl", "samples.jsonl", "memory_estimate.json")
             if (run.root / n).is_file()]
    return {"id": run.id, "name": run.name, "path": str(run.root), "status": meta.get("status", "unknown"),
            "alive": alive, "meta": meta, "config_text": config_text, "metrics_age_s": metrics_age, "files": files}


def resolve_inside(root: Path, relative: str) -> Path | None:
    """`root/relative` with every symlink and '..' resolved, or None when that leaves `root`."""
    if "\x00" in relative:
        return None
    target = os.path.realpath(os.path.join(root, relative.lstrip("/")))
    if os.path.commonpath([str(root), target]) != str(root):
        return None
    return Path(target)


# ---------------------------------------------------------------- HTTP


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, runs: list[Run], host: str = "127.0.0.1", port: int = 8787):
        self.runs = runs
        self.plotly_js = plotly_js_path()
        self.loopback_only = _is_loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), DashboardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """'127.0.0.1:8787' → '127.0.0.1', '[::1]:8787' → '::1'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the signature is BaseHTTPRequestHandler's
        log.debug("dashboard: " + format, *args)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        self._head = head
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):  # the page closed or reloaded mid-answer
            pass

    def _route(self) -> None:
        # A page on another origin could reach a loopback server through DNS rebinding; it would send
        # its own host name in Host, so only loopback names are answered.
        if self.server.loopback_only and not _is_loopback(_host_name(self.headers.get("Host", ""))):
            return self._error(HTTPStatus.FORBIDDEN, "this dashboard only answers to localhost")
        url = urlsplit(self.path)
        parts = url.path.split("/")[1:]  # split before unquoting: an encoded '/' stays inside a name
        query = parse_qs(url.query)
        if url.path in ("/", "/index.html"):
            return self._static("index.html")
        if len(parts) == 2 and parts[0] == "static":
            return self._static(unquote(parts[1]))
        if parts[:2] == ["api", "runs"]:
            return self._api(parts[2:], query)
        if len(parts) >= 4 and parts[0] == "runs" and parts[2] == "files":
            run = self._run(parts[1])
            return run and self._file(run, unquote("/".join(parts[3:])))
        self._error(HTTPStatus.NOT_FOUND, "not found")

    def _api(self, rest: list[str], query: dict) -> None:
        if not rest or rest == [""]:
            return self._json({"runs": [run_info(r) for r in self.server.runs], "now": time.time()})
        run = self._run(rest[0])
        if run is None:
            return
        if rest[1:] == ["metrics"]:
            offset = query.get("offset", ["0"])[0]
            if not offset.isdigit():
                return self._error(HTTPStatus.BAD_REQUEST, "offset must be a byte count >= 0")
            return self._json(read_new_records(run.root / "metrics.jsonl", int(offset)))
        if rest[1:] == ["samples"]:
            return self._json({"steps": run.samples.summary()})
        if len(rest) == 3 and rest[1] == "samples" and rest[2].lstrip("-").isdigit():
            records = run.samples.read_step(int(rest[2]))
            if records is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no samples at step {rest[2]}")
            return self._json({"step": int(rest[2]), "samples": records})
        self._error(HTTPStatus.NOT_FOUND, "not found")

    def _run(self, text: str) -> Run | None:
        if text.isdigit() and int(text) < len(self.server.runs):
            return self.server.runs[int(text)]
        self._error(HTTPStatus.NOT_FOUND, f"no run {text!r}")
        return None

    def _static(self, name: str) -> None:
        if name == "plotly.min.js":
            return self._send(self.server.plotly_js.read_bytes(), "text/javascript; charset=utf-8",
                              cache="max-age=86400")
        if name not in STATIC_TYPES:  # a fixed list: nothing else of the package is reachable
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        extra = {"Content-Security-Policy": CSP} if name == "index.html" else {}
        self._send((STATIC_DIR / name).read_bytes(), STATIC_TYPES[name], extra=extra)

    def _file(self, run: Run, relative: str) -> None:
        path = resolve_inside(run.root, relative)
        if path is None:
            return self._error(HTTPStatus.FORBIDDEN, "outside the run directory")
        if not path.is_file():
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        # Never as HTML: a file of the run must not run script in the dashboard's origin.
        text = path.suffix in TEXT_SUFFIXES
        ctype = "text/plain; charset=utf-8" if text else "application/octet-stream"
        extra = {} if text else {"Content-Disposition": "attachment"}
        with open(path, "rb") as f:
            self._send(f.read(), ctype, extra=extra)

    def _json(self, obj) -> None:
        self._send(json.dumps(obj, default=str).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(json.dumps({"error": message}).encode(), "application/json", status)

    def _send(self, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK, cache: str = "no-store",
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not self._head:
            self.wfile.write(body)


# ---------------------------------------------------------------- entry points


def make_server(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8787) -> DashboardServer:
    """A server for these run directories, bound but not yet serving (port 0 picks a free port)."""
    runs = discover_runs(run_dirs)
    try:
        return DashboardServer(runs, host, port)
    except OSError as e:
        raise RlvrError(f"rlvr dashboard: cannot listen on {host}:{port} ({e.strerror}); pass another --port "
                        "or --host") from None


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8787) -> None:
    """Serve until Ctrl-C."""
    server = make_server(run_dirs, host, port)
    names = ", ".join(f"{r.name} ({r.root})" for r in server.runs)
    print(f"rlvr dashboard: {server.url}  following {names}", flush=True)
    if not server.loopback_only:
        print(f"rlvr dashboard: listening on {host}, reachable from other machines; the page has no login",
              flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
