"""``python -m zray._private.agent``: run one node agent until told to stop."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import List, Optional

from zray._private.agent.node import Agent


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.agent")
    parser.add_argument("--template", default="", help="PID,IN_FD,OUT_FD of a started template")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument("--resources", required=True, help="JSON: total resources")
    parser.add_argument("--gpu-ids", default="")
    parser.add_argument("--store-bytes", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--node-ip", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(levelname)s %(message)s")
    token = os.environ.pop("ZRAY_TOKEN", None)  # never on the command line: ps shows it
    agent = Agent(session_dir=args.session_dir, node_id=bytes.fromhex(args.node_id),
                  head_address=args.head, resources=json.loads(args.resources),
                  gpu_ids=[int(g) for g in args.gpu_ids.split(",") if g],
                  store_bytes=args.store_bytes, parent_pid=args.parent_pid or None,
                  node_ip=args.node_ip, token=token,
                  adopt=tuple(int(x) for x in args.template.split(",")) if args.template else None)
    agent.start()
    ready_file = os.path.join(args.session_dir, f"agent_{args.node_id[:8]}.ready")
    with open(ready_file + ".tmp", "w") as f:
        f.write(agent.address)
    os.replace(ready_file + ".tmp", ready_file)
    profile_dir = os.environ.get("ZRAY_PROFILE_DIR")
    if profile_dir:  # a developer's switch: dump the agent's profile at exit
        import cProfile

        cProfile.runctx("agent.serve()", globals(), {"agent": agent},
                        os.path.join(profile_dir, f"agent_{os.getpid()}.prof"))
    else:
        agent.serve()


if __name__ == "__main__":
    main()
