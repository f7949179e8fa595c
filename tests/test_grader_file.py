"""The grader file: plain data that round-trips exactly; a pickle is refused before it is unpickled."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from infer.grader import GraderError, load_grader, rater_agreement, train_grader


def _data(n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 12)
    x = rng.standard_normal((len(y), 5)) + y[:, None] * np.array([1.5, -1.0, 0.5, 0.0, 2.0])
    x[:, 3] = 7.0  # a constant feature: the scaler's scale is 1 there
    return x, y, [f"feat_{i}" for i in range(5)]


@pytest.mark.parametrize("n_classes", [4, 2])
def test_saved_grader_round_trips_exactly_and_predicts_as_scikit_learn(tmp_path, n_classes):
    from infer.grader import _new_model

    x, y, names = _data(n_classes)
    grader = train_grader(x, y, names, c=0.7, seed=3)
    written = grader.save(str(tmp_path / "grader.json"))
    assert written == [str(tmp_path / "grader.json"), str(tmp_path / "grader.npz")]
    meta = json.loads((tmp_path / "grader.json").read_text())
    assert meta["feature_names"] == names and meta["bucket_edges"] == [[0, 3], [4, 5], [6, 7], [8, 9]]
    assert {"numpy", "scikit-learn"} <= set(meta["versions"])
    with np.load(tmp_path / "grader.npz", allow_pickle=False) as z:
        assert set(z.files) == {"mean", "scale", "coef", "intercept", "classes"}

    loaded = load_grader(str(tmp_path / "grader.json"))
    for key, value in grader.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[key], value)  # bit for bit
    assert loaded.feature_names == names and loaded.cv_accuracy == grader.cv_accuracy
    assert loaded.confusion == grader.confusion and loaded.class_counts == grader.class_counts
    test = np.random.default_rng(1).standard_normal((40, 5)) * 2
    b1, p1 = grader.predict(test)
    b2, p2 = loaded.predict(test)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(p1, p2)
    # The numpy prediction is scikit-learn's own
    reference = _new_model(0.7, 3).fit(x, y)
    np.testing.assert_allclose(p1[:, reference.classes_], reference.predict_proba(test), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(b1, reference.predict(test))


class _Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_grader_is_refused_and_its_code_never_runs(tmp_path):
    import joblib

    marker = tmp_path / "pwned"
    payload = _Payload(str(marker))
    files = {
        "grader.joblib": lambda p: joblib.dump(payload, p),
        "old.pkl": lambda p: p.write_bytes(pickle.dumps(payload)),
        "grader.json": lambda p: p.write_bytes(pickle.dumps(payload, protocol=4)),   # a pickle named .json
        "proto0.json": lambda p: p.write_bytes(pickle.dumps(payload, protocol=0)),
        "compressed.json": lambda p: joblib.dump(payload, p, compress=3),
    }
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(GraderError) as err:
            load_grader(str(path))
        message = str(err.value)
        assert len(message.splitlines()) == 1 and ("pickle" in message or "not a grader" in message), message
        assert not marker.exists(), f"{name}: the pickle's code ran"
    # and no pickle is ever loaded by the grader module
    import inspect

    import infer.grader as module

    source = inspect.getsource(module)
    assert "import joblib" not in source and "import pickle" not in source and "allow_pickle=True" not in source


def test_a_grader_for_other_features_or_damaged_arrays_is_refused(tmp_path):
    x, y, names = _data(4)
    grader = train_grader(x, y, names)
    grader.save(str(tmp_path / "grader.json"))
    loaded = load_grader(str(tmp_path / "grader.json"))
    loaded.check_features(names + ["extra"])
    with pytest.raises(GraderError, match="feat_4"):
        loaded.check_features(names[:4], "computed here")
    (tmp_path / "grader.npz").write_bytes((tmp_path / "grader.npz").read_bytes()[:-10])
    with pytest.raises(GraderError, match="SHA-256"):
        load_grader(str(tmp_path / "grader.json"))
    (tmp_path / "plain.json").write_text('{"hello": 1}')
    with pytest.raises(GraderError, match="not a cycledrums grader"):
        load_grader(str(tmp_path / "plain.json"))
    with pytest.raises(GraderError, match="not found"):
        load_grader(str(tmp_path / "missing.json"))


def test_rater_agreement_is_pearson_per_dimension_and_overall():
    import pandas as pd

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, size=30)
    rows = []
    for i, g in enumerate(truth):
        for rater, grade in (("a", g), ("b", np.clip(g + rng.integers(-1, 2), 0, 9)), ("c", rng.integers(0, 10))):
            rows.append({"clip_id": f"c{i}", "rater": rater, "quality": grade, "contamination": grade,
                         "credibility": grade, "time": 5})
    agreement = rater_agreement(pd.DataFrame(rows))
    assert agreement["raters"] == ["a", "b", "c"]
    q = np.array(agreement["per_dimension"]["quality"], dtype=float)
    frame = pd.DataFrame(rows).pivot(index="clip_id", columns="rater", values="quality")
    assert q[0, 1] == pytest.approx(np.corrcoef(frame["a"], frame["b"])[0, 1], abs=1e-4)
    assert q[0, 1] > 0.9 and abs(q[0, 2]) < 0.5 and q[0, 0] == 1.0
    assert agreement["per_dimension"]["time"][0][1] is None   # constant grades: no correlation
    assert agreement["clips_in_common"][0][1] == 30
