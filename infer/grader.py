"""The grader: multinomial logistic regression from objective features to human grade buckets.

Annotations CSV (one row per clip per rater; a header row is required):

    clip_id       the scored clip's id (see `cycledrums score --help`)
    rater         any name or number of the person grading
    quality       0-9  sound quality: naturalness, absence of artefacts or noise
    contamination 0-9  absence of contamination by other sources (9 = clean)
    credibility   0-9  how credible the drums are
    time          0-9  whether the drums follow the beat of the bass line
    set           optional: the GENERATED set label the clip belongs to; needed only
                  when several scored sets share clip ids

As in the paper, a clip's grade is the mean over raters and the four dimensions,
rounded to the nearest integer, and its bucket is 0 for grades 0-3, 1 for 4-5,
2 for 6-7 and 3 for 8-9.

The model is scikit-learn's StandardScaler + LogisticRegression (lbfgs, which fits
one multinomial model over all classes), evaluated by stratified k-fold
cross-validation (k = 5, fewer when a bucket has fewer clips), then refitted on all
annotated clips and saved with joblib.  A saved grader is a pickle: load only
files you trust.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from cluster.errors import UserError

DIMENSIONS = ("quality", "contamination", "credibility", "time")
REQUIRED_COLUMNS = ("clip_id", "rater") + DIMENSIONS
BUCKETS = ("0-3", "4-5", "6-7", "8-9")
N_BUCKETS = len(BUCKETS)


class AnnotationError(UserError):
    pass


def grade_to_bucket(grade: int | float) -> int:
    """0-3 -> 0, 4-5 -> 1, 6-7 -> 2, 8-9 -> 3."""
    g = int(grade)
    if not 0 <= g <= 9:
        raise ValueError(f"grade must be within 0-9, got {grade}")
    return 0 if g <= 3 else (g - 2) // 2


def round_grade(mean: float) -> int:
    return int(math.floor(mean + 0.5))  # half up, not Python's banker's rounding


def read_annotations(path: str, s3_endpoint_url: str | None = None):
    """Read and check an annotations CSV; returns a pandas DataFrame (one row per clip and rater)."""
    import pandas as pd

    from pipelines.storage import fsspec_filesystem

    fs, inner = fsspec_filesystem(path, s3_endpoint_url)
    if not fs.exists(inner):
        raise AnnotationError(f"annotations file not found: {path}")
    with fs.open(inner, "rb") as f:
        try:
            df = pd.read_csv(io.BytesIO(f.read()), dtype={"clip_id": str, "rater": str, "set": str})
        except Exception as err:
            raise AnnotationError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise AnnotationError(f"{path}: missing columns {missing}; expected {list(REQUIRED_COLUMNS)} "
                              f"(+ optional 'set')")
    if df.empty:
        raise AnnotationError(f"{path}: no annotation rows")
    blank = df["clip_id"].isna() | (df["clip_id"].astype(str).str.strip() == "")
    if blank.any():  # refused, not dropped: a grade without its clip is a data error
        raise AnnotationError(f"{path}: data row {int(np.flatnonzero(blank.to_numpy())[0]) + 1} "
                              f"has a blank clip_id ({int(blank.sum())} such row(s))")
    for dim in DIMENSIONS:
        values = pd.to_numeric(df[dim], errors="coerce")
        bad = values.isna() | (values % 1 != 0) | (values < 0) | (values > 9)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise AnnotationError(f"{path}: column {dim!r} must hold integers 0-9; "
                                  f"data row {row + 1} has {df[dim].iloc[row]!r}")
        df[dim] = values.astype(int)
    return df


def clip_grades(annotations, by_set: bool):
    """One row per clip: mean grade over raters and dimensions, rounded grade, bucket, rater count."""
    keys = ["set", "clip_id"] if by_set else ["clip_id"]
    per_row = annotations[list(DIMENSIONS)].mean(axis=1)
    grouped = annotations.assign(_grade=per_row).groupby(keys, sort=True)
    out = grouped.agg(grade_mean=("_grade", "mean"), raters=("rater", "nunique")).reset_index()
    out["grade"] = out["grade_mean"].map(round_grade)
    out["bucket"] = out["grade"].map(grade_to_bucket)
    return out


@dataclass
class Grader:
    model: object                    # fitted sklearn Pipeline
    feature_names: list[str]
    cv_accuracy: float | None = None
    confusion: list[list[int]] | None = None
    n_train: int = 0
    class_counts: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, f] -> (buckets [n], probabilities [n, 4]; 0 for buckets absent in training)."""
        probs = np.zeros((len(features), N_BUCKETS))
        if len(features):
            p = self.model.predict_proba(np.asarray(features, np.float64))
            probs[:, self.model.classes_.astype(int)] = p
        return probs.argmax(axis=1), probs

    def save(self, path: str, s3_endpoint_url: str | None = None) -> None:
        import joblib

        from pipelines.storage import fsspec_filesystem

        buf = io.BytesIO()
        joblib.dump(self, buf)
        fs, inner = fsspec_filesystem(path, s3_endpoint_url)
        with fs.open(inner, "wb") as f:
            f.write(buf.getvalue())


def load_grader(path: str, s3_endpoint_url: str | None = None) -> Grader:
    import joblib

    from pipelines.storage import fsspec_filesystem

    fs, inner = fsspec_filesystem(path, s3_endpoint_url)
    if not fs.exists(inner):
        raise FileNotFoundError(f"grader not found: {path}")
    with fs.open(inner, "rb") as f:
        grader = joblib.load(io.BytesIO(f.read()))
    if not isinstance(grader, Grader):
        raise ValueError(f"{path}: not a cycledrums grader (got {type(grader).__name__})")
    return grader


def _new_model(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def train_grader(features: np.ndarray, buckets: np.ndarray, feature_names: list[str],
                 c: float = 1.0, seed: int = 0) -> Grader:
    """Cross-validate, then fit on everything.  Needs >= 2 buckets with >= 2 clips each."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.asarray(features, np.float64)
    y = np.asarray(buckets, int)
    counts = np.bincount(y, minlength=N_BUCKETS)
    present = counts[counts > 0]
    if len(present) < 2:
        raise AnnotationError(f"annotated clips fall in {len(present)} bucket(s); a grader needs at least 2")
    folds = int(min(5, present.min()))
    cv_accuracy, confusion = None, None
    if folds >= 2:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        predicted = cross_val_predict(_new_model(c, seed), x, y, cv=cv)
        cv_accuracy = float((predicted == y).mean())
        confusion = confusion_matrix(y, predicted, labels=list(range(N_BUCKETS))).tolist()
    model = _new_model(c, seed).fit(x, y)
    return Grader(model=model, feature_names=list(feature_names), cv_accuracy=cv_accuracy,
                  confusion=confusion, n_train=len(y), class_counts=counts.tolist())
