"""Actor handles can be passed around: tasks call the same actor the driver does.

Several worker tasks push messages to one MessageActor through copies of its
handle while the driver reads them periodically.  The documents loop 100
times with 1 s sleeps; here each worker sends 5 messages 0.1 s apart.
"""

import time

import zray as ray

WORKERS = 3
MESSAGES = 5
PAUSE = 0.1

ray.init()


@ray.remote
class MessageActor:
    def __init__(self):
        self.messages = []

    def add_message(self, message):
        self.messages.append(message)

    def get_and_clear_messages(self):
        messages = self.messages
        self.messages = []
        return messages


# A remote function which loops around and pushes messages to the actor.
@ray.remote
def worker(message_actor, j):
    for i in range(MESSAGES):
        time.sleep(PAUSE)
        message_actor.add_message.remote("Message {} from worker {}.".format(i, j))


# Create a message actor.
message_actor = MessageActor.remote()

# Start tasks that push messages to the actor.
[worker.remote(message_actor, j) for j in range(WORKERS)]

# Periodically get the messages and print them, until every one has come.
received = []
deadline = time.monotonic() + 30
while len(received) < WORKERS * MESSAGES:
    assert time.monotonic() < deadline, f"only {len(received)} messages arrived"
    new_messages = ray.get(message_actor.get_and_clear_messages.remote())
    print("New messages:", new_messages)
    received.extend(new_messages)
    time.sleep(PAUSE)

for j in range(WORKERS):
    from_j = [m for m in received if m.endswith("from worker {}.".format(j))]
    assert from_j == ["Message {} from worker {}.".format(i, j) for i in range(MESSAGES)], from_j
print("all", len(received), "messages arrived, each worker's in order")

ray.shutdown()
