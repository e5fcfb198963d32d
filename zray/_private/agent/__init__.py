"""The node agent: the local scheduler, worker pool and object store of one node.

Run as ``python -m zray._private.agent``; :mod:`zray._private.agent.node` is
where to start reading (its docstring lists the parts and what each owns).
"""
