"""The web dashboard against a fake in-memory source: no cluster.

Pure shaping and layout functions alone; the server over real HTTP (JSON,
404/405, a failing source, the token off loopback, log names); and the page
in a headless Chromium (every tab without script errors, live updates,
screenshots, and how long 10,000 tasks take to draw).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from typing import Any, Dict, List, Optional

import pytest

from zray._private.dashboard import api, views
from zray._private.observe import graph as graphs
from zray._private.observe import trace as traces
from zray._private.dashboard.layout import layered_layout
from zray._private.dashboard.server import COOKIE_NAME, Dashboard, is_loopback

pytestmark = pytest.mark.timeout(120)

NODE_A = "a1" * 14
NODE_B = "b2" * 14
NODE_DEAD = "dd" * 14
JOB_1 = "01000000"
JOB_2 = "02000000"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = "/tmp/zray-dashboard-shots"
TABS = ["overview", "jobs", "tasks", "progress", "actors", "objects", "graph", "logs"]


# --------------------------------------------------------------------------- the fake source


def driver_prefix(job: str) -> str:
    """As zray makes task IDs: a random prefix per driver, then a counter."""
    return f"{int(job, 16) * 0x9E3779B1:016x}"[-16:]


class FakeSource:
    """A cluster in memory: two live nodes and a dead one, two jobs, tasks
    whose arguments are earlier tasks' results, actors, objects and logs."""

    def __init__(self, tasks_per_job=(60, 24)) -> None:
        self.lock = threading.Lock()
        self.start = time.time() - 40
        # Submissions spread over the last 40 s however many tasks there are.
        self.spacing = 40 / max(1, sum(tasks_per_job))
        self.fail: Optional[Exception] = None
        self.log_reads: List[tuple] = []
        self.task_list: List[Dict[str, Any]] = []
        for job, count in zip((JOB_1, JOB_2), tasks_per_job):
            self.add_tasks(job, count)

    def add_tasks(self, job: str, count: int, name: Optional[str] = None) -> None:
        with self.lock:
            for k in range(count):
                self.task_list.append(self._task(job, len(self.task_list), name,
                                                 settled=count - k > 30))

    def _task(self, job: str, i: int, name: Optional[str], settled: bool) -> Dict[str, Any]:
        node = (NODE_A, NODE_B)[i % 2]
        submitted = self.start + i * self.spacing
        state = ("FINISHED", "FINISHED", "FINISHED", "RUNNING", "PENDING_NODE_ASSIGNMENT",
                 "FINISHED", "FAILED", "SUBMITTED", "FINISHED")[i % 9]
        if settled and state != "FAILED":
            state = "FINISHED"  # only the last few of a batch still wait or run
        started = None if state in views.PENDING_STATES else submitted + 0.3 + (i % 7) * 0.1
        finished = started + 0.2 + (i % 5) * 0.15 if state in ("FINISHED", "FAILED") else None
        previous = self.task_list[i - 1]["task_id"] if i and self.task_list else None
        task_id = driver_prefix(job) + f"{i + 1:016x}"
        return {
            "task_id": task_id, "job_id": job,
            "name": name or ("load_shard", "square", "reduce_sum")[i % 3],
            "type": "NORMAL_TASK", "state": state,
            "node_id": None if started is None else node, "worker_id": f"{i % 4:04x}" * 4,
            "worker_pid": None if started is None else 4000 + i % 4 + (100 if node == NODE_B else 0),
            "actor_id": None, "parent_task_id": previous if i % 10 == 5 else None,
            "args": [{"object_id": previous + "00000001", "size": 800}] if previous and i % 3 else [],
            "returns": [{"object_id": task_id + "00000001", "size": 800}],
            "error": "ZeroDivisionError: division by zero" if state == "FAILED" else None,
            "submitted_at": submitted, "scheduled_at": started, "started_at": started,
            "finished_at": finished, "events": [{"state": "SUBMITTED", "time": submitted}],
        }

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def cluster(self) -> Dict[str, Any]:
        self._check()

        def node(node_id, alive, head, cpu_free):
            return {"node_id": node_id, "address": f"10.0.0.{len(node_id) % 7 + int(head)}",
                    "alive": alive, "is_head": head,
                    "resources_total": {"CPU": 8.0, "memory": 16 * 2**30, "GPU": 1.0},
                    "resources_available": {"CPU": cpu_free, "memory": 12 * 2**30, "GPU": 1.0},
                    "object_store_used": 300 * 2**20, "object_store_capacity": 2**30,
                    "workers": 4 if alive else 0}
        return {"nodes": [node(NODE_A, True, True, 5.0), node(NODE_B, True, False, 0.5),
                          node(NODE_DEAD, False, False, 8.0)], "session": "session_2024_fake"}

    def jobs(self) -> List[Dict[str, Any]]:
        self._check()
        with self.lock:
            counts = {j: sum(t["job_id"] == j for t in self.task_list) for j in (JOB_1, JOB_2)}
        return [{"job_id": JOB_1, "status": "FINISHED", "driver_pid": 111, "namespace": "default",
                 "start_time": self.start - 5, "end_time": self.start + 30, "tasks": counts[JOB_1]},
                {"job_id": JOB_2, "status": "RUNNING", "driver_pid": 222, "namespace": "default",
                 "start_time": self.start, "end_time": None, "tasks": counts[JOB_2]}]

    def _of(self, job: Optional[str]) -> List[Dict[str, Any]]:
        with self.lock:
            return [t for t in self.task_list if job is None or t["job_id"] == job]

    def tasks(self, job: Optional[str], limit: int) -> List[Dict[str, Any]]:
        self._check()
        return self._of(job)[-limit:]

    def actors(self) -> List[Dict[str, Any]]:
        self._check()
        return [{"actor_id": f"5eed{i:028x}", "class_name": ("Counter", "ParameterServer")[i % 2],
                 "name": "ps" if i == 1 else None, "namespace": "default",
                 "state": ("ALIVE", "ALIVE", "DEAD", "RESTARTING")[i % 4],
                 "node_id": (NODE_A, NODE_B)[i % 2], "pid": 5000 + i, "job_id": JOB_2}
                for i in range(6)]

    def objects(self) -> List[Dict[str, Any]]:
        self._check()
        return [{"object_id": f"0bec7{i:027x}{i % 3:08x}", "size": 1000 * (i + 1) ** 3,
                 "node_id": (NODE_A, NODE_B)[i % 2], "kind": ("task return", "put")[i % 2],
                 "spilled": i % 5 == 0, "ref_count": 1 + i % 3, "pins": i % 2}
                for i in range(12)]

    def timeline(self, job: Optional[str]) -> List[Dict[str, Any]]:
        self._check()
        return traces.chrome_trace(self._of(job), time.time())

    def graph(self, job: Optional[str]) -> Dict[str, Any]:
        self._check()
        return graphs.graph_model(self._of(job))

    def logs(self) -> Dict[str, List[str]]:
        self._check()
        return {NODE_A: ["node.log", "worker-4000.err"], NODE_B: ["node.log"]}

    def log(self, node: str, name: str, tail: int) -> str:
        self._check()
        self.log_reads.append((node, name, tail))
        text = "".join(f"{node[:8]} {name} line {i}\n" for i in range(200))
        return text[-tail:] if tail else ""


