"""``multiprocessing.Pool``'s interface on a zray cluster.

    from zray.util.multiprocessing import Pool

    with Pool() as pool:                    # one process per cluster CPU
        print(pool.map(abs, [-1, -2, -3]))  # [1, 2, 3]

The implementation is in ``pool.py`` (actors and the dispatcher) and
``results.py`` (what the asynchronous calls return).
"""

from zray.util.multiprocessing.pool import Pool
from zray.util.multiprocessing.results import (
    ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, MapResult,
)

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator"]
