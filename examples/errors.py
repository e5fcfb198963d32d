"""Errors: a task's exception comes back from get, as its own type and as TaskError."""

import os

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def fails(x):
    raise ValueError(f"bad input {x}")


@ray.remote
def uses(value):
    return value


ref = fails.remote(7)
try:
    ray.get(ref)
    raise AssertionError("get should re-raise the task's error")
except ValueError as exc:
    assert isinstance(exc, ray.exceptions.TaskError)
    assert "bad input 7" in str(exc)
    print("caught ValueError from the task:\n", exc)

# A task that depends on a failed one fails with the same cause.
try:
    ray.get(uses.remote(ref))
    raise AssertionError("the dependent task should fail")
except ray.exceptions.TaskError as exc:
    assert isinstance(exc, ValueError)
    print("dependent task failed too:", type(exc).__name__)


# A worker that dies mid-task: with no retries, get raises WorkerCrashedError.
@ray.remote(max_retries=0)
def dies():
    os._exit(1)


try:
    ray.get(dies.remote(), timeout=30)
    raise AssertionError("get should report the crash")
except ray.exceptions.WorkerCrashedError as exc:
    print("worker crashed:", exc)

# The cluster keeps working afterwards.
assert ray.get(uses.remote(5)) == 5

info = ray.error_info()
for entry in info:
    print("error_info:", entry)
assert any("bad input 7" in str(entry.get("error", "")) for entry in info)

ray.shutdown()
