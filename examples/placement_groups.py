"""Placement groups: reserve bundles of resources at once, then run tasks and actors in them.

A group's bundles are reserved all together or not at all. Until then the group
is PENDING and its ready() ref is not ready; once CREATED, each bundle's
resources belong to the group: tasks and actors scheduled in a bundle use them,
not the node's free pool. Removing the group gives them back and ends its actors.
"""

import zray as ray
from zray.util import (
    get_current_placement_group, placement_group, placement_group_table, remove_placement_group,
)
from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(num_cpus=4, num_gpus=1)

# Two bundles of one CPU each; a GPU in the second.
pg = placement_group([{"CPU": 1}, {"CPU": 1, "GPU": 1}], strategy="PACK", name="trainers")
ray.get(pg.ready())
row = placement_group_table(pg)
print("group", row["name"], row["state"], "bundles on", row["bundles_to_node_id"])
assert row["state"] == "CREATED"
print("free outside the group:", ray.available_resources().get("CPU"))
assert ray.available_resources()["CPU"] == 2


@ray.remote(num_cpus=1)
def step(i):
    group = get_current_placement_group()
    return i, group.id.hex() if group else None


@ray.remote(num_cpus=1, num_gpus=1)
def gpu_step():
    return ray.get_gpu_ids()


# Bundle 0 for the CPU steps (one at a time: the bundle has one CPU), bundle 1 for the GPU.
in_bundle_0 = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
results = ray.get([step.options(scheduling_strategy=in_bundle_0).remote(i) for i in range(4)])
print("steps ran in group:", {g for _, g in results})
assert all(g == pg.id.hex() for _, g in results)
in_bundle_1 = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
print("GPU step saw GPUs", ray.get(gpu_step.options(scheduling_strategy=in_bundle_1).remote()))


@ray.remote(num_cpus=1)
class Trainer:
    def ping(self):
        return "pong"


trainer = Trainer.options(scheduling_strategy=in_bundle_0).remote()
assert ray.get(trainer.ping.remote()) == "pong"

# A group that cannot fit yet waits: three more CPUs are not free while `pg` holds two.
waiting = placement_group([{"CPU": 3}])
print("second group ready within 0.5 s?", waiting.wait(0.5))

remove_placement_group(pg)  # its actor dies, its CPUs come back...
print("second group ready once the first is removed?", waiting.wait(30))
assert placement_group_table(waiting)["state"] == "CREATED"
remove_placement_group(waiting)
ray.shutdown()
