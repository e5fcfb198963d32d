"""The node agent's worker pool and actor table, alone: spawning, exits, actors'
calls in order, restarts and retirement."""

import pickle

import pytest

from agent_parts import (DRIVER, NODE, add_worker, done, export, make_agent, results_for, sent,
                         spec, submit)
from zray import exceptions
from zray._private import ids
from zray._private.agent.actors import ActorState
from zray._private.agent.workers import WorkerState
from zray._private.protocol import Op

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def agent(tmp_path):
    agent = make_agent(tmp_path, cpus=2)
    export(agent)
    yield agent
    agent.workers.template.close()


def test_workers_are_spawned_as_needed_but_never_more_than_the_cpus(agent):
    agent.workers.want(10)
    assert len(agent.workers.template.spawned_ids()) == 2
    agent.workers.want(10)  # two are still starting: no more
    assert len(agent.workers.template.spawned_ids()) == 2
    wid = agent.workers.template.spawned_ids()[0]
    agent.workers.template.report(f"spawned {wid.hex()} 321")
    assert agent.workers.read_template()
    assert agent.workers.get(wid).pid == 321
    agent.on_hello(wid, {"kind": "worker", "pid": 321, "job_id": b""}, [])
    assert agent.workers.get(wid).state is WorkerState.IDLE
    assert agent.workers.starting == 1


def test_a_worker_the_agent_did_not_start_is_refused(agent):
    with pytest.raises(ValueError, match="did not start"):
        agent.on_hello(b"W" * 16, {"kind": "worker", "pid": 5, "job_id": b""}, [])


def test_an_exit_report_forgets_the_worker_and_its_refs(agent):
    wid = add_worker(agent, 200)
    object_id = ids.object_id(ids.new_id(), 0)
    agent.objects.on_put(wid, {"objects": [[object_id, [[0, 1]], []]]}, [b"x"])
    agent.workers.template.report("exited 200 exit-1")
    agent.workers.read_template()
    assert agent.workers.get(wid) is None and wid not in agent.clients
    assert agent.objects.get(object_id) is None  # its only holder is gone


def test_a_closed_template_pipe_is_reported(agent):
    template = agent.workers.template
    import os

    os.close(template.write_fd)
    template.write_fd = os.open(os.devnull, os.O_WRONLY)
    assert agent.workers.read_template() is False


def start_actor(agent, wid, **options):
    creation = spec("Counter.__init__", actor_id=b"A" * 16, new_actor=True, **options)
    creation["resources"] = {}
    [anchor] = submit(agent, creation)
    assert [b["task"]["task_id"] for b in sent(agent, Op.EXECUTE, wid)][-1] == \
        creation["task_id"]
    done(agent, wid, creation["task_id"])
    return creation, anchor


def call(name):
    body = spec(name, actor_id=b"A" * 16, method="inc", max_retries=0)
    body["function_id"] = b""
    body["resources"] = {}
    return body


def test_an_actor_gets_its_calls_in_order_in_one_execute(agent):
    wid = add_worker(agent, 300)
    start_actor(agent, wid)
    assert agent.workers.get(wid).state is WorkerState.ACTOR
    calls = [call(f"inc{i}") for i in range(4)]
    submit(agent, *calls)
    executes = [body for who, op, body, raw in agent.wire.sent if op == Op.EXECUTE and who == wid]
    assert "batch" in executes[-1]  # the four calls travelled together
    assert [b["task"]["task_id"] for b in sent(agent, Op.EXECUTE, wid)][-4:] == \
        [c["task_id"] for c in calls]
    for c in calls:
        done(agent, wid, c["task_id"])
    assert len(results_for(agent)) == 5


def test_an_actor_whose_worker_dies_restarts_and_its_running_calls_fail(agent):
    wid = add_worker(agent, 300)
    start_actor(agent, wid, max_restarts=1)
    running = call("inc")
    [r] = submit(agent, running)
    agent.workers.template.report("exited 300 signal-9")
    agent.workers.read_template()
    err = pickle.loads(results_for(agent)[r][1])
    assert isinstance(err, exceptions.ActorDiedError) and "pid 300" in str(err)
    actor = agent.actors.actors[b"A" * 16]
    assert actor.state is ActorState.RESTARTING and actor.restarts_left == 0
    fresh = add_worker(agent, 301)
    agent.dispatch()
    creation = sent(agent, Op.EXECUTE, fresh)[-1]["task"]
    assert creation["new_actor"] and creation["restart_count"] == 1


