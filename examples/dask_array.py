"""Dask on zray: a dask.array and a dask.dataframe computed by zray tasks.

Each Dask task runs as a zray task; chunks pass between tasks through the
object store, and only the final values come back to this driver.
Needs dask: pip install 'zray[dask]'.
"""

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

import zray as ray
from zray.util.dask import enable_dask_on_ray, ray_dask_get

ray.init(num_cpus=2)

# An array of 16 chunks of 1000 x 1000; the reductions share the chunks.
x = da.random.random((4000, 4000), chunks=(1000, 1000))
y = (x + x.T) / 2
total, mean, std = dask.compute(y.sum(), y.mean(), y.std(), scheduler=ray_dask_get)
print(f"sum {total:.1f}  mean {mean:.5f}  std {std:.5f}")
reference = y.compute(scheduler="sync")
assert np.isclose(total, reference.sum()) and np.isclose(std, reference.std())

# A dataframe: every computation from here on goes to zray.
enable_dask_on_ray()
rng = np.random.default_rng(0)
pdf = pd.DataFrame({"city": rng.choice(["Oslo", "Lima", "Pune", "Kyiv"], 10_000),
                    "temp": rng.normal(15, 8, 10_000).round(1)})
df = dd.from_pandas(pdf, npartitions=8)
summary = df.groupby("city").temp.agg(["count", "mean", "max"]).compute()
print(summary.sort_index())
expected = pdf.groupby("city").temp.agg(["count", "mean", "max"])
pd.testing.assert_frame_equal(summary.sort_index(), expected.sort_index(),
                              check_index_type=False)  # dask keeps strings in Arrow

ray.shutdown()
