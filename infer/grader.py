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
annotated clips.

A saved grader is plain data, safe to share: `grader.json` (format, feature names,
bucket edges, classes, training figures, library versions, the SHA-256 of its arrays)
and `grader.npz` beside it (the scaler's mean and scale, the coefficients and
intercepts), read with `np.load(allow_pickle=False)`.  Predictions are computed here
with numpy from those arrays (the same numbers as scikit-learn's predict_proba).  No
pickle is ever loaded: a `.joblib` / `.pkl` file, or any file whose bytes are a pickle,
is refused before it is read any further.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
from dataclasses import dataclass, field

import numpy as np

from cluster.errors import UserError

DIMENSIONS = ("quality", "contamination", "credibility", "time")
REQUIRED_COLUMNS = ("clip_id", "rater") + DIMENSIONS
BUCKETS = ("0-3", "4-5", "6-7", "8-9")
N_BUCKETS = len(BUCKETS)


BUCKET_EDGES = ((0, 3), (4, 5), (6, 7), (8, 9))
GRADER_FORMAT = "cycledrums-grader"
GRADER_FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle", ".pck", ".sav")


class AnnotationError(UserError):
    pass


class GraderError(UserError):
    """A grader file that cannot be used (missing, a pickle, damaged, for other features)."""


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
    out = grouped.agg(grade_mean=("_grade", "mean"), raters=("rater", "nunique"),
                      **{f"grade_{d}": (d, "mean") for d in DIMENSIONS}).reset_index()
    out["grade"] = out["grade_mean"].map(round_grade)
    out["bucket"] = out["grade"].map(grade_to_bucket)
    return out



@dataclass
class Grader:
    """A fitted grader as plain arrays: z = (x - mean) / scale; logits = z @ coef.T + intercept."""

    feature_names: list[str]
    mean: np.ndarray                 # [f]   StandardScaler.mean_
    scale: np.ndarray                # [f]   StandardScaler.scale_
    coef: np.ndarray                 # [k, f] (k = 1 when two buckets were seen, else one row per class)
    intercept: np.ndarray            # [k]
    classes: np.ndarray              # [c]   the buckets seen in training
    cv_accuracy: float | None = None
    confusion: list[list[int]] | None = None
    n_train: int = 0
    class_counts: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    c: float = 1.0
    seed: int = 0
    versions: dict = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, f] -> (buckets [n], probabilities [n, 4]; 0 for buckets absent in training)."""
        x = np.asarray(features, np.float64)
        probs = np.zeros((len(x), N_BUCKETS))
        if len(x):
            logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
            if len(self.classes) == 2:  # scikit-learn's binary case: one logit for the second class
                p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
                p = np.stack([1.0 - p1, p1], axis=1)
            else:
                logits = logits - logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
            probs[:, self.classes.astype(int)] = p
        return probs.argmax(axis=1), probs

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": np.asarray(self.mean, np.float64), "scale": np.asarray(self.scale, np.float64),
                "coef": np.asarray(self.coef, np.float64), "intercept": np.asarray(self.intercept, np.float64),
                "classes": np.asarray(self.classes, np.int64)}

    def save(self, path: str, s3_endpoint_url: str | None = None) -> list[str]:
        """Write PATH (grader.json) and its arrays beside it (grader.npz); returns both URIs."""
        from pipelines.storage import write_bytes

        if not path.endswith(".json"):
            raise ValueError(f"a grader is saved as a .json file (its arrays in a .npz beside it), got {path}")
        buf = io.BytesIO()
        np.savez(buf, **self.arrays())
        arrays = buf.getvalue()
        arrays_path = path[:-len(".json")] + ".npz"
        meta = {
            "format": GRADER_FORMAT, "format_version": GRADER_FORMAT_VERSION,
            "model": "StandardScaler + multinomial LogisticRegression (scikit-learn, lbfgs)",
            "feature_names": list(self.feature_names), "buckets": list(BUCKETS),
            "bucket_edges": [list(e) for e in BUCKET_EDGES], "classes": [int(c) for c in self.classes],
            "cv_accuracy": self.cv_accuracy, "confusion_matrix": self.confusion, "n_train": int(self.n_train),
            "class_counts": [int(c) for c in self.class_counts], "c": float(self.c), "seed": int(self.seed),
            "versions": self.versions or library_versions(),
            "arrays": posixpath.basename(arrays_path), "arrays_sha256": hashlib.sha256(arrays).hexdigest(),
        }
        write_bytes(arrays_path, arrays, s3_endpoint_url)
        write_bytes(path, json.dumps(meta, indent=2).encode(), s3_endpoint_url)
        return [path, arrays_path]

    def check_features(self, available: list[str], what: str = "the features scored here") -> None:
        """Refuse (GraderError) when the grader's inputs are not among `available`."""
        have = set(available)
        missing = [n for n in self.feature_names if n not in have]
        if missing:
            raise GraderError(
                f"the grader was trained on features that are not {what}: {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''} ({len(missing)} of its {len(self.feature_names)}); "
                f"retrain it with --annotations")