def test_an_actor_is_retired_when_its_last_handle_is_gone(agent):
    wid = add_worker(agent, 300)
    creation, anchor = start_actor(agent, wid)
    agent.objects.on_decref(DRIVER, {"object_ids": [anchor]}, [])
    assert sent(agent, Op.EXIT, wid) == [{}]
    agent.workers.template.report("exited 300 exit-0")
    agent.workers.read_template()
    actor = agent.actors.actors[b"A" * 16]
    assert actor.state is ActorState.DEAD and "handle" in actor.cause
    [late] = submit(agent, call("late"))
    assert isinstance(pickle.loads(results_for(agent)[late][1]), exceptions.ActorDiedError)
    assert agent.resources.available == agent.resources.total


def test_names_are_claimed_at_the_head_and_the_answer_goes_to_the_caller(agent):
    body = {"req": 1, "namespace": "app", "name": "counter", "actor_id": b"A" * 16,
            "anchor": b"x", "meta": {}, "get_if_exists": False}
    agent.actors.on_reserve_name(DRIVER, body, [])
    op, claim, _ = agent.wire.to_head[-1]
    assert op == Op.HEAD_QUERY and claim["what"] == "claim_name"
    assert (claim["namespace"], claim["name"], claim["node_id"]) == ("app", "counter", NODE)
    agent.head.on_head_reply({"req": claim["req"], "entry": {}, "existing": False}, [])
    assert sent(agent, Op.NAME_RESERVED, DRIVER) == [{"req": 1}]
    agent.actors.on_reserve_name(DRIVER, dict(body, req=2), [])
    taken = agent.wire.to_head[-1][1]
    agent.head.on_head_reply({"req": taken["req"], "error": "an actor named 'counter' ..."}, [])
    error = sent(agent, Op.ERROR, DRIVER)[-1]
    assert error["req"] == 2 and error["error_type"] == "ValueError"


def test_a_name_question_to_a_silent_head_is_answered_with_an_error(agent):
    agent.head.silent = True
    agent.on_query(DRIVER, {"req": 5, "what": "actor", "name": "x", "namespace": "app"}, [])
    error = sent(agent, Op.ERROR, DRIVER)[-1]
    assert error["req"] == 5 and "head does not answer" in error["message"]


def test_a_named_actor_that_dies_releases_its_name(agent):
    wid = add_worker(agent, 300)
    start_actor(agent, wid, actor_name="counter", namespace="app")
    agent.actors.kill(b"A" * 16, True, from_head=False, reason="it exited on purpose")
    agent.workers.template.report("exited 300 signal-9")
    agent.workers.read_template()
    releases = [body for op, body, _ in agent.wire.to_head if body.get("what") == "release_name"]
    assert releases == [{"what": "release_name", "namespace": "app", "name": "counter",
                         "actor_id": b"A" * 16, "req": releases[0]["req"]}]
    assert agent.actors.actors[b"A" * 16].cause == "it exited on purpose"


def test_calls_with_retries_left_run_again_on_the_restarted_actor(agent):
    wid = add_worker(agent, 300)
    start_actor(agent, wid, max_restarts=1)
    retried, failed = call("retried"), call("failed")
    retried["max_retries"] = 1
    submit(agent, retried, failed)
    agent.workers.template.report("exited 300 signal-9")
    agent.workers.read_template()
    assert isinstance(pickle.loads(results_for(agent)[
        ids.object_id(failed["task_id"], 0)][1]), exceptions.ActorDiedError)
    fresh = add_worker(agent, 301)
    agent.dispatch()
    creation = sent(agent, Op.EXECUTE, fresh)[-1]["task"]
    done(agent, fresh, creation["task_id"])
    assert sent(agent, Op.EXECUTE, fresh)[-1]["task"]["task_id"] == retried["task_id"]
    done(agent, fresh, retried["task_id"], b"ok")
    assert bytes(results_for(agent)[ids.object_id(retried["task_id"], 0)][1]) == b"ok"


def test_a_call_waiting_for_its_arguments_holds_back_only_its_own_callers_calls(agent):
    wid = add_worker(agent, 300)
    start_actor(agent, wid)
    other = add_worker(agent, 301)
    producer = spec("producer")
    [pending] = submit(agent, producer)          # runs on the other worker
    waits = call("waits")
    waits["deps"] = [pending]
    later_same = call("later_same")
    agent.on_submit(DRIVER, {"tasks": [waits, later_same]}, [])
    agent.on_hello(b"C" * 16, {"kind": "driver", "pid": 3, "job_id": b"job"}, [])
    from_other = call("from_other")
    agent.on_submit(b"C" * 16, {"tasks": [from_other]}, [])
    agent.dispatch()
    sent_calls = [b["task"]["name"] for b in sent(agent, Op.EXECUTE, wid)][1:]
    assert sent_calls == ["from_other"]  # the other caller is not held back
    done(agent, other, producer["task_id"])
    sent_calls = [b["task"]["name"] for b in sent(agent, Op.EXECUTE, wid)][1:]
    assert sent_calls == ["from_other", "waits", "later_same"]  # its caller's order kept
