"""Runtime environments (Ray's ``runtime_env``): the code and packages a job's
workers need, shipped to the nodes that run its work and cached there.

    resolve.py    the caller's side: checking, packing and putting, merging the job's
                  environment with a task's, putting it on the task spec
    packaging.py  a folder or .zip as one deterministic archive named by its hash;
                  unpacking it once per node
    setup.py      the node's side, in the worker: the cache, pip virtualenvs, making
                  the environment the worker's own

The agent keeps workers per environment: ``zray._private.agent.envs``.
"""
