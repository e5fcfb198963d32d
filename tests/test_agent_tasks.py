"""The node agent's task table and dispatcher, alone: dependency waits, dispatch,
cancellation, retries, sending ahead and taking back."""

import pickle

import pytest

from agent_parts import (DRIVER, add_worker, done, export, make_agent, results_for, sent,
                         spec, submit)
from zray import exceptions
from zray._private import ids, protocol
from zray._private.agent.tasks import FINISHED, QUEUED, RUNNING, WAITING
from zray._private.protocol import Op

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def agent(tmp_path):
    agent = make_agent(tmp_path, cpus=1)
    export(agent)
    yield agent
    agent.workers.template.close()


def executed(agent, wid):
    return [body["task"]["task_id"] for body in sent(agent, Op.EXECUTE, wid)]


def error_of(agent, object_id):
    desc, data = results_for(agent)[object_id]
    assert desc["kind"] == protocol.ObjectKind.ERROR
    return pickle.loads(data)


def test_a_task_waits_for_its_argument_then_runs_with_it(agent):
    wid = add_worker(agent, 100)
    first, second = spec("first"), None
    [a] = submit(agent, first)
    second = spec("second", deps=[a])
    [b] = submit(agent, second)
    assert agent.tasks.get(second["task_id"]).state is WAITING
    assert executed(agent, wid) == [first["task_id"]]
    done(agent, wid, first["task_id"], b"41")
    assert executed(agent, wid) == [first["task_id"], second["task_id"]]
    args = sent(agent, Op.EXECUTE, wid)[-1]["args"]
    assert [d["object_id"] for d in args] == [a]
    done(agent, wid, second["task_id"], b"42")
    assert bytes(results_for(agent)[b][1]) == b"42"
    assert agent.tasks.get(second["task_id"]) is None


def test_a_failed_argument_fails_the_task_that_needs_it_without_running_it(agent):
    wid = add_worker(agent, 100)
    first = spec("first")
    [a] = submit(agent, first)
    second = spec("second", deps=[a])
    [b] = submit(agent, second)
    failure = pickle.dumps(ValueError("boom"))
    done(agent, wid, first["task_id"], failure, error="ValueError: boom")
    assert executed(agent, wid) == [first["task_id"]]
    assert bytes(results_for(agent)[b][1]) == failure
    assert [e["task_name"] for e in agent.tasks.errors_of(b"job")] == ["first", "second"]


def test_an_unknown_argument_is_an_object_lost_error(agent):
    [b] = submit(agent, spec("lonely", deps=[ids.object_id(ids.new_id(), 0)]))
    assert isinstance(error_of(agent, b), exceptions.ObjectLostError)


def test_tasks_queue_while_resources_are_taken_and_run_when_they_free(agent):
    wid = add_worker(agent, 100)
    other = add_worker(agent, 101)
    specs = [spec(f"t{i}") for i in range(3)]
    submit(agent, *specs)
    assert len(executed(agent, wid) + executed(agent, other)) == 1  # one CPU
    runner = wid if executed(agent, wid) else other
    done(agent, runner, specs[0]["task_id"])
    assert agent.tasks.get(specs[1]["task_id"]).state is RUNNING
    assert agent.tasks.get(specs[2]["task_id"]).state is QUEUED


def test_cancelling_a_queued_task_fails_it_and_it_never_runs(agent):
    wid = add_worker(agent, 100)
    running, queued = spec("running"), spec("queued")
    [_, q] = submit(agent, running, queued)
    agent.tasks.on_cancel(DRIVER, {"task_id": queued["task_id"], "force": False}, [])
    assert isinstance(error_of(agent, q), exceptions.TaskCancelledError)
    done(agent, wid, running["task_id"])
    assert executed(agent, wid) == [running["task_id"]]


def test_cancelling_a_running_task_interrupts_its_worker(agent):
    wid = add_worker(agent, 100)
    running = spec("running")
    [r] = submit(agent, running)
    agent.tasks.on_cancel(DRIVER, {"task_id": running["task_id"], "force": False}, [])
    assert sent(agent, Op.INTERRUPT, wid) == [{"task_id": running["task_id"]}]
    done(agent, wid, running["task_id"])  # it finished anyway: still cancelled
    assert isinstance(error_of(agent, r), exceptions.TaskCancelledError)


def test_a_task_whose_worker_dies_is_retried_then_fails_when_no_retries_are_left(agent):
    wid = add_worker(agent, 100)
    once = spec("once", max_retries=1)
    [r] = submit(agent, once)
    agent.workers.template.report("exited 100 signal-9")
    assert agent.workers.read_template()
    task = agent.tasks.get(once["task_id"])
    assert task.state is QUEUED and task.retries_left == 0
    second = add_worker(agent, 102)
    agent.dispatch()
    assert executed(agent, second) == [once["task_id"]]
    agent.workers.template.report("exited 102 signal-9")
    agent.workers.read_template()
    err = error_of(agent, r)
    assert isinstance(err, exceptions.WorkerCrashedError) and "pid 102" in str(err)
    assert agent.resources.available["CPU"] == agent.resources.total["CPU"]
    assert wid not in agent.clients