def library_versions() -> dict:
    from importlib import metadata

    out = {"numpy": np.__version__}
    for name in ("scikit-learn", "cycledrums"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _looks_like_pickle(data: bytes) -> bool:
    """Protocol 2+ pickles start with PROTO (0x80); joblib's compressed files with a zlib / gzip /
    lzma / bz2 header; protocol 0-1 pickles are opcode streams ending in STOP ('.')."""
    head = data[:6]
    return (head[:1] == b"\x80" or head[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b")
            or head == b"\xfd7zXZ" or head[:3] == b"BZh" or data.rstrip()[-1:] == b"." and head[:1] in b"(}]cI")


def load_grader(path: str, s3_endpoint_url: str | None = None) -> Grader:
    """Read grader.json and its .npz; never unpickles.  Raises GraderError with one line."""
    from pipelines.storage import fsspec_filesystem, read_bytes

    lower = path.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise GraderError(f"--grader {path}: a pickle file ({posixpath.splitext(lower)[1]}) is refused unread "
                          f"(loading a pickle can run any code); give a grader.json written by "
                          f"`cycledrums score --annotations`")
    if lower.endswith(".npz"):
        raise GraderError(f"--grader {path}: give the grader's .json file (its .npz is found beside it)")
    fs, inner = fsspec_filesystem(path, s3_endpoint_url)
    if not fs.exists(inner):
        raise GraderError(f"--grader {path}: file not found")
    data = read_bytes(path, s3_endpoint_url)
    if _looks_like_pickle(data):
        raise GraderError(f"--grader {path}: the file is a pickle (an old grader.joblib?) and is refused unread "
                          f"(loading a pickle can run any code); retrain with --annotations to get grader.json")
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise GraderError(f"--grader {path}: not a grader JSON file ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != GRADER_FORMAT:
        raise GraderError(f"--grader {path}: not a cycledrums grader (no \"format\": \"{GRADER_FORMAT}\")")
    if meta.get("format_version") != GRADER_FORMAT_VERSION:
        raise GraderError(f"--grader {path}: grader format version {meta.get('format_version')!r}; this version "
                          f"reads {GRADER_FORMAT_VERSION}")
    if [list(e) for e in meta.get("bucket_edges", [])] != [list(e) for e in BUCKET_EDGES]:
        raise GraderError(f"--grader {path}: bucket edges {meta.get('bucket_edges')} differ from this version's "
                          f"{[list(e) for e in BUCKET_EDGES]}")
    arrays_path = posixpath.join(posixpath.dirname(path), str(meta.get("arrays", "")))
    try:
        raw = read_bytes(arrays_path, s3_endpoint_url)
    except (FileNotFoundError, OSError) as err:
        raise GraderError(f"--grader {path}: its arrays file {arrays_path} cannot be read ({err})") from err
    if hashlib.sha256(raw).hexdigest() != meta.get("arrays_sha256"):
        raise GraderError(f"--grader {path}: {arrays_path} is not the arrays file this grader was saved with "
                          f"(SHA-256 differs)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("mean", "scale", "coef", "intercept", "classes")}
    except (ValueError, KeyError, OSError) as err:
        raise GraderError(f"--grader {path}: damaged arrays file {arrays_path} ({err})") from err
    names = [str(n) for n in meta.get("feature_names", [])]
    f, k = len(names), len(arrays["classes"])
    rows = 1 if k == 2 else k
    if not (arrays["mean"].shape == arrays["scale"].shape == (f,) and arrays["coef"].shape == (rows, f)
            and arrays["intercept"].shape == (rows,) and k >= 2):
        raise GraderError(f"--grader {path}: arrays do not fit its {f} feature names and {k} classes")
    return Grader(feature_names=names, mean=arrays["mean"], scale=arrays["scale"], coef=arrays["coef"],
                  intercept=arrays["intercept"], classes=arrays["classes"].astype(np.int64),
                  cv_accuracy=meta.get("cv_accuracy"), confusion=meta.get("confusion_matrix"),
                  n_train=int(meta.get("n_train", 0)), class_counts=list(meta.get("class_counts", [])),
                  c=float(meta.get("c", 1.0)), seed=int(meta.get("seed", 0)), versions=meta.get("versions", {}))


def _new_model(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def from_sklearn(model, feature_names: list[str], **info) -> Grader:
    """The plain arrays of a fitted StandardScaler + LogisticRegression pipeline."""
    scaler, logistic = model[0], model[-1]
    return Grader(feature_names=list(feature_names), mean=np.asarray(scaler.mean_, np.float64),
                  scale=np.asarray(scaler.scale_, np.float64), coef=np.asarray(logistic.coef_, np.float64),
                  intercept=np.asarray(logistic.intercept_, np.float64),
                  classes=np.asarray(logistic.classes_, np.int64), versions=library_versions(), **info)


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
    return from_sklearn(model, feature_names, cv_accuracy=cv_accuracy, confusion=confusion, n_train=len(y),
                        class_counts=counts.tolist(), c=float(c), seed=int(seed))


# ---------------------------------------------------------------- raters


def rater_agreement(annotations) -> dict:
    """The raters' Pearson correlation matrices (the paper's Table I), per dimension and overall.

    Per pair of raters, over the clips both graded; "overall" correlates each rater's mean of the
    four dimensions per clip.  None where fewer than 3 clips are shared or a rater gave one
    grade to all of them (no correlation is defined)."""
    keys = ["set", "clip_id"] if "set" in annotations.columns else ["clip_id"]
    raters = sorted(annotations["rater"].astype(str).unique())
    frame = annotations.assign(rater=annotations["rater"].astype(str),
                               overall=annotations[list(DIMENSIONS)].mean(axis=1))
    out = {"raters": raters, "method": "Pearson r over the clips both raters graded",
           "per_dimension": {}, "overall": None, "clips_in_common": None, "mean_pairwise": {}}
    for dim in list(DIMENSIONS) + ["overall"]:
        table = frame.pivot_table(index=keys, columns="rater", values=dim, aggfunc="mean")
        matrix, common = [], []
        for a in raters:
            row, crow = [], []
            for b in raters:
                both = table[[a, b]].dropna() if a in table and b in table else table.iloc[:0, :0]
                crow.append(int(len(both)))
                if a == b:
                    row.append(1.0 if len(both) else None)
                    continue
                x, y = both[a].to_numpy(float), both[b].to_numpy(float)
                if len(both) < 3 or np.std(x) == 0 or np.std(y) == 0:
                    row.append(None)
                else:
                    row.append(round(float(np.corrcoef(x, y)[0, 1]), 4))
            matrix.append(row)
            common.append(crow)
        pairs = [matrix[i][j] for i in range(len(raters)) for j in range(i + 1, len(raters))
                 if matrix[i][j] is not None]
        out["mean_pairwise"][dim] = round(float(np.mean(pairs)), 4) if pairs else None
        if dim == "overall":
            out["overall"], out["clips_in_common"] = matrix, common
        else:
            out["per_dimension"][dim] = matrix
    return out
