"""Faults on a real cluster over loopback: a driver SIGKILLed with work queued and
objects held, and a node killed while tasks run.  Nothing may be lost or held.

One head (2 CPUs) and one `zray worker` node (2 CPUs, ``far``), shared by the
module; the node is killed last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from clusters import ROOT, running
from waiting import eventually

import zray
from zray import exceptions

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def cluster():
    far = ["--num-cpus", "2", "--resources", json.dumps({"far": 2}),
           "--object-store-memory", str(600 << 20)]
    with running("zf", ["--num-cpus", "2", "--no-dashboard", "--object-store-memory",
                        str(600 << 20)], [far], cpus=4) as c:
        yield c


def totals(cluster) -> dict:
    status = cluster.status()
    return {"pending": status["tasks"]["pending"], "running": status["tasks"]["running"],
            "store": status["object_store"]["used"], "actors": status["actors_alive"]}


DOOMED_DRIVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import zray

    zray.init(address=sys.argv[1])

    @zray.remote(max_retries=0)
    def slow(i):
        time.sleep(0.05)
        return i

    @zray.remote
    class Keeper:
        def ping(self):
            return "pong"

    held = [zray.put(np.ones(50 << 20, dtype=np.uint8)) for _ in range(2)]   # 100 MiB
    keeper = Keeper.remote()
    survivor = Keeper.options(name="survivor", namespace="faults", lifetime="detached").remote()
    zray.get([keeper.ping.remote(), survivor.ping.remote()])
    refs = [slow.remote(i) for i in range(2000)]
    refs += [slow.options(resources={"far": 1}).remote(i) for i in range(500)]
    print("ready", flush=True)
    time.sleep(600)
""")


def test_a_killed_drivers_work_objects_and_actors_are_cleared(cluster, tmp_path):
    before = totals(cluster)
    script = tmp_path / "doomed.py"
    script.write_text(DOOMED_DRIVER)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, str(script), cluster.address], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:  # nodes report their load with each heartbeat
            busy = totals(cluster)
            if busy["store"] >= before["store"] + (100 << 20) and busy["actors"] >= 2 \
                    and busy["pending"] > 100:
                break
            assert time.monotonic() < deadline, busy
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    deadline = killed + 20
    while True:  # the node looks at its drivers every second
        now = totals(cluster)
        if now["pending"] == 0 and now["running"] == 0 and now["store"] <= before["store"] \
                and now["actors"] == before["actors"] + 1:
            break
        assert time.monotonic() < deadline, f"not cleared after 20 s: {now} (before {before})"
        time.sleep(0.1)
    print(f"\na SIGKILLed driver's 2,500 tasks, 100 MiB and actor cleared in "
          f"{time.monotonic() - killed:.1f} s")

    @zray.remote
    def quick():
        return "served"

    start = time.monotonic()
    assert zray.get(quick.remote(), timeout=30) == "served"
    assert time.monotonic() - start < 5  # not behind the dead driver's queue
    survivor = zray.get_actor("survivor", namespace="faults")  # detached: outlives its driver
    assert zray.get(survivor.ping.remote(), timeout=30) == "pong"
    zray.kill(survivor)


