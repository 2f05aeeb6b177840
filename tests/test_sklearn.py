"""``ci.wrap(estimator)``: a real scikit-learn meta-estimator that records one span per call.

Every test asserts on what a user reads after ``ci.shutdown()``: the spool's spans, their
attributes and parents, and their marks.
"""

from __future__ import annotations

import pickle
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

import cirron as ci
import cirron.integrations.sklearn as sk
from cirron.integrations.sklearn import CirronEstimator
from tests.helpers.adapters import keep_only
from tests.helpers.schema import load_batches

X, Y = make_classification(n_samples=60, n_features=4, random_state=0)


@pytest.fixture(autouse=True)
def _only_these_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other frameworks' hooks (torch may be imported by a neighbouring test) are tested by
    # their owners; autodetect here sees only the adapters under test.
    keep_only(monkeypatch, "sklearn", "onnx")


@pytest.fixture
def profiled() -> Iterator[None]:
    ci.profile(frameworks=[])
    yield


class Trace:
    """The spool as a user reads it after shutdown: newest record of each span, every mark."""

    def __init__(self, root: Path) -> None:
        ci.shutdown()
        self.spans: dict[str, dict[str, Any]] = {}
        self.marks: list[dict[str, Any]] = []
        for batch in load_batches(root):
            for span in batch["spans"]:
                self.spans[span["id"]] = span
            self.marks.extend(batch["marks"])
        self.session = next(s for s in self.spans.values() if s["name"] == "cirron.session")

    def named(self, name: str, parent: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return sorted(
            (
                s
                for s in self.spans.values()
                if s["name"] == name and (parent is None or s["parent_id"] == parent["id"])
            ),
            key=lambda s: s["start_ns"],
        )

    def top(self) -> list[dict[str, Any]]:
        return self.children(self.session)

    def children(self, span: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted(
            (s for s in self.spans.values() if s["parent_id"] == span["id"]),
            key=lambda s: s["start_ns"],
        )

    def marks_of(self, span: dict[str, Any]) -> dict[str, Any]:
        return {
            m["name"]: m["value"]
            for m in sorted(self.marks, key=lambda m: m["ts_ns"])
            if m["span_id"] == span["id"]
        }


# -- one span per call -----------------------------------------------------------------------------


def test_each_call_is_one_span_with_shape_estimator_and_params(
    profiled: None, tmp_path: Path
) -> None:
    clf = ci.wrap(LogisticRegression(C=0.5, max_iter=200))
    clf.fit(X, Y)
    clf.predict_proba(X[:10])
    accuracy = clf.score(X, Y)

    t = Trace(tmp_path)
    assert [s["name"] for s in t.top()] == ["fit", "predict_proba", "score"]
    fit, proba, score = t.top()
    assert fit["attrs"]["n_samples"] == 60 and fit["attrs"]["n_features"] == 4
    assert fit["attrs"]["estimator"] == "LogisticRegression"
    assert fit["attrs"]["params"]["C"] == 0.5 and fit["attrs"]["params"]["max_iter"] == 200
    assert proba["attrs"]["n_samples"] == 10
    assert t.marks_of(fit)["n_iter"] >= 1
    assert t.marks_of(score) == {"score": pytest.approx(accuracy)}
    assert all(m["kind"] == "summary" for m in t.marks)


def test_a_final_loss_and_iteration_count_are_summary_marks(profiled: None, tmp_path: Path) -> None:
    mlp = ci.wrap(MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, Y)

    t = Trace(tmp_path)
    (fit,) = t.named("fit")
    assert t.marks_of(fit) == {"n_iter": 5, "loss": pytest.approx(mlp.loss_curve_[-1])}


def test_a_failing_call_is_recorded_and_its_exception_reraised_untouched(
    profiled: None, tmp_path: Path
) -> None:
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ci.wrap(LogisticRegression()).fit(bad, Y)

    (fit,) = Trace(tmp_path).named("fit")
    assert fit["attrs"]["exception"] == "ValueError"


def test_the_first_call_starts_profiling_when_nothing_runs(tmp_path: Path) -> None:
    scaler = ci.wrap(StandardScaler())
    assert not ci._get().profiling
    scaler.fit_transform(X)
    assert ci._get().profiling

    t = Trace(tmp_path)
    (span,) = t.top()
    assert span["name"] == "fit_transform" and span["attrs"]["estimator"] == "StandardScaler"


# -- a real meta-estimator -------------------------------------------------------------------------


def test_fit_returns_the_wrapper_and_fits_a_clone_of_the_estimator_param() -> None:
    inner = LogisticRegression()
    clf = ci.wrap(inner)
    assert isinstance(clf, CirronEstimator)
    assert clf.fit(X, Y) is clf
    assert clf.estimator is inner  # parameters are never mutated by fit
    with pytest.raises(NotFittedError):
        check_is_fitted(inner)
    check_is_fitted(clf)
    assert clf.coef_.shape == (1, 4) and list(clf.classes_) == [0, 1]
    assert clf.n_features_in_ == 4


def test_an_already_fitted_estimator_predicts_without_refitting() -> None:
    fitted = LogisticRegression().fit(X, Y)
    clf = ci.wrap(fitted)
    check_is_fitted(clf)
    np.testing.assert_array_equal(clf.predict(X), fitted.predict(X))


def test_methods_exist_exactly_when_the_wrapped_estimator_has_them() -> None:
    clf, reg, scaler = ci.wrap(LogisticRegression()), ci.wrap(Ridge()), ci.wrap(StandardScaler())
    for name in ("predict", "predict_proba", "predict_log_proba", "decision_function", "score"):
        assert hasattr(clf, name), name
    assert not hasattr(clf, "transform") and not hasattr(clf, "partial_fit")
    assert hasattr(reg, "predict") and not hasattr(reg, "predict_proba")
    for name in ("transform", "fit_transform", "inverse_transform", "partial_fit"):
        assert hasattr(scaler, name), name
    assert not hasattr(scaler, "predict") and not hasattr(scaler, "score")
    # The wrapped estimator's own available_if decides, parameters included.
    assert not hasattr(ci.wrap(SVC()), "predict_proba")
    assert hasattr(ci.wrap(SVC(probability=True)), "predict_proba")


def test_params_reach_through_and_clone_keeps_it_wrapped() -> None:
    clf = ci.wrap(LogisticRegression(C=2.0))
    params = clf.get_params(deep=True)
    assert params["estimator__C"] == 2.0 and set(clf.get_params(deep=False)) == {"estimator"}
    assert clf.set_params(estimator__C=3.0) is clf and clf.estimator.C == 3.0

    twin = clone(clf)
    assert isinstance(twin, CirronEstimator) and twin.estimator is not clf.estimator
    assert twin.get_params()["estimator__C"] == 3.0


def test_pickling_keeps_it_wrapped_and_fitted() -> None:
    clf = ci.wrap(LogisticRegression()).fit(X, Y)
    again = pickle.loads(pickle.dumps(clf))
    assert isinstance(again, CirronEstimator)
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))


