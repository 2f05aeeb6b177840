"""A profiled scikit-learn grid search: one span per candidate fit, pipeline steps inside.

    python examples/sklearn_gridsearch.py

``ci.wrap`` returns a real estimator, so the search behaves exactly as without cirron; the
trace shows the search's ``fit`` with a child ``fit`` per candidate and fold (each with its
``candidate`` parameters and the pipeline's steps below it), the scoring calls, the refit, and
``best_score`` / ``best_params`` as summary marks. Profiling starts by itself at the first call.
"""

from __future__ import annotations

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cirron as ci


def main() -> None:
    X, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    search = ci.wrap(GridSearchCV(pipeline, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3))

    search.fit(X, y)  # n_jobs=1: every candidate fit is recorded in this process
    print(f"best: {search.best_params_}  score {search.best_score_:.3f}")
    print(f"test accuracy of the refit model: {search.score(X, y):.3f}\n")

    print(ci.trace())  # the tree so far: search fit → candidate fits → pipeline steps
    ci.shutdown()


if __name__ == "__main__":
    main()