def test_a_drivers_goodbye_ends_its_job_too(cluster, tmp_path):
    code = textwrap.dedent("""
        import sys, time, zray
        zray.init(address=sys.argv[1])
        @zray.remote(max_retries=0)
        def slow(i):
            time.sleep(0.05)
        refs = [slow.remote(i) for i in range(1000)]
        zray.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", code, cluster.address], env=env, check=True,
                   timeout=60)
    deadline = time.monotonic() + 20
    while (now := totals(cluster))["pending"] or now["running"]:
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


def test_a_head_killed_and_restored_mid_job(cluster):
    @zray.remote(resources={"far": 1})
    class Keeper:
        def ping(self):
            return zray.get_runtime_context().get_node_id()

    @zray.remote(resources={"far": 1})
    def made_far(n):
        import numpy as np
        return np.full(n, 7, dtype=np.int64)

    @zray.remote
    def local(i):
        return i

    keeper = Keeper.options(name="keeper", namespace="faults").remote()
    far_node = zray.get(keeper.ping.remote(), timeout=30)
    big = made_far.remote(1_000_000)
    zray.wait([big], timeout=30)
    head_record = next(r for r in cluster.records() if r["kind"] == "head")
    os.kill(head_record["procs"][0]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    # While the head is down, this node serves its driver; work for the other node waits.
    assert zray.get([local.remote(i) for i in range(20)], timeout=30) == list(range(20))
    waiting = made_far.remote(10)
    from zray._private import services
    assert services.find_record("auto")["kind"] == "head"   # "auto" still finds the cluster
    out = cluster.zray("head", "--restore").stdout
    assert "restored" in out
    try:
        assert int(zray.get(waiting, timeout=60)[0]) == 7      # sent while the head was down
    except exceptions.GetTimeoutError:
        logs = "\n".join(services.log_tail(r["session_dir"])[-4000:] for r in cluster.records())
        from zray.util import state
        record = state.get_task(waiting.task_id().hex())
        head = services.head_query(cluster.address, cluster.token, "status")
        raise AssertionError(f"work sent while the head was down never ran: {record}\n"
                             f"head: forwarded {head['forwarded']}, unplaced "
                             f"{head['unplaced']}\n{logs}")
    deadline = time.monotonic() + 20
    while sum(n["alive"] for n in cluster.status()["nodes"]) != 2:
        assert time.monotonic() < deadline, cluster.status()
        time.sleep(0.1)
    print(f"\nthe head was back, with both nodes, {time.monotonic() - killed:.1f} s after "
          f"it was killed")
    found = zray.get_actor("keeper", namespace="faults")    # its name was learned back
    assert zray.get(found.ping.remote(), timeout=30) == far_node
    assert int(zray.get(big, timeout=30).sum()) == 7_000_000
    assert zray.get(made_far.remote(3), timeout=30).tolist() == [7, 7, 7]
    zray.kill(keeper)


def test_plain_zray_head_restores_a_killed_head_by_itself_and_the_job_finishes(cluster):
    @zray.remote(resources={"far": 1}, max_retries=3)
    def step(i):
        time.sleep(0.05)
        return i

    refs = [step.remote(i) for i in range(60)]
    ready, _ = zray.wait(refs, num_returns=5, timeout=30)   # the job is under way
    assert len(ready) == 5
    head_record = next(r for r in cluster.records() if r["kind"] == "head")
    os.kill(head_record["procs"][0]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    out = cluster.zray("head").stdout           # no --restore, not even its port
    assert f"zray head restored at {cluster.address}" in out, out
    assert sorted(zray.get(refs, timeout=60)) == list(range(60))
    assert eventually(lambda: sum(n["alive"] for n in cluster.status()["nodes"]) == 2, 20)
    print(f"\nthe head restored by plain `zray head`: the job's 60 tasks done and both "
          f"nodes back {time.monotonic() - killed:.1f} s after it was killed")
    again = cluster.zray("head", "--restore", check=False)   # nothing to restore now
    assert again.returncode != 0 and "is running: nothing to restore" in again.stderr


def test_a_node_killed_mid_run_loses_no_task(cluster):
    @zray.remote(max_retries=3)
    def work(i):
        time.sleep(0.4)
        return i

    refs = [work.remote(i) for i in range(60)]
    deadline = time.monotonic() + 10
    while totals(cluster)["running"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # both nodes busy (on a loaded machine, kill it anyway)
    far = next(r for r in cluster.records() if r["kind"] == "worker")
    os.kill(far["procs"][0]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    ready, pending = zray.wait(refs, num_returns=len(refs), timeout=90)
    if pending:
        from zray.util import state
        from zray._private.services import log_tail
        stuck = [state.get_task(ref.task_id().hex()) for ref in pending]
        logs = "\n".join(log_tail(r["session_dir"])[-3000:] for r in cluster.records())
        from zray._private import services, state as session
        head = services.head_query(cluster.address, cluster.token, "status")
        mine = session.client.query("scheduler")
        raise AssertionError(f"{len(pending)} of 60 tasks never ended: {stuck}\nhead: "
                             f"forwarded {head['forwarded']}, unplaced {head['unplaced']}; "
                             f"this node: {mine}\n{logs}")
    assert sorted(zray.get(ready)) == list(range(60))
    print(f"\n60 tasks all ended {time.monotonic() - killed:.1f} s after their node was killed")
    from zray._private import services
    deadline = time.monotonic() + 10
    while services.head_query(cluster.address, cluster.token, "status")["forwarded"]:
        assert time.monotonic() < deadline, "the head still holds forwarded tasks"
        time.sleep(0.1)
    with pytest.raises(exceptions.GetTimeoutError):
        zray.get(work.options(resources={"far": 1}).remote(0), timeout=1)  # no such node now


def test_results_stay_where_made_and_lost_ones_are_rebuilt_from_lineage(cluster, tmp_path):
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster.zray("worker", "--address", cluster.address, "--token", cluster.token,
                 "--num-cpus", "2", "--resources", json.dumps({"far": 2}),
                 "--object-store-memory", str(600 << 20))
    deadline = time.monotonic() + 20
    while zray.cluster_resources().get("far") != 2:
        assert time.monotonic() < deadline, "the new node did not join"
        time.sleep(0.05)
    far = next(n["node_id"] for n in cluster.status()["nodes"]
               if n["alive"] and n["resources"].get("far"))
    there = NodeAffinitySchedulingStrategy(far, soft=True)   # elsewhere once it is gone
    runs = tmp_path / "runs"

    @zray.remote(scheduling_strategy=there, max_retries=2)
    def make(n):
        import numpy as np
        with open(runs, "a") as f:
            f.write(zray.get_runtime_context().get_node_id() + "\n")
        return np.arange(n, dtype=np.int64)

    @zray.remote(scheduling_strategy=there, max_retries=2)
    def double(a):
        return a * 2

    @zray.remote(scheduling_strategy=there)
    def put_inside():
        import numpy as np
        return [zray.put(np.ones(1_000_000))]

    first = make.remote(2_000_000)          # 16 MB, only on the far node
    second = double.remote(first)           # made from it, also there
    del first                               # only the lineage of `second` needs it now
    inner = zray.get(put_inside.remote(), timeout=30)[0]   # a put: no lineage
    ready, _ = zray.wait([second], timeout=30)
    assert ready
    head_node = next(n for n in cluster.status()["nodes"] if not n["resources"].get("far"))
    assert head_node["store_used"] < 8 << 20, f"a large result was copied: {head_node}"
    far_record = next(r for r in cluster.records() if r["node_id"] == far)
    os.kill(far_record["procs"][0]["pid"], signal.SIGKILL)
    lost = time.monotonic()
    value = zray.get(second, timeout=60)     # made again: `make`, then `double`, elsewhere
    assert value.shape == (2_000_000,) and int(value[-1]) == 2 * 1_999_999
    print(f"\ntwo lost objects rebuilt from lineage {time.monotonic() - lost:.1f} s after "
          f"their node was killed")
    made_on = runs.read_text().split()
    assert made_on[0] == far and len(made_on) == 2 and made_on[1] != far, (made_on, far)
    with pytest.raises(exceptions.ObjectLostError):
        zray.get(inner, timeout=30)


def test_a_lost_object_is_made_again_by_its_owner_for_a_reader_on_a_third_node(cluster, tmp_path):
    """Made on node B for the driver's node A, read by tasks on node C once B is dead:
    C asks A, through the head, to make it again."""
    import numpy as np
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for resources in ({"maker": 1}, {"reader": 3}):
        cluster.zray("worker", "--address", cluster.address, "--token", cluster.token,
                     "--num-cpus", "1", "--resources", json.dumps(resources),
                     "--object-store-memory", str(200 << 20))
    assert eventually(lambda: zray.cluster_resources().get("maker") == 1
                      and zray.cluster_resources().get("reader") == 3, 20)
    maker = next(n["node_id"] for n in cluster.status()["nodes"]
                 if n["alive"] and n["resources"].get("maker"))
    there = NodeAffinitySchedulingStrategy(maker, soft=True)   # elsewhere once it is gone
    runs, flag = tmp_path / "runs", str(tmp_path / "go")

    @zray.remote(scheduling_strategy=there, max_retries=2)
    def make(n):
        with open(runs, "a") as f:
            f.write(zray.get_runtime_context().get_node_id() + "\n")
        return np.arange(n, dtype=np.int64)

    @zray.remote(scheduling_strategy=there, max_retries=0)
    def make_once(n):
        return np.ones(n)

    @zray.remote(scheduling_strategy=there)
    def put_inside():
        return [zray.put(np.ones(1_000_000))]

    @zray.remote(num_cpus=0, resources={"reader": 1}, max_retries=0)
    def read(box, name):
        import os
        import time
        open(f"{flag}.{name}", "w").close()
        while not os.path.exists(flag):      # until its object's node is dead
            time.sleep(0.01)
        return float(zray.get(box[0], timeout=60)[-1]), zray.get_runtime_context().get_node_id()

    made, once = make.remote(2_000_000), make_once.remote(2_000_000)   # 16 MB each, on B
    nested = zray.get(put_inside.remote(), timeout=30)[0]              # a put, on B
    assert zray.wait([made, once], num_returns=2, timeout=30)[1] == []
    readers = {name: read.remote([ref], name) for name, ref in
               (("made", made), ("once", once), ("nested", nested))}
    assert eventually(lambda: all(os.path.exists(f"{flag}.{name}") for name in readers), 30)
    os.kill(cluster.record_of(maker)["procs"][0]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    open(flag, "w").close()
    value, read_on = zray.get(readers["made"], timeout=60)
    took = time.monotonic() - killed
    assert value == 1_999_999.0 and read_on not in (maker, zray.get_runtime_context().get_node_id())
    made_on = runs.read_text().split()
    assert made_on[0] == maker and len(made_on) == 2 and made_on[1] != maker, made_on
    with pytest.raises(exceptions.ObjectLostError, match="max_retries=0"):
        zray.get(readers["once"], timeout=60)
    with pytest.raises(exceptions.ObjectLostError, match="zray.put"):
        zray.get(readers["nested"], timeout=60)
    print(f"\na reader on a third node had the object made again {took:.1f} s after the node "
          f"holding it was killed")