def test_tags_and_estimator_kind_are_the_wrapped_estimators() -> None:
    assert is_classifier(ci.wrap(LogisticRegression()))
    assert is_regressor(ci.wrap(Ridge()))
    scaler = ci.wrap(StandardScaler())
    assert not is_classifier(scaler) and not is_regressor(scaler)
    assert get_tags(ci.wrap(SVC())) == get_tags(SVC())
    assert is_classifier(ci.wrap(make_pipeline(StandardScaler(), LogisticRegression())))


def test_partial_fit_keeps_updating_one_fitted_clone(profiled: None, tmp_path: Path) -> None:
    sgd = ci.wrap(SGDClassifier(random_state=0))
    assert sgd.partial_fit(X, Y, classes=[0, 1]) is sgd
    first = sgd.estimator_
    sgd.partial_fit(X, Y)
    assert sgd.estimator_ is first and first.t_ > 60

    assert [s["name"] for s in Trace(tmp_path).top()] == ["partial_fit", "partial_fit"]


def test_set_output_returns_the_wrapper() -> None:
    scaler = ci.wrap(StandardScaler())
    assert scaler.set_output(transform="pandas") is scaler
    assert type(scaler.fit_transform(X)).__name__ == "DataFrame"


# -- pipelines --------------------------------------------------------------------------------------


def test_a_pipeline_gives_one_child_span_per_step(profiled: None, tmp_path: Path) -> None:
    pipe = ci.wrap(make_pipeline(StandardScaler(), LogisticRegression()))
    pipe.fit(X, Y)
    pipe.predict(X)

    # The fitted pipeline holds the real steps again: probes never outlive the call.
    fitted = pipe.estimator_
    assert [type(s) for _, s in fitted.steps] == [StandardScaler, LogisticRegression]
    assert pipe[0] is fitted.steps[0][1] and pipe.named_steps["logisticregression"].coef_.shape

    t = Trace(tmp_path)
    fit, predict = t.top()
    assert (fit["name"], predict["name"]) == ("fit", "predict")
    assert fit["attrs"]["estimator"] == "Pipeline"
    steps = [(s["name"], s["attrs"]["step"], s["attrs"]["estimator"]) for s in t.children(fit)]
    assert steps == [
        ("fit_transform", "standardscaler", "StandardScaler"),
        ("fit", "logisticregression", "LogisticRegression"),
    ]
    assert [(s["name"], s["attrs"]["step"]) for s in t.children(predict)] == [
        ("transform", "standardscaler"),
        ("predict", "logisticregression"),
    ]
    assert "n_iter" in t.marks_of(t.children(fit)[1])


