"""joblib on zray: scikit-learn's n_jobs runs its work as zray tasks.

register_zray() adds a joblib backend named "zray" (and "ray"); inside
`joblib.parallel_backend("zray")`, every joblib.Parallel call (and so every
scikit-learn estimator with n_jobs) sends its batches to the cluster.
"""

import time

import joblib
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import zray as ray
from zray.util.joblib import register_zray

if __name__ == "__main__":
    ray.init(num_cpus=2)
    register_zray()

    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    grid = {"C": [1.0, 10.0], "gamma": [0.001, 0.0001]}

    start = time.perf_counter()
    with joblib.parallel_backend("zray"):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
        forest = RandomForestClassifier(n_estimators=20, n_jobs=2, random_state=0).fit(X, y)
        squares = joblib.Parallel(n_jobs=2)(joblib.delayed(pow)(i, 2) for i in range(6))
    on_zray = time.perf_counter() - start
    print("best:", search.best_params_, f"score {search.best_score_:.3f}")
    print(f"forest accuracy on its training data: {forest.score(X, y):.3f}")
    print("joblib.Parallel:", squares)

    start = time.perf_counter()
    GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)  # joblib's default backend (loky)
    RandomForestClassifier(n_estimators=20, n_jobs=2, random_state=0).fit(X, y)
    on_loky = time.perf_counter() - start
    print(f"zray backend {on_zray:.2f} s, loky {on_loky:.2f} s (first runs include "
          f"starting workers and importing scikit-learn in them)")

    ray.shutdown()