def test_quick_tasks_are_sent_ahead_and_taken_back_when_their_worker_blocks(tmp_path):
    agent = make_agent(tmp_path, cpus=1)
    export(agent)
    try:
        wid = add_worker(agent, 100)
        warmup = [spec(f"w{i}") for i in range(3)]
        for s in warmup:  # three quick runs make the function "quick"
            submit(agent, s)
            done(agent, wid, s["task_id"])
        batch = [spec(f"q{i}") for i in range(5)]
        submit(agent, *batch)
        ahead = sent(agent, Op.EXECUTE, wid)[-5:]
        assert [b["task"]["task_id"] for b in ahead] == [s["task_id"] for s in batch]
        assert all("epoch" in b for b in ahead[1:]) and "epoch" not in ahead[0]
        assert agent.dispatcher.sent_ahead == 4
        agent.on_blocked(wid, {}, [])  # the first one waits in get(): take the rest back
        assert agent.dispatcher.taken_back == 4
        assert [agent.tasks.get(s["task_id"]).state for s in batch] == [RUNNING] + [QUEUED] * 4
        assert agent.resources.available["CPU"] == agent.resources.total["CPU"]  # lent
        agent.on_unblocked(wid, {}, [])
        done(agent, wid, batch[0]["task_id"])
        again = sent(agent, Op.EXECUTE, wid)[-4:]  # sent again, with the new epoch
        assert [b["task"]["task_id"] for b in again] == [s["task_id"] for s in batch[1:]]
        assert all(b.get("epoch", 1) == 1 for b in again)
        for s in batch[1:]:
            done(agent, wid, s["task_id"])
        assert all(agent.tasks.get(s["task_id"]) is None for s in batch)
        assert len(results_for(agent)) == 8
    finally:
        agent.workers.template.close()


def test_a_task_no_node_can_run_waits_and_its_driver_is_warned(agent):
    impossible = spec("big", resources={"CPU": 8})
    submit(agent, impossible)
    assert agent.tasks.get(impossible["task_id"]).state is QUEUED
    [warning] = sent(agent, Op.WARN, DRIVER)
    assert "CPU: 8" in warning["message"]
    agent.tasks.on_cancel(DRIVER, {"task_id": impossible["task_id"], "force": False}, [])
    assert agent.dispatcher.queued() == 0
    assert agent.tasks.get(impossible["task_id"]) is None or \
        agent.tasks.get(impossible["task_id"]).state is FINISHED


def test_a_failure_its_task_retries_on_runs_it_again_while_retries_are_left(agent):
    wid = add_worker(agent, 100)
    flaky = spec("flaky", max_retries=1)
    [r] = submit(agent, flaky)
    failure = pickle.dumps(ValueError("flaky"))
    result = {"object_id": r, "kind": protocol.ObjectKind.ERROR, "layout": [], "frame": 0}
    for _ in range(2):
        agent.on_task_done(wid, {"task_id": flaky["task_id"], "results": [result],
                                 "error": "ValueError: flaky", "retryable": True}, [failure])
        agent.dispatch()
    assert executed(agent, wid) == [flaky["task_id"]] * 2  # ran twice: one retry
    assert bytes(results_for(agent)[r][1]) == failure     # then the failure stands


def test_on_a_single_node_a_soft_affinity_elsewhere_runs_here_and_a_hard_one_fails(agent):
    wid = add_worker(agent, 100)
    elsewhere = b"E" * 16
    soft = spec("soft", scheduling_strategy=["NODE", elsewhere, True])
    hard = spec("hard", scheduling_strategy=["NODE", elsewhere, False])
    here = spec("here", scheduling_strategy=["NODE", agent.node_id, False])
    [_, h, _] = submit(agent, soft, hard, here)
    err = error_of(agent, h)
    assert "not part of this cluster" in str(err) and "not soft" in str(err)
    done(agent, wid, soft["task_id"])
    assert executed(agent, wid) == [soft["task_id"], here["task_id"]]


def test_a_task_the_head_places_back_on_a_node_that_handed_it_on_runs_there(tmp_path):
    from zray._private import security

    agent = make_agent(tmp_path, cpus=1, token=security.new_token())
    export(agent)
    try:
        wid = add_worker(agent, 100)
        spread = spec("spread", scheduling_strategy=["SPREAD"])
        [r] = submit(agent, spread)
        op, forward, frames = agent.wire.to_head[-1]
        assert op == Op.FORWARD and forward["origin"] == agent.node_id
        assert executed(agent, wid) == []  # the head decides where
        agent.cluster.on_forward(forward, list(frames))  # ... and it says: here
        agent.dispatch()
        assert executed(agent, wid) == [spread["task_id"]]
        done(agent, wid, spread["task_id"], b"ok")
        assert bytes(results_for(agent)[r][1]) == b"ok"
        assert len([m for m in agent.wire.to_head if m[0] == Op.FORWARD]) == 1  # not again
    finally:
        agent.workers.template.close()
