"""A word count as a Ray user writes it: map and reduce tasks, results taken
as they finish with ``ray.wait``, failures caught by Ray's exception names.

Runs unchanged on Ray: only the import line says zray.
"""

import collections

import zray as ray
from zray.exceptions import GetTimeoutError, RayTaskError

ray.init(num_cpus=2)

TEXT = """the quick brown fox jumps over the lazy dog
the dog barks and the fox runs
a quick end to the story of the fox and the dog""".splitlines()


@ray.remote
def count_words(line: str) -> collections.Counter:
    return collections.Counter(line.split())


@ray.remote
def merge(*counters: collections.Counter) -> collections.Counter:
    total = collections.Counter()
    for c in counters:
        total.update(c)
    return total


@ray.remote
def parse_number(text: str) -> int:
    return int(text)


pending = [count_words.remote(line) for line in TEXT]
partial = []
while pending:  # take each result as soon as it is done
    ready, pending = ray.wait(pending, num_returns=1, timeout=30)
    partial.extend(ready)
total = ray.get(merge.remote(*partial))
assert total["the"] == 7 and total["fox"] == 3 and total["dog"] == 3, total

try:
    ray.get(parse_number.remote("twelve"))
except RayTaskError as err:  # also the task's own exception type
    assert isinstance(err, ValueError) and isinstance(err.cause, ValueError)
else:
    raise AssertionError("a failing task must raise")

try:
    count_words.remote("too", "many")  # bound against the signature at once
except TypeError:
    pass
else:
    raise AssertionError("too many arguments must fail in the caller")

assert ray.wait([]) == ([], []) and ray.get([]) == []
try:
    ray.get(parse_number.remote("1"), timeout=30)
    ray.get(ray.put(0), timeout=0)
except GetTimeoutError:
    raise AssertionError("ready objects never time out")
print("most common:", total.most_common(3))
ray.shutdown()
