"""Actors: a class made remote runs in a process of its own and keeps its state.

Counter.remote() starts the actor; its methods are called with .remote() and
return refs.  Calls from one caller run in order, so after two incs the
counter reads 2.
"""

import zray as ray

ray.init()


@ray.remote
class Counter:
    def __init__(self):
        self.x = 0

    def inc(self):
        self.x += 1

    def get_value(self):
        return self.x


# Create an actor process.
c = Counter.remote()

# Check the actor's counter value.
value = ray.get(c.get_value.remote())
print("before:", value)
assert value == 0

# Increment the counter twice and check the value again.
c.inc.remote()
c.inc.remote()
value = ray.get(c.get_value.remote())
print("after two incs:", value)
assert value == 2

ray.shutdown()