def test_concurrent_predictions_on_one_fitted_pipeline_stay_separate(
    profiled: None, tmp_path: Path
) -> None:
    pipe = ci.wrap(make_pipeline(StandardScaler(), LogisticRegression())).fit(X, Y)
    expected = pipe.predict(X)
    barrier = threading.Barrier(4)

    def predict(_: int) -> np.ndarray:
        barrier.wait()
        return pipe.predict(X)

    with ThreadPoolExecutor(4) as pool:
        for out in pool.map(predict, range(8)):
            np.testing.assert_array_equal(out, expected)
    assert [type(s) for _, s in pipe.estimator_.steps] == [StandardScaler, LogisticRegression]

    t = Trace(tmp_path)
    predicts = t.named("predict", parent=t.session)
    assert len(predicts) == 1 + 8
    assert len({s["thread_id"] for s in predicts}) > 1
    for span in predicts:
        kids = t.children(span)
        assert [k["attrs"]["step"] for k in kids] == ["standardscaler", "logisticregression"]
        assert all(k["thread_id"] == span["thread_id"] for k in kids)


def test_a_wrapped_step_in_a_wrapped_pipeline_is_still_one_span_per_call(
    profiled: None, tmp_path: Path
) -> None:
    pipe = ci.wrap(make_pipeline(StandardScaler(), ci.wrap(LogisticRegression())))
    pipe.fit(X, Y)
    pipe.predict(X)

    t = Trace(tmp_path)
    fit, predict = t.top()
    kids = t.children(fit)
    assert [(k["name"], k["attrs"]["step"]) for k in kids] == [
        ("fit_transform", "standardscaler"),
        ("fit", "cirronestimator"),
    ]
    assert t.children(kids[1]) == []  # no second span for the same fit
    assert [k["name"] for k in t.children(predict)] == ["transform", "predict"]
    assert len(t.named("fit")) == 2 and len(t.named("predict")) == 2


def test_wrapping_twice_does_not_double_spans(profiled: None, tmp_path: Path) -> None:
    once = ci.wrap(LogisticRegression())
    assert ci.wrap(once) is once
    CirronEstimator(CirronEstimator(LogisticRegression())).fit(X, Y)

    t = Trace(tmp_path)
    (fit,) = t.named("fit")
    assert fit["attrs"]["estimator"] == "LogisticRegression" and t.children(fit) == []


def test_make_pipeline_and_column_transformer_keep_wrapped_steps(
    profiled: None, tmp_path: Path
) -> None:
    ct = ColumnTransformer(
        [("num", ci.wrap(StandardScaler()), [0, 1]), ("rest", "passthrough", [2, 3])]
    )
    pipe = make_pipeline(ct, ci.wrap(LogisticRegression()))
    pipe.fit(X, Y)
    assert isinstance(pipe[0].transformers_[0][1], CirronEstimator)
    assert isinstance(pipe[-1], CirronEstimator)

    t = Trace(tmp_path)
    assert [(s["name"], s["attrs"]["estimator"]) for s in t.top()] == [
        ("fit_transform", "StandardScaler"),
        ("fit", "LogisticRegression"),
    ]
    assert t.top()[0]["attrs"]["n_features"] == 2


# -- searches and cross-validation --------------------------------------------------------------------


def test_a_search_gives_one_child_span_per_candidate_fit(profiled: None, tmp_path: Path) -> None:
    base = LogisticRegression()
    search = ci.wrap(GridSearchCV(base, {"C": [0.1, 1.0]}, cv=2))
    search.fit(X, Y)
    assert search.estimator.estimator is base  # the search's own parameter is untouched
    assert type(search.best_estimator_) is LogisticRegression
    assert search.best_params_["C"] in (0.1, 1.0)

    t = Trace(tmp_path)
    (outer,) = t.top()
    assert outer["attrs"]["estimator"] == "GridSearchCV"
    assert outer["attrs"]["best_params"] == search.best_params_
    marks = t.marks_of(outer)
    assert marks["best_score"] == pytest.approx(search.best_score_)
    assert marks["best_params"] == f'{{"C": {search.best_params_["C"]}}}'
    fits = t.named("fit", parent=outer)
    assert len(fits) == 2 * 2 + 1  # candidates x folds, then the refit
    assert sorted(f["attrs"]["candidate"]["C"] for f in fits[:4]) == [0.1, 0.1, 1.0, 1.0]
    assert fits[-1]["attrs"]["candidate"] == search.best_params_
    assert all(f["attrs"]["params"]["C"] == f["attrs"]["candidate"]["C"] for f in fits)
    assert len(t.named("score", parent=outer)) == 4  # each candidate's scoring