# --------------------------------------------------------------------------- HTTP helpers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def fetch(url: str, method: str = "GET", headers: Optional[dict] = None):
    data = b"x" if method in ("POST", "PUT", "PATCH") else None
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with _opener.open(request, timeout=10) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def fetch_json(url: str, **kwargs):
    import json
    status, _, body = fetch(url, **kwargs)
    return status, json.loads(body)


@pytest.fixture
def source():
    return FakeSource()


@pytest.fixture
def served(source):
    dashboard = Dashboard(source, port=0).start()
    yield dashboard
    dashboard.stop()


def outward_address() -> Optional[str]:
    """An address of this machine that is not loopback, if it has one."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for candidate in out.split():
        if ":" not in candidate and not is_loopback(candidate):
            with socket.socket() as s:
                try:
                    s.bind((candidate, 0))
                except OSError:
                    continue
            return candidate
    return None


# --------------------------------------------------------------------------- pure functions


def test_progress_counts_each_state_per_function():
    tasks = [{"name": "f", "state": s} for s in
             ("FINISHED", "FINISHED", "RUNNING", "SUBMITTED", "PENDING_NODE_ASSIGNMENT", "FAILED")]
    tasks.append({"name": "g", "state": "FINISHED"})
    reply = views.progress(tasks)
    assert reply["tasks"] == 7
    assert reply["functions"] == [
        {"name": "f", "finished": 2, "running": 1, "pending": 2, "failed": 1, "total": 6},
        {"name": "g", "finished": 1, "running": 0, "pending": 0, "failed": 0, "total": 1}]


def test_recent_tasks_filters_by_state_and_keeps_the_newest():
    tasks = [{"task_id": str(i), "state": "FAILED" if i % 2 else "FINISHED", "submitted_at": i}
             for i in range(10)]
    tasks.append({"task_id": "none", "state": "FAILED", "submitted_at": None})
    reply = views.recent_tasks(tasks, "FAILED", 3)
    assert [t["task_id"] for t in reply["tasks"]] == ["9", "7", "5"]
    assert reply["matched"] == 6 and reply["capped"]
    assert views.recent_tasks(tasks, None, 100)["tasks"][-1]["task_id"] == "none"


def test_recent_timeline_keeps_the_boxes_that_ended_last_and_their_row_names():
    events = [{"ph": "M", "name": "process_name", "pid": p, "tid": 0, "args": {"name": f"n{p}"}}
              for p in (1, 2)]
    events += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": t, "args": {"name": "w"}}
               for t in (10, 11)]
    events += [{"ph": "X", "name": "old", "ts": 0, "dur": 5, "pid": 2, "tid": 20},
               {"ph": "X", "name": "new", "ts": 100, "dur": 5, "pid": 1, "tid": 10},
               {"ph": "X", "name": "long", "ts": 1, "dur": 500, "pid": 1, "tid": 10}]
    reply = views.recent_timeline(events, 2)
    assert {e["name"] for e in reply["events"] if e["ph"] == "X"} == {"new", "long"}
    assert [(e["pid"], e["tid"]) for e in reply["events"] if e["ph"] == "M"] == [(1, 0), (1, 10)]
    assert (reply["total"], reply["shown"], reply["capped"]) == (3, 2, True)


def test_layout_layers_follow_the_longest_path_and_survive_cycles():
    places = layered_layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("x", "d")])
    assert {k: v[0] for k, v in places.items()} == {"a": 0, "b": 1, "c": 2, "d": 0}
    cycle = layered_layout(["p", "q", "r", "p"], [("p", "q"), ("q", "r"), ("r", "p"), ("q", "q")])
    assert sorted(cycle) == ["p", "q", "r"] and cycle["p"][0] < cycle["q"][0] < cycle["r"][0]


def test_layout_orders_a_column_to_follow_its_inputs():
    # Two chains whose second column arrives in crossed order.
    places = layered_layout(["a", "b", "y", "x"], [("a", "x"), ("b", "y")])
    assert places["x"][1] < places["y"][1]


def test_capped_graph_keeps_the_first_nodes_and_only_their_edges():
    graph = {"nodes": [{"id": str(i), "label": str(i), "shape": "box", "state": None}
                       for i in range(10)],
             "edges": [{"from": str(i), "to": str(i + 1), "style": "solid"} for i in range(9)]}
    reply = views.capped_graph(graph, 4)
    assert [n["id"] for n in reply["nodes"]] == ["0", "1", "2", "3"]
    assert len(reply["edges"]) == 3 and reply["capped"] and reply["total_nodes"] == 10
    assert [n["layer"] for n in reply["nodes"]] == [0, 1, 2, 3]
    assert "layer" not in graph["nodes"][0]  # the source's records are not changed


def test_objects_summary_totals_per_node_over_every_object():
    objects = [{"object_id": str(i), "size": 10 * i, "node_id": "n" if i % 2 else "m",
                "spilled": i == 3} for i in range(6)]
    reply = views.objects_summary(objects, 2)
    assert [o["object_id"] for o in reply["objects"]] == ["5", "4"]
    per_node = {r["node_id"]: r for r in reply["per_node"]}
    assert per_node["n"]["bytes"] == 90 and per_node["n"]["spilled_bytes"] == 30
    assert reply["total_bytes"] == 150 and reply["total"] == 6 and reply["capped"]


def test_traces_from_tasks_name_rows_and_link_objects():
    source = FakeSource(tasks_per_job=(10, 0))
    events = traces.chrome_trace(source.task_list, time.time())
    boxes = [e for e in events if e["ph"] == "X"]
    started = [t for t in source.task_list if t["started_at"] is not None]
    assert len(boxes) == len(started) and all(b["dur"] >= 0 for b in boxes)
    named = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
    assert {(b["pid"], b["tid"]) for b in boxes} == named
    graph = graphs.graph_model(source.task_list)
    shapes = {n["shape"] for n in graph["nodes"]}
    assert shapes == {"box", "ellipse"}
    assert {e["style"] for e in graph["edges"]} == {"solid", "dashed"}


# --------------------------------------------------------------------------- the server


@pytest.mark.parametrize("path, key", [
    ("api/cluster", "nodes"), ("api/jobs", "jobs"), ("api/tasks", "tasks"),
    ("api/actors", "actors"), ("api/objects", "objects"), ("api/progress", "functions"),
    ("api/timeline", "events"), ("api/graph", "nodes"), ("api/logs", "logs")])
def test_every_endpoint_answers_json(served, path, key):
    status, reply = fetch_json(served.url + path)
    assert status == 200 and reply[key]


def test_endpoints_filter_by_job_and_state(served, source):
    _, reply = fetch_json(served.url + f"api/tasks?job={JOB_2}&limit=5")
    assert len(reply["tasks"]) == 5 and {t["job_id"] for t in reply["tasks"]} == {JOB_2}
    _, reply = fetch_json(served.url + f"api/tasks?job={JOB_1}&state=FAILED")
    assert reply["tasks"] and {t["state"] for t in reply["tasks"]} == {"FAILED"}
    _, reply = fetch_json(served.url + f"api/progress?job={JOB_1}")
    assert sum(f["total"] for f in reply["functions"]) == 60
    assert {f["name"] for f in reply["functions"]} == {"load_shard", "square", "reduce_sum"}
    _, reply = fetch_json(served.url + "api/timeline?full=1")
    assert isinstance(reply, list) and reply[0]["ph"] == "M"


@pytest.mark.parametrize("query", ["api/tasks?job=zz", "api/tasks?state=DONE",
                                   "api/tasks?limit=many", "api/log?node=" + NODE_A])
def test_bad_parameters_get_400(served, query):
    status, reply = fetch_json(served.url + query)
    assert status == 400 and reply["error"]


def test_unknown_path_is_404_and_writes_are_405(served):
    assert fetch(served.url + "api/nothing")[0] == 404
    assert fetch(served.url + "etc/passwd")[0] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        status, headers, _ = fetch(served.url + "api/jobs", method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    status, headers, body = fetch(served.url + "api/jobs", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_page_and_static_files_are_served_with_a_strict_policy(served):
    status, headers, body = fetch(served.url)
    assert status == 200 and b"static/app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("app.js", "javascript"), ("app.css", "css")):
        status, headers, body = fetch(served.url + "static/" + name)
        assert status == 200 and kind in headers["Content-Type"] and body
    assert fetch(served.url + "static/../server.py")[0] == 404


def test_a_failing_source_gives_500_and_the_server_lives_on(served, source):
    source.cluster = lambda: {"nodes": [], "load": float("nan")}
    status, reply = fetch_json(served.url + "api/cluster")
    assert status == 500 and "not JSON" in reply["error"]
    del source.cluster
    source.fail = RuntimeError("head unreachable")
    status, reply = fetch_json(served.url + "api/cluster")
    assert status == 500 and reply == {"error": "RuntimeError: head unreachable"}
    assert fetch(served.url + "api/tasks")[0] == 500
    source.fail = None
    assert fetch(served.url + "api/cluster")[0] == 200


def test_log_tail_reads_only_listed_files(served, source):
    status, reply = fetch_json(served.url + f"api/log?node={NODE_A}&file=node.log&tail=100")
    assert status == 200 and reply["text"].endswith("line 199\n") and len(reply["text"]) == 100
    for name in ("../../etc/passwd", "/etc/passwd", "worker-4000.err/../node.log", "..",
                 "node.log%00", "other.log"):
        status, _ = fetch_json(served.url + f"api/log?node={NODE_A}&file={name}")
        assert status == 404, name
    assert fetch(served.url + f"api/log?node={NODE_B}&file=worker-4000.err")[0] == 404
    assert fetch(served.url + f"api/log?node={'ee' * 14}&file=node.log")[0] == 404
    assert source.log_reads == [(NODE_A, "node.log", 100)]


def test_loopback_refuses_a_host_header_naming_another_site(served):
    assert fetch(served.url + "api/jobs", headers={"Host": "evil.example:8265"})[0] == 403
    assert fetch(served.url + "api/jobs", headers={"Host": "localhost:8265"})[0] == 200


def test_start_stop_and_url(source):
    dashboard = Dashboard(source, port=0)
    dashboard.stop()  # never started: nothing to do
    dashboard.start()
    port = dashboard.bound_port
    assert port and dashboard.url == f"http://127.0.0.1:{port}/"
    dashboard.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_token_is_required_off_loopback(source):
    Dashboard(source, host="0.0.0.0", port=0)  # the constructor neither binds nor checks
    with pytest.raises(ValueError, match="token is required"):
        Dashboard(source, host="0.0.0.0", port=0).start()
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")


@pytest.fixture
def exposed(source):
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to bind")
    dashboard = Dashboard(source, host=address, port=0, token="s3cret" * 8).start()
    yield dashboard
    dashboard.stop()


def test_off_loopback_every_request_needs_the_token(exposed):
    token = exposed.token
    for path in ("", "index.html", "static/app.js", "api/jobs", "api/log", "nothing"):
        status, _, body = fetch(exposed.url + path)
        assert status == 401, path
        assert b"token" in body
    assert fetch(exposed.url + "api/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(exposed.url + "api/jobs?token=wrong")[0] == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert fetch(exposed.url + "api/jobs", headers=bearer)[0] == 200
    assert fetch(exposed.url + "nothing", headers=bearer)[0] == 404


def test_off_loopback_token_in_the_url_becomes_a_cookie(exposed):
    status, headers, _ = fetch(exposed.url + f"?token={exposed.token}")
    assert status == 303 and headers["Location"] == "/"
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    value = SimpleCookie(set_cookie)[COOKIE_NAME].value
    assert exposed.token not in value  # the cookie admits to the dashboard, not the cluster
    cookie = {"Cookie": f"{COOKIE_NAME}={value}"}
    for path in ("", "static/app.css", "api/cluster"):
        assert fetch(exposed.url + path, headers=cookie)[0] == 200, path
    assert fetch(exposed.url + "api/cluster", headers={"Cookie": f"{COOKIE_NAME}=x"})[0] == 401
    # An API call with ?token= is answered directly (and sets the cookie too).
    status, headers, _ = fetch(exposed.url + f"api/jobs?token={exposed.token}")
    assert status == 200 and COOKIE_NAME in headers["Set-Cookie"]
    status, headers, _ = fetch(exposed.url.rstrip("/") + f"//elsewhere.example/?token={exposed.token}")
    assert status == 303 and headers["Location"] == "/elsewhere.example/"


def test_limits_keep_replies_small_for_a_big_job():
    source = FakeSource(tasks_per_job=(0, 5000))
    endpoints = api.Api(source).routes()
    assert len(endpoints["/api/tasks"]({})["tasks"]) == api.TASKS_DEFAULT
    timeline = endpoints["/api/timeline"]({"job": JOB_2})
    assert timeline["capped"] and timeline["shown"] == api.TIMELINE_MAX_BOXES
    graph = endpoints["/api/graph"]({"job": JOB_2})
    assert graph["capped"] and len(graph["nodes"]) == api.GRAPH_MAX_NODES


# --------------------------------------------------------------------------- the browser

BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-proxy-server",
                 "--window-size=1400,900")

# What each tab draws once its data is in: (CSS selector, how many at least).
READY = {"overview": ("#overview-nodes tbody tr", 3), "jobs": ("#jobs-table tbody tr", 2),
         "tasks": ("#timeline rect.box", 1), "progress": (".progress-row", 2),
         "actors": ("#actors-table tbody tr", 6), "objects": ("#objects-table tbody tr", 12),
         "graph": ("#graph svg ellipse", 1), "logs": ("#log-text", 1)}


def _browser_missing() -> Optional[str]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="zray-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page_source():
    return FakeSource()


@pytest.fixture(scope="module")
def page(page_source):
    dashboard = Dashboard(page_source, port=0).start()
    yield dashboard
    dashboard.stop()


def count(driver, selector: str) -> int:
    from selenium.webdriver.common.by import By
    return len(driver.find_elements(By.CSS_SELECTOR, selector))


def text_of(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector).text


def wait_until(driver, condition, what: str, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"waited {timeout}s for {what}")


def open_tab(driver, tab: str) -> None:
    """Click the tab, as a reader would, and wait until it has drawn."""
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, f'#tabs a[data-tab="{tab}"]').click()
    selector, at_least = READY[tab]
    wait_until(driver, lambda d: not d.find_element(By.ID, f"tab-{tab}").get_attribute("hidden")
               and count(d, selector) >= at_least, f"the {tab} tab")
    if tab == "logs":
        wait_until(driver, lambda d: "line 199" in text_of(d, "#log-text"), "the log text")


def script_errors(driver) -> List[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def load(driver, url: str) -> None:
    driver.get("about:blank")
    driver.get_log("browser")  # drop what earlier tests left
    driver.get(url)


def test_every_tab_loads_without_script_errors(browser, page):
    load(browser, page.url)
    for tab in TABS:
        open_tab(browser, tab)
    for tab in TABS:  # and again, reached by address rather than by a click
        load(browser, page.url + "#" + tab)
        selector, at_least = READY[tab]
        wait_until(browser, lambda d, s=selector, n=at_least: count(d, s) >= n,
                   f"{tab} by address")
    assert script_errors(browser) == []
    assert count(browser, "#banner:not([hidden])") == 0


def test_overview_shows_the_sources_nodes(browser, page):
    load(browser, page.url + "#overview")
    wait_until(browser, lambda d: count(d, "#overview-nodes tbody tr") == 3, "three nodes")
    table = text_of(browser, "#overview-nodes")
    for node in (NODE_A, NODE_B, NODE_DEAD):
        assert views.short_id(node) in table
    assert table.count("alive") == 2 and "dead" in table and "head" in table
    assert count(browser, "#overview-nodes svg.bar rect.used") >= 9
    assert "nodes alive\n2\n1 dead" in text_of(browser, "#overview-cards").lower()


def test_tasks_tab_shows_the_selected_jobs_tasks(browser, page, page_source):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    load(browser, page.url + "#tasks")
    wait_until(browser, lambda d: count(d, "#tasks-table tbody tr") == 24, "job 2's tasks")
    ids = [e.get_attribute("title") for e in
           browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr td:first-child code")]
    assert len(ids) == 24 and all(i.startswith(driver_prefix(JOB_2)) for i in ids)  # the newest job first
    open_tab(browser, "jobs")  # a job picked in the jobs table is the one the tasks tab shows
    browser.find_element(By.CSS_SELECTOR, f'#jobs-table a[data-job="{JOB_1}"]').click()
    wait_until(browser, lambda d: count(d, "#tasks-table tbody tr") == 60, "job 1's tasks")
    assert Select(browser.find_element(By.ID, "job")).first_selected_option.get_attribute(
        "value") == JOB_1
    Select(browser.find_element(By.ID, "task-state")).select_by_value("FAILED")
    failed = sum(t["state"] == "FAILED" for t in page_source.tasks(JOB_1, 1000))
    wait_until(browser, lambda d: count(d, "#tasks-table tbody tr") == failed, "failed tasks")
    assert "division by zero" in text_of(browser, "#tasks-table")
    started = sum(t["started_at"] is not None for t in page_source.tasks(JOB_1, 1000))
    wait_until(browser, lambda d: count(d, "#timeline rect.box") == started, "job 1's boxes")
    assert script_errors(browser) == []


def test_the_page_follows_the_sources_changes(browser):
    source = FakeSource(tasks_per_job=(10, 24))
    dashboard = Dashboard(source, port=0).start()
    try:
        load(browser, dashboard.url + "#progress")
        wait_until(browser, lambda d: "24 tasks in 3 function" in text_of(d, "#progress-list"),
                   "the first count")
        source.add_tasks(JOB_2, 7, name="late_arrival")
        wait_until(browser, lambda d: "31 tasks in 4 function" in text_of(d, "#progress-list"),
                   "the count after adding tasks")
        assert "late_arrival" in text_of(browser, "#progress-list")
        open_tab(browser, "tasks")
        wait_until(browser, lambda d: text_of(d, "#tasks-count") == "31 shown", "31 tasks")
        source.add_tasks(JOB_2, 2, name="later_still")
        wait_until(browser, lambda d: text_of(d, "#tasks-count") == "33 shown", "33 tasks")
        assert script_errors(browser) == []
    finally:
        dashboard.stop()


def test_screenshots_of_every_tab(browser, page, tmp_path):
    os.makedirs(SHOTS, exist_ok=True)
    load(browser, page.url)
    try:
        for i, tab in enumerate(TABS):
            browser.set_window_size(1400, 900)
            open_tab(browser, tab)
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1400, min(max(900, height + 20), 2400))
            path = tmp_path / f"{i}-{tab}.png"
            assert browser.save_screenshot(str(path))
            assert path.stat().st_size > 10_000
            shutil.copy(path, os.path.join(SHOTS, path.name))
    finally:
        browser.set_window_size(1400, 900)
    assert script_errors(browser) == []


def test_ten_thousand_tasks_draw_in_reasonable_time(browser):
    source = FakeSource(tasks_per_job=(0, 10_000))
    dashboard = Dashboard(source, port=0).start()
    try:
        load(browser, "about:blank")
        started = time.monotonic()
        browser.get(dashboard.url + "#tasks")
        wait_until(browser, lambda d: count(d, "#tasks-table tbody tr") == api.TASKS_DEFAULT
                   and count(d, "#timeline rect.box") > 0, "10,000 tasks' tab", timeout=60)
        tasks_seconds = time.monotonic() - started
        os.makedirs(SHOTS, exist_ok=True)
        browser.save_screenshot(os.path.join(SHOTS, "big-tasks.png"))
        assert "of 10,000 tasks" in text_of(browser, "#tasks-note")
        assert "of " in text_of(browser, "#timeline-note")
        started = time.monotonic()
        open_tab(browser, "progress")
        wait_until(browser, lambda d: "10,000 tasks" in text_of(d, "#progress-list"),
                   "10,000 tasks' progress", timeout=60)
        progress_seconds = time.monotonic() - started
        started = time.monotonic()
        open_tab(browser, "graph")
        graph_seconds = time.monotonic() - started
        browser.save_screenshot(os.path.join(SHOTS, "big-graph.png"))
        assert "first 300" in text_of(browser, "#graph-note")
        print(f"\n10,000 tasks: Tasks tab {tasks_seconds:.2f} s (first load), "
              f"Progress tab {progress_seconds:.2f} s, Graph tab {graph_seconds:.2f} s")
        assert tasks_seconds < 30 and progress_seconds < 30 and graph_seconds < 30
        assert script_errors(browser) == []
    finally:
        dashboard.stop()


def test_a_browser_with_the_token_reads_an_exposed_dashboard(browser, exposed):
    load(browser, exposed.url)
    wait_until(browser, lambda d: "Token needed" in d.page_source, "the refusal")
    browser.get_log("browser")  # the refusal's 401 is logged; it is expected
    browser.get(exposed.url + f"?token={exposed.token}#overview")
    wait_until(browser, lambda d: count(d, "#overview-nodes tbody tr") == 3, "nodes via cookie")
    assert "token" not in browser.current_url
    assert script_errors(browser) == []


# --------------------------------------------------------------------------- a real session


def test_a_live_sessions_dashboard_shows_its_node_and_follows_its_tasks(browser, tmp_path):
    import zray

    ctx = zray.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    try:
        gate = tmp_path / "gate"

        @zray.remote
        def first_batch(i):
            return i

        @zray.remote
        def waits_for_gate(path):
            while not os.path.exists(path):
                time.sleep(0.01)
            return 1

        zray.get([first_batch.remote(i) for i in range(5)])
        node = zray.get_runtime_context().get_node_id()
        load(browser, ctx.dashboard_url + "#overview")
        wait_until(browser, lambda d: views.short_id(node) in text_of(d, "#overview-nodes"),
                   "the session's node")
        load(browser, ctx.dashboard_url + "#progress")
        wait_until(browser, lambda d: "first_batch" in text_of(d, "#progress-list"),
                   "the first batch", timeout=30)
        running = waits_for_gate.remote(str(gate))
        wait_until(browser, lambda d: "waits_for_gate" in text_of(d, "#progress-list"),
                   "a task that is running now", timeout=30)
        gate.touch()
        assert zray.get(running, timeout=30) == 1
        shot = tmp_path / "live-progress.png"
        assert browser.save_screenshot(str(shot))
        os.makedirs(SHOTS, exist_ok=True)
        shutil.copy(shot, os.path.join(SHOTS, shot.name))
        assert script_errors(browser) == []
    finally:
        zray.shutdown()
