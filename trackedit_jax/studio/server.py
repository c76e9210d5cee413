"""The studio's HTTP server: Python's ThreadingHTTPServer on a loopback address, a random token on every
request, the page's static files from the package, and the JSON API (docs/studio.md).

Every request must carry the token (`?token=` or the `X-Studio-Token` header; else 403) and a Host header
naming the loopback address (else 403: a page of another site cannot reach the API through DNS
rebinding). Bodies are JSON of at most `MAX_BODY` bytes.
"""

from __future__ import annotations

import hmac
import http.server
import io
import ipaddress
import json
import pathlib
import re
import secrets
import socket
import urllib.parse

import numpy as np

from trackedit_jax.geometry.spec_source import EditSpecError
from trackedit_jax.studio import api
from trackedit_jax.studio.jobs import JobManager

STATIC = pathlib.Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
MAX_BODY = 1_000_000
LOOPBACK_NAMES = ("localhost",)


def check_loopback(host: str) -> str:
    """`host` if it is a loopback address (127.0.0.0/8, ::1, localhost); ValueError otherwise."""
    if host in LOOPBACK_NAMES:
        return "127.0.0.1"
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"--host {host}: the studio serves this machine only; bind to a loopback address (127.0.0.1 or ::1)"
        )
    return host


def png_bytes(frame: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
    return buf.getvalue()


class StudioServer(http.server.ThreadingHTTPServer):
    """Serves one scene to any number of tabs; edit jobs run one at a time in `jobs`."""

    daemon_threads = True

    def __init__(self, scene: api.Scene, *, host: str, port: int, out_dir, allowed, checkpoint=None, token=None):
        host = check_loopback(host)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.scene = scene
        self.token = token or secrets.token_urlsafe(24)
        self.out_dir = pathlib.Path(out_dir).absolute()
        self.allowed = [pathlib.Path(a).absolute() for a in allowed]
        self.models = api.ModelCache(checkpoint)
        self.jobs = JobManager(self.out_dir)
        self.limits = api.depth_limits(scene)
        info = {**api.scene_json(scene), "checkpoint": str(self.models.checkpoint)}
        self.scene_body = json.dumps(info, allow_nan=False).encode()
        self._frames: dict[int, bytes] = {}
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/?token={self.token}"

    def frame_png(self, i: int) -> bytes:
        if i not in self._frames:
            self._frames[i] = png_bytes(self.scene.video[i])
        return self._frames[i]

    def close(self) -> None:
        """Stop serving, cancel the jobs (their temporary folders are removed) and close the socket."""
        self.jobs.shutdown()
        self.server_close()


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(http.server.BaseHTTPRequestHandler):
    server: StudioServer
    server_version = "trackedit-studio"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # the command prints its URL; one line per request would bury it

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _authorised(self, query: dict) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise HttpError(403, f"forbidden: Host {host!r} is not this machine's loopback address")
        given = self.headers.get("X-Studio-Token") or (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise HttpError(403, "forbidden: missing or wrong token (open the URL `trackedit studio` printed)")

    def _body(self) -> dict:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            raise HttpError(400, "bad Content-Length") from e
        if n > MAX_BODY:
            raise HttpError(413, f"request body of {n} bytes; at most {MAX_BODY} are accepted")
        raw = self.rfile.read(n) if n else b"{}"
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HttpError(400, f"the request body is not JSON: {api.one_line(e)}") from e
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            self._authorised(query)
            if method == "POST":
                body = self._body()
            else:
                body = None
            self._route(method, url.path, body)
        except HttpError as e:
            self._json(e.status, {"error": str(e)})
        except (EditSpecError, api.StudioError, ValueError, FileNotFoundError) as e:
            self._json(400, {"error": api.one_line(e)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: say so on the page, keep serving the other tabs
            self._json(500, {"error": f"internal error: {api.one_line(e)}"})

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    # ------------------------------------------------------------------ routes
    def _route(self, method: str, path: str, body) -> None:
        s = self.server
        if method == "GET" and path in ("/", "/index.html"):
            html = (STATIC / "index.html").read_text().replace("__TOKEN__", s.token)
            return self._send(200, html.encode(), STATIC_TYPES[".html"])
        if method == "GET" and (m := re.fullmatch(r"/static/([a-z]+\.(?:js|css))", path)):
            f = STATIC / m.group(1)
            if not f.is_file():
                raise HttpError(404, f"no such file: {path}")
            return self._send(200, f.read_bytes(), STATIC_TYPES[f.suffix])
        if method == "GET" and path == "/api/scene":
            return self._send(200, s.scene_body, "application/json")
        if method == "GET" and (m := re.fullmatch(r"/api/frame/(\d+)\.png", path)):
            i = int(m.group(1))
            if not 0 <= i < s.scene.video.shape[0]:
                raise HttpError(404, f"frame {i} out of range [0, {s.scene.video.shape[0] - 1}]")
            return self._send(200, s.frame_png(i), "image/png")
        if method == "POST" and path == "/api/preview":
            return self._json(200, api.preview(s.scene, body.get("spec"), s.allowed, s.limits))
        if method == "POST" and path == "/api/jobs":
            work = api.edit_work(
                s.scene, body.get("spec"), s.allowed, s.models, steps=body.get("steps"), seed=body.get("seed", 0)
            )
            return self._json(200, s.jobs.submit(work).status())
        if m := re.fullmatch(
            r"/api/jobs/(\d+)(/cancel|/frame/(\d+)\.png|/file/([a-z_]+\.(?:mp4|npz|yaml|txt)))?", path
        ):
            job = s.jobs.get(m.group(1))
            if job is None:
                raise HttpError(404, f"no job {m.group(1)}")
            if m.group(2) is None and method == "GET":
                return self._json(200, job.status())
            if m.group(2) == "/cancel" and method == "POST":
                s.jobs.cancel(job.id)
                return self._json(200, job.status())
            if m.group(3) is not None and method == "GET" and "video" in job.result:
                video = job.result["video"]
                i = int(m.group(3))
                if not 0 <= i < video.shape[0]:
                    raise HttpError(404, f"frame {i} out of range [0, {video.shape[0] - 1}]")
                return self._send(200, png_bytes(video[i]), "image/png")
            if m.group(4) is not None and method == "GET" and job.state == "done" and m.group(4) in job.files:
                f = job.out_dir / m.group(4)
                disp = {"Content-Disposition": f'attachment; filename="{f.name}"'}
                return self._send(200, f.read_bytes(), "application/octet-stream", disp)
        raise HttpError(404, f"no such resource: {method} {path}")


def make_server(
    scene: api.Scene,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    out_dir="studio_out",
    allowed=(),
    checkpoint=None,
    token: str | None = None,
) -> StudioServer:
    """A studio server for `scene` (not yet serving: call `serve_forever`). Spec paths may name files in
    the scene's folder and in `allowed`; edit jobs write into `out_dir`. port 0 picks a free port."""
    folders = [scene.folder, *allowed]
    return StudioServer(
        scene, host=host, port=port, out_dir=out_dir, allowed=folders, checkpoint=checkpoint, token=token
    )
