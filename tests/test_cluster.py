"""A real cluster on this machine over loopback, started through the CLI.

One head (1 CPU, ``alpha``) and two ``zray worker`` nodes (``beta`` and
``gamma``, both with ``shared``), shared by the module; this test process
is the driver, connected with ``zray.init(address=...)``.  The last tests
kill a node and finally run ``zray stop``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest
import zmq

import zray
from clusters import ROOT, free_port, running
from waiting import eventually
from zray import exceptions
from zray._private import protocol, security, services
from zray._private.protocol import Op

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    workers = [["--num-cpus", "1", "--resources", json.dumps({name: 1, "shared": 1}),
                "--object-store-memory", str(512 << 20)] for name in ("beta", "gamma")]
    with running("zc", ["--num-cpus", "1", "--dashboard-port", "0", "--resources",
                        '{"alpha": 1}', "--object-store-memory", str(512 << 20)],
                 workers, cpus=3) as c:
        c.nodes = {r["kind"] if r["kind"] == "head" else next(
            k for k in r["resources"] if k in ("beta", "gamma")): r["node_id"]
            for r in c.records()}
        yield c


@zray.remote
def node_of() -> str:
    return zray.get_runtime_context().get_node_id()


def test_head_prints_how_to_join(cluster):
    out = cluster.head_output
    assert f"zray worker --address {cluster.address} --token {cluster.token}" in out
    assert f'zray.init(address="{cluster.address}")' in out


def test_status_text_and_json(cluster):
    summary = cluster.status()
    assert summary["alive_nodes"] == 3 and summary["dead_nodes"] == 0
    total = summary["resources"]["total"]
    assert total["CPU"] == 3 and total["alpha"] == 1 and total["beta"] == 1
    assert total["gamma"] == 1 and total["shared"] == 2
    assert summary["object_store"]["capacity"] == 3 * (512 << 20)
    text = cluster.zray("status").stdout
    assert "3 node(s) alive" in text
    for node_id in cluster.nodes.values():
        assert node_id[:12] in text
    assert "object store" in text and "Actors: " in text


def test_driver_sees_the_cluster(cluster):
    assert zray.cluster_resources()["CPU"] == 3
    assert {n["NodeID"] for n in zray.nodes()} == set(cluster.nodes.values())


def test_placement_by_resources(cluster):
    for name in ("beta", "gamma"):
        refs = [node_of.options(resources={name: 1}).remote() for _ in range(3)]
        assert zray.get(refs, timeout=30) == [cluster.nodes[name]] * 3
    assert zray.get(node_of.options(resources={"alpha": 1}).remote(),
                    timeout=30) == cluster.nodes["head"]


def test_chains_across_nodes(cluster):
    @zray.remote(resources={"beta": 1})
    def step(x):
        return x + [zray.get_runtime_context().get_node_id()]

    ref = zray.put([])
    for name in ("beta", "gamma", "alpha", "beta"):
        ref = step.options(resources={name: 1}).remote(ref)
    hops = zray.get(ref, timeout=30)
    assert hops == [cluster.nodes[n] for n in ("beta", "gamma", "head", "beta")]


def test_errors_cross_nodes(cluster):
    @zray.remote(resources={"gamma": 1}, max_retries=0)
    def fails():
        raise KeyError("on gamma")

    with pytest.raises(KeyError) as info:
        zray.get(fails.remote(), timeout=30)
    assert "on gamma" in str(info.value)


@zray.remote(max_retries=0)
def where(fail):
    if fail:
        raise RuntimeError("failed on purpose")
    return zray.get_runtime_context().get_node_id()


def test_state_cli_lists_what_ran_on_every_node(cluster, tmp_path):
    ran_on = {zray.get(where.options(resources={name: 1}).remote(False), timeout=30)
              for name in ("alpha", "beta", "gamma")}
    with pytest.raises(RuntimeError):
        zray.get(where.options(resources={"gamma": 1}).remote(True), timeout=30)
    rows = json.loads(cluster.zray("list", "tasks", "--filter", "name=where", "--limit", "1000",
                                   "--format", "json").stdout)
    finished = [r for r in rows if r["state"] == "FINISHED"]
    assert {r["node_id"] for r in finished} >= ran_on == set(cluster.nodes.values())
    failed = json.loads(cluster.zray("list", "tasks", "--filter", "state=FAILED", "--format",
                                     "json").stdout)
    assert any("failed on purpose" in (r["error"] or "") and r["node_id"] ==
               cluster.nodes["gamma"] for r in failed)
    table = cluster.zray("list", "nodes").stdout
    assert table.startswith("NODE_ID") and table.count("ALIVE") >= 3
    assert "where" in cluster.zray("summary", "tasks").stdout
    assert "object(s)" in cluster.zray("memory").stdout
    assert cluster.zray("list", "workers").stdout.startswith("WORKER_ID")
    assert "RUNNING" in cluster.zray("list", "jobs").stdout
    bad = cluster.zray("list", "tasks", "--filter", "colour=red", check=False)
    assert bad.returncode != 0 and "colour" in bad.stderr
    trace = tmp_path / "trace.json"
    assert "written to" in cluster.zray("timeline", "-o", str(trace)).stdout
    assert any(e.get("name") == "where" for e in json.loads(trace.read_text()))
    listing = cluster.zray("logs").stdout
    assert "head.log" in listing and "tasks_" in listing


def test_the_heads_dashboard_serves_the_cluster(cluster):
    import urllib.request

    url = re.search(r"dashboard: (\S+)", cluster.head_output).group(1)
    assert url.startswith("http://127.0.0.1:")
    zray.get(node_of.options(resources={"beta": 1}).remote(), timeout=30)
    deadline = time.monotonic() + 20
    while True:  # the first reads wake the head's collection of the nodes' state
        data = json.load(urllib.request.urlopen(url + "api/cluster", timeout=10))
        tasks = json.load(urllib.request.urlopen(url + "api/tasks?limit=2000", timeout=10))
        if len(data["nodes"]) == 3 and any(t["name"] == "node_of" for t in tasks["tasks"]):
            break
        assert time.monotonic() < deadline, (data, tasks)
        time.sleep(0.2)
    assert {n["node_id"] for n in data["nodes"]} == set(cluster.nodes.values())


def test_a_generator_on_another_node_streams_its_items(cluster, tmp_path):
    @zray.remote(resources={"gamma": 1})
    def produce(gate, n):
        yield zray.get_runtime_context().get_node_id()
        while not os.path.exists(gate):
            time.sleep(0.01)
        for i in range(1, n):
            yield np.full(200_000, i, dtype=np.int64) if i % 2 else i
        raise ValueError("done on gamma")

    gate = str(tmp_path / "gate")
    gen = produce.remote(gate, 4)
    assert zray.get(next(gen), timeout=30) == cluster.nodes["gamma"]  # before the rest
    open(gate, "w").close()
    refs = list(gen)
    assert len(refs) == 4
    first, second, third = zray.get(refs[:3], timeout=30)
    assert int(first[0]) == 1 and second == 2 and int(third[-1]) == 3
    with pytest.raises(ValueError, match="done on gamma"):
        zray.get(refs[3], timeout=30)


def test_a_ref_put_inside_a_task_on_another_node_can_be_read(cluster):
    @zray.remote(resources={"gamma": 1})
    def make(n):
        return zray.put(np.arange(n)), zray.put("small")

    big, small = zray.get(make.remote(1_000_000), timeout=30)
    assert int(zray.get(big, timeout=30)[-1]) == 999_999
    assert zray.get(small, timeout=30) == "small"

    @zray.remote(resources={"beta": 1})
    def total(ref_list):
        return int(zray.get(ref_list[0]).sum())

    assert zray.get(total.remote([big]), timeout=30) == 999_999 * 1_000_000 // 2


def test_a_ref_nested_in_an_argument_is_readable_on_a_third_node(cluster):
    @zray.remote(resources={"gamma": 1})
    def make(gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return np.ones(1 << 20)

    @zray.remote(resources={"beta": 1})
    def total(refs):
        return float(zray.get(refs[0]).sum())

    gate = tempfile.mktemp(prefix="zgate")
    ref = make.remote(gate)          # still being made when the reader is sent away
    reading = total.remote([ref])
    open(gate, "w").close()
    try:
        assert zray.get(reading, timeout=30) == float(1 << 20)
    finally:
        os.unlink(gate)


def test_100mb_object_made_on_one_node_read_on_another(cluster):
    n = 100 * 1024 * 1024 // 8

    @zray.remote(resources={"beta": 1})
    def make():
        return np.arange(n, dtype=np.int64)

    start = time.perf_counter()
    arr = zray.get(make.remote(), timeout=60)
    elapsed = time.perf_counter() - start
    assert arr.shape == (n,) and arr[0] == 0 and arr[-1] == n - 1
    assert int(arr[::4096].sum()) == int(np.arange(n, dtype=np.int64)[::4096].sum())
    assert not arr.flags.writeable  # a view of this node's store
    print(f"100 MiB made on beta, read on the head node in {elapsed:.2f} s")

    @zray.remote(resources={"gamma": 1})
    def checksum(a):
        return int(a[::1024].sum()), zray.get_runtime_context().get_node_id()

    big = zray.put(np.arange(n, dtype=np.int64))
    total, where = zray.get(checksum.remote(big), timeout=60)
    assert where == cluster.nodes["gamma"]
    assert total == int(np.arange(n, dtype=np.int64)[::1024].sum())


def test_objects_freed_on_every_node(cluster):
    def store_used(name):
        node_id = cluster.nodes[name]
        return next(n["store_used"] for n in cluster.status()["nodes"]
                    if n["node_id"] == node_id)

    def settles(name, ok, within=15.0):
        # zray status asks the head, which hears each node's load twice a second.
        deadline = time.monotonic() + within
        while not ok(store_used(name)):
            if time.monotonic() > deadline:
                return False
        return True

    @zray.remote(resources={"beta": 1})
    def make():
        return np.ones(8 * 1024 * 1024 // 8)

    ref = make.remote()
    arr = zray.get(ref, timeout=30)
    assert arr.sum() == 1024 * 1024
    assert settles("beta", lambda used: used >= 8 << 20)   # made there
    assert settles("head", lambda used: used >= 8 << 20)   # and copied here
    del arr, ref
    assert settles("beta", lambda used: used == 0), "the copy on beta was not freed"
    assert settles("head", lambda used: used == 0), "the copy here was not freed"


def test_actor_on_another_node_and_a_traveling_handle(cluster):
    @zray.remote(resources={"gamma": 1})
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self, k=1):
            self.n += k
            return self.n

        def node(self):
            return zray.get_runtime_context().get_node_id()

    counter = Counter.remote()
    assert zray.get([counter.incr.remote() for _ in range(5)], timeout=30) == [1, 2, 3, 4, 5]
    assert zray.get(counter.node.remote(), timeout=30) == cluster.nodes["gamma"]

    @zray.remote(resources={"beta": 1})
    def bump(handle, times):
        return zray.get([handle.incr.remote() for _ in range(times)])[-1]

    assert zray.get(bump.remote(counter, 3), timeout=30) == 8
    zray.kill(counter)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(counter.incr.remote(), timeout=30)


def test_saturated_node_spills_to_idle_ones(cluster, tmp_path):
    release = tmp_path / "release"
    arrived = tmp_path / "arrived"
    arrived.mkdir()

    @zray.remote(num_cpus=1)
    def hold(i, arrived, release):
        open(os.path.join(arrived, str(i)), "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)  # the test's signal to finish: a file it creates
        return zray.get_runtime_context().get_node_id()

    # Three one-CPU nodes: three tasks that hold their CPU until all have
    # started can only all start if the head node hands two of them on. It
    # hands work on by what it last heard of the others: wait until it hears
    # that all three are idle (the tests before may have just let go of CPUs).
    assert eventually(lambda: zray.available_resources().get("CPU") == 3, 30)
    refs = [hold.remote(i, str(arrived), str(release)) for i in range(3)]
    deadline = time.monotonic() + 30
    while len(os.listdir(arrived)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    release.write_text("go")
    assert sorted(zray.get(refs, timeout=30)) == sorted(cluster.nodes.values())


def test_head_directory_snapshot_lists_remote_objects(cluster):
    from zray._private import services

    @zray.remote(resources={"gamma": 1})
    def make():
        return np.zeros(1 << 20)

    ref = make.remote()
    zray.wait([ref], timeout=30)
    snapshot = services.head_query(cluster.address, cluster.token, "snapshot")
    assert snapshot["seq"] > 0
    holders = snapshot["directory"].get(ref.binary())
    assert holders == [bytes.fromhex(cluster.nodes["gamma"])]


def test_task_infeasible_everywhere_waits_for_a_node(cluster):
    @zray.remote(resources={"nowhere": 1})
    def never():
        return 1

    ref = never.remote()
    ready, pending = zray.wait([ref], timeout=1.0)
    assert ready == [] and pending == [ref]
    zray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        zray.get(ref, timeout=10)


def test_unauthenticated_peer_is_refused(cluster):
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(f"tcp://{cluster.address}")
    plain.send_multipart(protocol.encode(Op.HEAD_QUERY, {"what": "nodes", "req": 1}))
    assert plain.poll(1500) == 0  # no answer, nothing of it was read
    plain.close(0)
    ctx.term()
    wrong = "ab" * 24
    out = cluster.zray("status", "--address", cluster.address, "--token", wrong,
                       "--timeout", "2", check=False)
    assert out.returncode != 0 and "token is wrong" in out.stderr
    head_log = os.path.join(cluster.record_of(cluster.nodes["head"])["session_dir"],
                            "logs", "head.log")
    with open(head_log) as f:
        assert "refused" in f.read()
    assert cluster.status()["alive_nodes"] == 3  # the cluster did not mind


def test_worker_with_wrong_address_or_token_fails_fast(cluster):
    start = time.monotonic()
    out = cluster.zray("worker", "--address", f"127.0.0.1:{free_port()}",
                       "--token", cluster.token, check=False)
    assert out.returncode != 0 and "nothing answers" in out.stderr
    out = cluster.zray("worker", "--address", cluster.address, "--token", "12" * 24, check=False)
    assert out.returncode != 0 and "token is wrong" in out.stderr
    out = cluster.zray("worker", "--address", cluster.address, "--token", "short", check=False)
    assert out.returncode != 0 and "48 hex digits" in out.stderr
    assert time.monotonic() - start < 30
    assert cluster.status()["alive_nodes"] == 3


def test_head_on_a_taken_port_says_so(cluster):
    out = cluster.zray("head", "--port", str(cluster.port), check=False)
    assert out.returncode != 0 and "in use" in out.stderr.lower()
    assert cluster.status()["alive_nodes"] == 3


def test_head_block_stops_cleanly_on_ctrl_c():
    tmp_path = tempfile.mkdtemp(prefix="zb", dir="/tmp")  # short: it holds socket paths
    env = dict(os.environ, ZRAY_TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "zray.cli", "head", "--port",
                                 str(free_port()), "--num-cpus", "1", "--block"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "foreground" in line:
                break
        sessions = os.path.join(str(tmp_path), "zray_sessions")
        assert len(os.listdir(sessions)) == 1, "".join(lines)
        (session,) = os.listdir(sessions)
        with open(os.path.join(sessions, session, "cluster.json")) as f:
            pids = [p["pid"] for p in json.load(f)["procs"]]
        proc.send_signal(2)
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, "".join(lines) + out
        assert "stopped" in out
        assert not os.listdir(sessions)
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        subprocess.run([sys.executable, "-m", "zray.cli", "stop"], env=env, capture_output=True,
                       timeout=60)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_init_with_address_rejects_local_options(cluster):
    with pytest.raises(RuntimeError):
        zray.init(address=cluster.address)  # already connected
    zray.shutdown()
    try:
        with pytest.raises(ValueError, match="num_cpus"):
            zray.init(address=cluster.address, num_cpus=2)
        with pytest.raises(ConnectionError, match="no zray node"):
            zray.init(address=f"127.0.0.1:{free_port()}")
        zray.init(address="auto")
        assert zray.cluster_resources()["CPU"] == 3
        zray.shutdown()
        zray.init(redis_address=cluster.address)  # the seed-era spelling
        assert zray.get(node_of.remote(), timeout=30) in cluster.nodes.values()
    finally:
        if not zray.is_initialized():
            zray.init(address=cluster.address)


def test_a_second_driver_shares_the_cluster(cluster, tmp_path):
    script = tmp_path / "driver2.py"
    script.write_text(
        "import zray\n"
        f"zray.init(address={cluster.address!r})\n"
        "@zray.remote(resources={'beta': 1})\n"
        "def f(x):\n"
        "    if x == 0:\n"
        "        print('hello from beta')\n"
        "    return x * 2\n"
        "print(sum(zray.get([f.remote(i) for i in range(20)])))\n"
        "zray.shutdown()\n")
    out = subprocess.run([sys.executable, str(script)], env=cluster.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(2 * sum(range(20)))
    assert "hello from beta" in out.stdout + out.stderr  # a remote task's output
    assert zray.get(node_of.remote(), timeout=30) in cluster.nodes.values()
    assert cluster.status()["alive_nodes"] == 3  # that driver's shutdown left the cluster up


@zray.remote
class Tally:
    def __init__(self):
        self.n = 0

    def add(self, k=1):
        self.n += k
        return self.n


def test_actor_names_hold_across_nodes_and_namespaces(cluster):
    tally = Tally.options(name="tally", namespace="team", resources={"gamma": 1}).remote()
    assert zray.get(tally.add.remote(), timeout=30) == 1

    @zray.remote(resources={"beta": 1})
    def use_by_name():
        # Another node's agent: the name is found at the head.
        handle = zray.get_actor("tally", namespace="team")
        return zray.get(handle.add.remote(10))

    assert zray.get(use_by_name.remote(), timeout=30) == 11
    with pytest.raises(ValueError):
        zray.get_actor("tally")  # this job's own namespace has no such name
    again = Tally.options(name="tally", namespace="team", get_if_exists=True).remote()
    assert zray.get(again.add.remote(), timeout=30) == 12  # the same actor
    with pytest.raises(ValueError, match="already exists"):
        Tally.options(name="tally", namespace="team").remote()
    zray.kill(tally)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            zray.get_actor("tally", namespace="team")
        except ValueError:
            break
        time.sleep(0.05)  # the name goes when the actor's death reaches the head
    else:
        pytest.fail("the killed actor's name was never released")


def test_tasks_follow_their_scheduling_strategy_across_nodes(cluster):
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    target = cluster.nodes["gamma"]
    pinned = node_of.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        target, soft=False))
    assert set(zray.get([pinned.remote() for _ in range(4)], timeout=30)) == {target}
    spread = node_of.options(scheduling_strategy="SPREAD", num_cpus=0)
    assert len(set(zray.get([spread.remote() for _ in range(9)], timeout=30))) == 3


def test_junk_at_a_transfer_socket_is_answered_and_pulls_go_on(cluster):
    """A transfer socket opens only messages sealed with the cluster's token: a peer
    without it gets nothing; a token holder's malformed PULLs get an error CHUNK,
    never a crash or a read outside an object; the node goes on serving pulls."""
    nodes = services.head_query(cluster.address, cluster.token, "nodes")["nodes"]
    target = next(n for n in nodes if n["node_id"] in (cluster.nodes["gamma"],
                                                       bytes.fromhex(cluster.nodes["gamma"])))
    sealer = security.Sealer(cluster.token)
    stranger = security.Sealer(security.new_token())
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(target["transfer"])
    try:
        pull = {"object_id": b"\x01" * 20, "offset": 0, "length": 10}
        sock.send_multipart(protocol.encode(Op.PULL, pull))          # not sealed
        sock.send_multipart(stranger.seal(protocol.encode(Op.PULL, pull)))
        sock.send_multipart([b"\x00" * 8, b"junk"])
        bad = [{"object_id": "x", "offset": 0, "length": 1},
               {"object_id": b"\x01" * 20, "offset": -5, "length": 1 << 62},
               {"object_id": b"\x01" * 20},
               {"offset": 0, "length": 10}]
        for body in bad:
            sock.send_multipart(sealer.seal(protocol.encode(Op.PULL, body)))
        sock.send_multipart(sealer.seal(protocol.encode(Op.CHUNK, {"object_id": b"x"})))
        answers = []
        while len(answers) < 5 and sock.poll(10_000):
            op, body, _ = protocol.decode(sealer.open(sock.recv_multipart()))
            answers.append((op, body))
        assert len(answers) == 5 and not sock.poll(300)   # nothing for the three strangers
        assert all(op == Op.CHUNK and body.get("error") for op, body in answers)
    finally:
        sock.close(0)

    @zray.remote(resources={"gamma": 1})
    def make():
        return np.ones(2_000_000)

    assert float(zray.get(make.remote(), timeout=30).sum()) == 2_000_000.0


def directory_holders(cluster, oid: bytes) -> set:
    reply = services.head_query(cluster.address, cluster.token, "snapshot")
    return {bytes(n).hex() for n in reply["directory"].get(oid, ())}


def test_the_directory_lists_pulled_copies_and_a_copy_freed_never_frees_the_object(
        cluster, tmp_path):
    """A copy pulled to a third node is listed at the head; freeing that copy, even
    after it was handed on, leaves the object to its owner (it freed it everywhere)."""
    gamma, beta = cluster.nodes["gamma"], cluster.nodes["beta"]
    gate = str(tmp_path / "gate")

    @zray.remote(resources={"gamma": 1}, max_retries=0)
    def make():
        return np.arange(2_000_000, dtype=np.int64)

    @zray.remote(resources={"gamma": 1})
    def inner(array):
        return int(array[-1])

    @zray.remote(resources={"beta": 1})
    def read_and_pass_on(refs, gate):
        total = int(zray.get(refs[0]).sum())             # beta pulls a copy ...
        last = zray.get(inner.remote(refs[0]))            # ... and hands it on
        while not os.path.exists(gate):                   # holding it until told
            time.sleep(0.01)
        return total, last

    x = make.remote()
    zray.wait([x], timeout=30)
    oid = x.binary()
    assert directory_holders(cluster, oid) == {gamma}
    done = read_and_pass_on.remote([x], gate)
    assert eventually(lambda: directory_holders(cluster, oid) == {gamma, beta}, 30), \
        "the pulled copy was never listed"
    open(gate, "w").close()
    assert zray.get(done, timeout=30) == (1_999_999 * 2_000_000 // 2, 1_999_999)
    assert eventually(lambda: directory_holders(cluster, oid) == {gamma}, 30), \
        "the freed copy is still listed"
    assert int(zray.get(x, timeout=30)[-1]) == 1_999_999    # the owner still has it


def test_calls_made_while_an_actor_moves_to_another_node_follow_it(cluster):
    """A saturated node hands an actor's creation to an idle node; the calls made
    to it before it moved go there too (they used to wait forever)."""
    @zray.remote(num_cpus=1)
    class Where:
        def node(self):
            return zray.get_runtime_context().get_node_id()

    actors = [Where.remote() for _ in range(3)]
    nodes = zray.get([a.node.remote() for a in actors], timeout=60)
    assert len(set(nodes)) == 3
    for actor in actors:
        zray.kill(actor)
    assert eventually(lambda: zray.available_resources().get("CPU") == 3, 20)
    # SPREAD sends every creation through the head, which places them over the
    # nodes, this one included: the calls made meanwhile go where their actor went
    # (back here too) and run there.
    spread = [Where.options(num_cpus=0, scheduling_strategy="SPREAD").remote()
              for _ in range(6)]
    calls = [a.node.remote() for a in spread for _ in range(2)]
    assert set(zray.get(calls, timeout=60)) == set(cluster.nodes.values())
    for actor in spread:
        zray.kill(actor)
    assert eventually(lambda: services.head_query(cluster.address, cluster.token, "status")
                      ["forwarded"] == 0, 20), "the head kept calls it routed back home"


def test_calls_to_an_actor_waiting_for_a_node_wait_with_it(cluster):
    """An actor no node can take yet (a resource no node has) waits at the head;
    calls made to it wait there with it (they failed at once before, while the
    actor itself went on waiting), and fail when it is killed."""
    @zray.remote(resources={"delta": 1})
    class OnDelta:
        def node(self):
            return zray.get_runtime_context().get_node_id()

    actor = OnDelta.remote()
    calls = [actor.node.remote() for _ in range(3)]
    ready, _ = zray.wait(calls, num_returns=1, timeout=2)
    assert ready == []                      # waiting with their actor, not failed
    zray.kill(actor)
    for call in calls:
        with pytest.raises(exceptions.ActorDiedError, match="killed"):
            zray.get(call, timeout=30)
    assert services.head_query(cluster.address, cluster.token, "status")["unplaced"] == []


def test_killed_node_is_detected_and_its_work_redone(cluster, tmp_path):
    started = tmp_path / "started"
    release = tmp_path / "release"

    @zray.remote(resources={"shared": 1}, max_retries=2)
    def long_job(started, release):
        me = zray.get_runtime_context().get_node_id()
        with open(started, "a") as f:
            f.write(me + "\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)  # the test's signal to finish: a file it creates
        return me

    @zray.remote(num_cpus=0, max_retries=0)
    def fragile(started, release):
        with open(started, "w") as f:
            f.write("running")
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
        return "done"

    ref = long_job.remote(str(started), str(release))
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # waits for the task to report where it runs
    victim = started.read_text().split()[0]
    victim_name = next(k for k, n in cluster.nodes.items() if n == victim)
    survivor = next(n for k, n in cluster.nodes.items() if k != "head" and n != victim)
    # A task with no retries that only the victim can run, running when it dies.
    started2 = tmp_path / "started2"
    fragile_ref = fragile.options(resources={victim_name: 1}).remote(str(started2), str(release))
    deadline = time.monotonic() + 30
    while not started2.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started2.exists()
    record = cluster.record_of(victim)
    agent_pid = record["procs"][0]["pid"]
    os.kill(agent_pid, 9)
    t0 = time.monotonic()
    deadline = t0 + 20
    dead = False
    while time.monotonic() < deadline and not dead:
        dead = any(n["node_id"] == victim and not n["alive"] for n in cluster.status()["nodes"])
    assert dead, "the killed node was not marked dead"
    print(f"node death seen by zray status after {time.monotonic() - t0:.1f} s")
    release.write_text("go")
    assert zray.get(ref, timeout=60) == survivor
    with pytest.raises(exceptions.NodeDiedError, match="no retries left"):
        zray.get(fragile_ref, timeout=60)
    text = cluster.zray("status").stdout
    assert "DEAD" in text and "1 dead" in text


def test_stop_leaves_nothing_behind(cluster):
    records = cluster.records()
    segments_before = [r["session_dir"] for r in records]
    pids = [p["pid"] for r in records for p in r["procs"]]
    zray.shutdown()
    out = cluster.zray("stop")
    assert "stopped" in out.stdout
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    for session_dir in segments_before:
        assert not os.path.exists(session_dir)
        tag = f"zray_{os.path.basename(session_dir)[-12:]}_"
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(tag)]
    assert not any("zray" in " ".join(p.info["cmdline"] or []) and cluster.tmpdir in
                   " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    out = cluster.zray("status", check=False)
    assert out.returncode != 0 and "no zray node" in out.stderr
