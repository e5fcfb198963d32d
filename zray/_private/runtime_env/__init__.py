"""Runtime environments (Ray's ``runtime_env``): the code and packages a job's
workers need, shipped to the nodes that run its work and cached there."""