def test_a_search_over_a_pipeline_nests_candidates_and_steps(
    profiled: None, tmp_path: Path
) -> None:
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    ci.wrap(GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2)).fit(X, Y)

    t = Trace(tmp_path)
    (outer,) = t.top()
    fits = t.named("fit", parent=outer)
    assert len(fits) == 5
    assert [k["attrs"]["step"] for k in t.children(fits[0])] == [
        "standardscaler",
        "logisticregression",
    ]


def test_a_search_over_a_wrapped_estimator_records_each_candidate(
    profiled: None, tmp_path: Path
) -> None:
    search = GridSearchCV(ci.wrap(LogisticRegression()), {"estimator__C": [0.1, 1.0]}, cv=2)
    search.fit(X, Y)
    assert isinstance(search.best_estimator_, CirronEstimator)

    t = Trace(tmp_path)
    fits = t.named("fit")
    assert len(fits) == 5
    assert sorted(f["attrs"]["params"]["C"] for f in fits[:4]) == [0.1, 0.1, 1.0, 1.0]


def test_a_search_with_worker_processes_records_the_outer_span_and_best_marks(
    profiled: None, tmp_path: Path
) -> None:
    ci.wrap(GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2, n_jobs=2)).fit(X, Y)

    t = Trace(tmp_path)
    (outer,) = t.top()
    assert t.named("fit", parent=outer) == []
    assert {"best_score", "best_params"} <= set(t.marks_of(outer))
    sessions = [s for s in t.spans.values() if s["name"] == "cirron.session"]
    assert len(sessions) == 1  # workers never start sessions of their own


def test_cross_val_score_records_every_fold(profiled: None, tmp_path: Path) -> None:
    clf = ci.wrap(LogisticRegression())
    scores = cross_val_score(clf, X, Y, cv=3)
    assert "estimator_" not in vars(clf)  # cross_val_score fits clones

    t = Trace(tmp_path)
    assert [s["name"] for s in t.top()] == ["fit", "score"] * 3
    recorded = [t.marks_of(s)["score"] for s in t.named("score")]
    assert recorded == pytest.approx(list(scores))


def test_metadata_is_routed_to_the_wrapped_estimator() -> None:
    weights = np.linspace(0.5, 1.5, len(Y))
    with sklearn.config_context(enable_metadata_routing=True):
        inner = LogisticRegression().set_fit_request(sample_weight=True)
        search = GridSearchCV(ci.wrap(inner), {"estimator__C": [0.5, 1.0]}, cv=2)
        search.fit(X, Y, sample_weight=weights)
    expected = LogisticRegression(C=search.best_params_["estimator__C"]).fit(
        X, Y, sample_weight=weights
    )
    np.testing.assert_allclose(search.best_estimator_.coef_, expected.coef_)


# -- what is and is not an estimator, and which cirron -------------------------------------------------


def test_only_estimators_are_wrapped() -> None:
    c = ci._get()
    assert sk.wrap(c, object()) is None
    assert sk.wrap(c, LogisticRegression) is None  # the class, not an instance
    assert isinstance(sk.wrap(c, Pipeline([("s", StandardScaler())])), CirronEstimator)


def test_a_wrapper_around_a_non_estimator_fails_clearly_at_fit() -> None:
    odd = CirronEstimator(estimator=object())  # construction only stores the parameter
    with pytest.raises(TypeError, match=r"needs a scikit-learn estimator.*builtins\.object"):
        odd.fit(X, Y)
    assert not hasattr(odd, "predict")


def test_another_instance_gets_the_spans_and_stays_out_of_params(tmp_path: Path) -> None:
    other = ci.Cirron(output_dir=str(tmp_path / "other"))
    other.profile(frameworks=[])
    clf = other.wrap(LogisticRegression())
    assert clf.get_params(deep=False) == {"estimator": clf.estimator}
    clf.fit(X, Y)
    clone(clf).fit(X, Y)  # clones (searches, cross-validation) keep recording there
    restored = pickle.loads(pickle.dumps(clf))  # a pickle carries no Cirron instance
    assert "_cirron" not in vars(restored)
    other.shutdown()

    spans = [s for b in load_batches(tmp_path / "other") for s in b["spans"]]
    assert [s["name"] for s in spans].count("fit") == 2
    assert not (tmp_path / "work" / ".cirron").exists()  # the default instance saw nothing
