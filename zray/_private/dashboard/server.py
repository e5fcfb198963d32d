"""The dashboard's HTTP server: one socket, one serving thread, read-only.

Owns the listening socket, who may read (the token check off loopback) and
the HTTP framing of every reply.  What each ``/api/`` path answers lives in
``api``; the page itself in ``static/``.  It must not touch the cluster:
everything it shows comes from ``source``, and it answers only GET and
HEAD (anything else is 405), so a request can never change state or run code.

    browser ──GET──▶ Dashboard (ThreadingHTTPServer, daemon thread)
                        ├─ /, /static/*  ─▶ static/ files, read once in start()
                        └─ /api/*        ─▶ api.Api ─▶ source.*() ─▶ views.* ─▶ JSON

The source
----------
A duck-typed object; each method returns JSON-able values, IDs as hex
strings, times as wall-clock seconds, missing values as None.  Requests
are served on threads, so its methods may be called concurrently:

* ``cluster() -> {"nodes": [{"node_id", "address", "alive", "is_head",
  "resources_total": {name: float}, "resources_available": {name: float},
  "object_store_used", "object_store_capacity", "workers"}], "session": str}``
* ``jobs() -> [{"job_id", "status": "RUNNING"|"FINISHED", "driver_pid",
  "namespace", "start_time", "end_time", "tasks"}]``
* ``tasks(job: Optional[str], limit: int) -> [task]``: the ``limit`` most
  recently submitted tasks of ``job`` (all jobs if None).  A task is
  ``{"task_id", "job_id", "name", "type", "state", "node_id", "worker_id",
  "worker_pid", "actor_id", "parent_task_id", "args": [{"object_id", "size"}],
  "returns": [{"object_id", "size"}], "error", "submitted_at",
  "scheduled_at", "started_at", "finished_at", "events": [{"state", "time"}]}``
  with ``state`` one of SUBMITTED, PENDING_NODE_ASSIGNMENT, RUNNING,
  FINISHED, FAILED.
* ``actors() -> [{"actor_id", "class_name", "name", "namespace", "state",
  "node_id", "pid", "job_id"}]`` (state ALIVE, RESTARTING, DEAD or
  PENDING_CREATION).
* ``objects() -> [{"object_id", "size", "node_id", "kind", "spilled",
  "ref_count", "pins"}]``
* ``timeline(job) -> [event]``: Chrome trace events, ``ph: "X"`` boxes
  (``ts``/``dur`` in µs, ``pid`` a node, ``tid`` a worker, ``name``,
  ``args`` with ``state`` and ``task_id``) and ``ph: "M"`` ``process_name``
  / ``thread_name`` events (``observe.trace.chrome_trace`` of the tasks).
* ``graph(job) -> {"nodes": [{"id", "label", "shape": "box"|"ellipse",
  "state"}], "edges": [{"from", "to", "style": "dashed"|"solid"}]}``;
  ``observe.graph.graph_model`` of the tasks.
* ``logs() -> {node_id: [file name]}`` and ``log(node, name, tail) -> str``
  (the last ``tail`` bytes).  Only names ``logs()`` lists are ever asked for.

Replies
-------
``/api/cluster`` is the source's reply; ``/api/jobs`` ``{"jobs"}`` newest
first; ``/api/tasks?job=&state=&limit=`` ``{"tasks", "matched", "limit",
"capped"}``; ``/api/progress?job=`` ``{"functions": [{"name", "finished",
"running", "pending", "failed", "total"}], "tasks", "capped"}``;
``/api/timeline?job=`` ``{"events", "total", "shown", "capped", "now"}``
(``&full=1``: the source's whole list); ``/api/graph?job=`` the graph with
``layer`` and ``order`` per node, ``total_nodes`` and ``capped``;
``/api/actors`` ``{"actors", "total", "states", "capped"}``;
``/api/objects`` ``{"objects", "total", "total_bytes", "per_node",
"capped"}``; ``/api/logs`` ``{"logs"}``; ``/api/log?node=&file=&tail=``
``{"node", "file", "tail", "text"}``.  Errors: ``{"error": "..."}`` with
400, 404 or 500 (the source raised; the server lives on).

Privacy
-------
Bound to loopback, anyone on this machine may read, as with ``zray
status``; the Host header must then name loopback too, so a web page
cannot reach the dashboard by rebinding its own DNS name to 127.0.0.1.
Bound elsewhere, every request needs the cluster token: an
``Authorization: Bearer`` header, or ``?token=`` once, which answers with
an HttpOnly, SameSite=Strict cookie and (for pages) a redirect that drops
the token from the address bar.  The cookie holds a value derived from the
token, not the token, which would also admit a peer to the cluster.  Plain
HTTP does not hide the token from the network: on a network you do not
trust, reach a loopback dashboard through an SSH tunnel instead.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import pathlib
import socket
import threading
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from zray._private.dashboard.api import Api, BadRequest, NotFound

logger = logging.getLogger("zray.dashboard")

DEFAULT_PORT = 8265
STATIC_DIR = pathlib.Path(__file__).parent / "static"
COOKIE_NAME = "zray_dashboard"

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# Everything the page needs comes from this server; nothing inline, nothing
# from elsewhere, no framing by other sites.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_TOKEN_NEEDED = (b"<!doctype html><meta charset=utf-8><title>zray dashboard: token needed</title>"
                 b"<h1>Token needed</h1><p>This zray dashboard is reachable from other machines, "
                 b"so it needs the cluster token: open it once as "
                 b"<code>http://HOST:PORT/?token=TOKEN</code> with the token <code>zray head</code> "
                 b"printed, or send <code>Authorization: Bearer TOKEN</code>.</p>\n")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 maybe in brackets) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenGate:
    """Who may read an off-loopback dashboard: holders of the cluster token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._cookie = hmac.new(self._token, b"zray dashboard cookie",
                                hashlib.sha256).hexdigest().encode()

    @staticmethod
    def _same(given: str, expected: bytes) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected)

    def admits_query(self, query: Mapping[str, str]) -> bool:
        return "token" in query and self._same(query["token"], self._token)

    def admits_headers(self, headers: Any) -> bool:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and self._same(auth[7:].strip(), self._token):
            return True
        jar = cookies.SimpleCookie()
        try:
            jar.load(headers.get("Cookie", ""))
        except cookies.CookieError:
            return False
        morsel = jar.get(COOKIE_NAME)
        return morsel is not None and self._same(morsel.value, self._cookie)

    def cookie_header(self) -> str:
        return f"{COOKIE_NAME}={self._cookie.decode()}; Path=/; HttpOnly; SameSite=Strict"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], family: int, dashboard: "Dashboard") -> None:
        self.address_family = family
        self.dashboard = dashboard
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on
        # a machine without DNS; the name is only used in CGI variables.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("dashboard request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "zray-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method without a do_<METHOD> with 501; a
        # read-only server should say 405 and list what it allows instead.
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def _refuse_method(self) -> None:
        self._send(405, b'{"error": "read-only: GET and HEAD only"}\n', "application/json",
                   {"Allow": "GET, HEAD"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        # One leading slash: "//host/x" must stay a path here, never a host.
        url = urlsplit("/" + self.path.lstrip("/"))
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        dashboard = self.server.dashboard
        if dashboard.gate is None:
            if not is_loopback(self._host_name()):
                self._send(403, b"Open this dashboard as localhost or 127.0.0.1.\n", "text/plain")
                return
        elif not dashboard.gate.admits_headers(self.headers):
            if not dashboard.gate.admits_query(query):
                self._send(401, _TOKEN_NEEDED, _CONTENT_TYPES[".html"],
                           {"WWW-Authenticate": "Bearer"})
                return
            cookie = {"Set-Cookie": dashboard.gate.cookie_header()}
            if not url.path.startswith("/api/"):
                # Drop the token from the address bar (and from history).
                rest = urlencode({k: v for k, v in query.items() if k != "token"})
                where = url.path + ("?" + rest if rest else "")
                self._send(303, b"", "text/plain", {**cookie, "Location": where})
                return
            self._route(url.path, query, cookie)
            return
        self._route(url.path, query, {})

    def _host_name(self) -> str:
        host = self.headers.get("Host")
        if not host:
            return "localhost"  # HTTP/1.0 without Host: nothing to rebind
        if host.startswith("["):
            return host[1:host.find("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    def _route(self, path: str, query: Dict[str, str], extra: Dict[str, str]) -> None:
        dashboard = self.server.dashboard
        static = dashboard.static_files.get(path)
        if static is not None:
            body, content_type = static
            self._send(200, body, content_type, extra)
            return
        endpoint = dashboard.endpoints.get(path)
        if endpoint is None:
            self._send_json(404, {"error": f"no such page: {path[:200]}"}, extra)
            return
        try:
            reply = endpoint(query)
        except BadRequest as e:
            self._send_json(400, {"error": str(e)}, extra)
            return
        except NotFound as e:
            self._send_json(404, {"error": str(e)}, extra)
            return
        except Exception as e:
            logger.warning("dashboard source failed on %s", path, exc_info=True)
            self._send_json(500, {"error": f"{type(e).__name__}: {e}"}, extra)
            return
        self._send_json(200, reply, extra)

    def _send_json(self, status: int, value: Any, extra: Dict[str, str]) -> None:
        try:
            body = json.dumps(value, separators=(",", ":"), default=str,
                              allow_nan=False).encode()
        except ValueError as e:  # NaN (which JSON.parse refuses) or a cycle from the source
            status, body = 500, json.dumps({"error": f"reply is not JSON: {e}"}).encode()
        self._send(status, body, "application/json", extra)

    def _send(self, status: int, body: bytes, content_type: str,
              extra: Optional[Dict[str, str]] = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", _CSP)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except ConnectionError:
            logger.debug("dashboard client went away before its reply")


def _read_static() -> Dict[str, Tuple[bytes, str]]:
    files: Dict[str, Tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and path.suffix in _CONTENT_TYPES:
            files["/static/" + path.name] = (path.read_bytes(), _CONTENT_TYPES[path.suffix])
    files["/"] = files["/index.html"] = files["/static/index.html"]
    return files


class Dashboard:
    """A read-only web view of a cluster, served from a daemon thread.

    ``Dashboard(source)`` only remembers its arguments; ``start()`` binds
    (port 0: any free port) and serves, ``stop()`` closes the socket and
    joins the thread.  ``token`` is required unless ``host`` is loopback.
    """

    def __init__(self, source: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: Optional[str] = None) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.token = token
        self.gate: Optional[TokenGate] = None
        self.endpoints = Api(source).routes()
        self.static_files: Dict[str, Tuple[bytes, str]] = {}
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Dashboard":
        if self._server is not None:
            raise RuntimeError("dashboard already started")
        if is_loopback(self.host):
            self.gate = None
        elif not self.token:
            raise ValueError(f"a token is required to serve the dashboard off loopback "
                             f"(host {self.host!r}); pass the cluster token")
        else:
            self.gate = TokenGate(self.token)
        self.static_files = _read_static()
        host = self.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, self.port), family, self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="zray-dashboard", daemon=True)
        self._thread.start()
        logger.info("dashboard serving at %s", self.url)
        return self

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("dashboard not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where to point a browser (without the token)."""
        host = self.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        port = self.bound_port if self._server is not None else self.port
        return f"http://{shown}:{port}/"

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
