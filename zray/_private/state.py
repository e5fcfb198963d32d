"""Process-wide state: the one connection this process has to its node.

Kept in a module of its own so ``ObjectRef`` and the API can reach the
connection without importing the client (and its sockets) at import time.
Only ``zray.init``/``shutdown`` and the worker loop set these.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

#: The Client of this process (driver or worker), or None before init.
client: Optional[Any] = None

#: The Worker running tasks in this process (see worker_main), or None in a driver.
worker: Optional[Any] = None

#: Set while serializing, to collect the IDs of refs found inside a value.
local = threading.local()
