"""After the `cycledrums score` job: density features, Fréchet distances, sanity ladder, grader, outputs.

Runs on the driver over what it kept of the job's rows (infer.score_rows; their columns:
infer.score_stages).
"""
from __future__ import annotations

import json
import logging
import numpy as np

from infer.inception import LAYERS
from infer.score_inputs import GeneratedSet, ReferenceSet, ScoreConfig, ScoreError
from infer.score_rows import StreamedRows
from infer.features import stoi_names
from infer.score_stages import DENSITY_FEATURES, SCALAR_FEATURES, mel_feature_names
from pipelines.storage import write_bytes

log = logging.getLogger(__name__)


def ladder_metrics() -> list[str]:
    return list(SCALAR_FEATURES) + list(DENSITY_FEATURES)


def grader_feature_names(n_mels: int, passing: list[str] | None) -> list[str]:
    """The grader's inputs: every feature, or (after a sanity ladder) only the passing ones.

    The 256 STOI-like correlations come with stoi_mean: in when it passes.
    """
    names = mel_feature_names(n_mels) + list(DENSITY_FEATURES)
    if passing is None:
        return names
    keep = set(passing)
    return [n for n in names if n in keep or (n.startswith("stoi_") and n != "stoi_mean" and "stoi_mean" in keep)]


def _densities_and_distances(table, rows: StreamedRows, labels: list[str]) -> dict:
    """Adds density_<layer> columns; returns {set: {layer: Fréchet record}}."""
    from infer.density import frechet_record
    from infer.score_rows import densities

    real_fits = {layer: {} for layer in LAYERS}  # {layer: {covariance: Gaussian of the real clips}}
    for layer, values in densities(rows, real_fits).items():
        table[f"density_{layer}"] = values
    frechet: dict[str, dict[str, dict]] = {label: {} for label in labels}
    for layer in LAYERS:
        real = rows.real(layer)
        for label in labels:
            frechet[label][layer] = frechet_record(real, rows.group(layer, label), real_fits[layer])
    return frechet


def _scored_table(rows: StreamedRows, sets: list[GeneratedSet]):
    """(the light clips table with its densities, the baselines' labels, {set: {layer: Fréchet record}});
    the STOI-like vectors stay in the features spill (infer.clips_table)."""
    if rows.usable_real < 2:
        raise ScoreError(f"need at least 2 usable reference clips for the real-drum Gaussians, "
                         f"got {rows.usable_real}")
    table = _clips_table(rows.scored)
    baseline_labels = sorted(set(table.loc[table["baseline"], "set"]))
    frechet = _densities_and_distances(table, rows, [s.label for s in sets] + baseline_labels)
    table["seconds_features"] = rows.scored["seconds_features"]
    table["seconds_inception"] = rows.scored["seconds_inception"]
    return table, baseline_labels, frechet


def _clips_table(scored: dict):
    import pandas as pd

    table = pd.DataFrame({"set": scored["set"].astype(str), "clip_id": scored["clip_id"].astype(str),
                          "reference_id": scored["reference_id"].astype(str),
                          "baseline": scored["kind"] == "baseline",
                          "generated": scored["generated"].astype(str),
                          "drums_active": scored["drums_active"].astype(bool)})
    scalars = pd.DataFrame(scored["scalars"], columns=list(SCALAR_FEATURES))
    return pd.concat([table, scalars], axis=1)


def _error_rows(cols: dict, sets: list[GeneratedSet], reference: ReferenceSet) -> list[dict]:
    """The clips that could not be scored: unmatched ones, and the job's rows with an error (`cols`)."""
    errors = [{"set": s.label, "clip_id": c.clip_id, "input": c.uri,
               "reason": f"no reference clip matches id {c.clip_id!r} in {reference.uri}"}
              for s in sets for c in s.clips if c.clip_id not in s.matches]
    bad = cols["error"] != ""
    for kind, label, clip_id, uri, reason in zip(cols["kind"][bad], cols["set"][bad], cols["clip_id"][bad],
                                                  cols["generated"][bad], cols["error"][bad]):
        errors.append({"set": str(label), "clip_id": str(clip_id),
                       "input": str(uri) if kind == "generated" else reference.uri, "reason": str(reason)})
    return errors


def finish(rows: StreamedRows, sets: list[GeneratedSet], reference: ReferenceSet, cfg: ScoreConfig,
           grader, annotations, job_seconds: float, resources: dict | None = None,
           before_write=None, extra: dict | None = None) -> dict:
    """Tables, summary, plots and report from the job's rows (their spill files deleted at the
    end).  `before_write(table, ladder)` runs once the clips table is final but not yet written
    (evaluate writes the report clips' audio there); `extra` is added to the summary."""
    try:
        return _finish(rows, sets, reference, cfg, grader, annotations, job_seconds, resources, before_write,
                       extra)
    finally:
        rows.close()


def _finish(rows: StreamedRows, sets: list[GeneratedSet], reference: ReferenceSet, cfg: ScoreConfig,
            grader, annotations, job_seconds: float, resources: dict | None, before_write, extra: dict | None) -> dict:
    import pyarrow as pa

    from infer.clips_table import write_clips_table
    from infer.ladder import passing_metrics, sanity_ladder
    from infer.job_io import join_uri, write_table

    params = reference.params
    table, baseline_labels, frechet = _scored_table(rows, sets)
    labels = [s.label for s in sets] + baseline_labels
    ladder = sanity_ladder(table, ladder_metrics())

    names = grader_feature_names(params.n_mels, passing_metrics(ladder))
    grader_summary, grader = _apply_grader(table, rows, sets, grader, annotations, cfg, names, params.n_mels)
    errors = _error_rows(rows.errors, sets, reference)
    errors_table = pa.Table.from_pylist(errors, schema=pa.schema(
        [("set", pa.string()), ("clip_id", pa.string()), ("input", pa.string()), ("reason", pa.string())]))

    if before_write is not None:
        before_write(table, ladder)
    outputs = write_clips_table(table, rows, params.n_mels, cfg.output, cfg.s3_endpoint_url)
    outputs += write_table(errors_table, cfg.output, "errors", cfg.s3_endpoint_url)
    if grader is not None and cfg.annotations and not cfg.grader:
        path = join_uri(cfg.output, "grader.json")
        outputs += grader.save(path, cfg.s3_endpoint_url)
        grader_summary["path"] = path
    outputs += _write_plots(table, labels, cfg)
    human = human_grades(table, annotations, labels) if annotations is not None else None
    sheet = None
    if cfg.grading_sheet:
        from infer.grading_sheet import write_grading_sheet

        sheet = write_grading_sheet(table, labels, reference, media_settings(cfg, params), cfg.grading_sheet)
        outputs += sheet.pop("outputs")

    summary = {
        "reference": {"uri": reference.uri, "kind": reference.kind, "clips": len(reference.clip_ids),
                      "usable": rows.usable_real, "density_cross_fitted": rows.cross_fitted},
        "sets": {s.label: _set_summary(table, s.label, frechet[s.label], errors, uri=s.uri, clips=len(s.clips),
                                       matched=len(s.matches))
                 for s in sets},
        "baselines": {label: _set_summary(table, label, frechet[label], errors, baseline=True)
                      for label in baseline_labels},
        "sanity_ladder": ladder,
        "grader": grader_summary,
        "human_grades": human,
        "grading_sheet": sheet,
        "clips_scored": int((~table["baseline"]).sum()),
        "errors": len(errors),
        "seconds": {"job": round(job_seconds, 3),
                    "features_total": float(table["seconds_features"].sum()),
                    "inception_total": float(table["seconds_inception"].sum())},
        "clips_per_second": round(int((~table["baseline"]).sum()) / job_seconds, 3) if job_seconds > 0 else None,
        "mel_params": params.to_dict(),
        "device": (resources or {}).get("device"), "resources": resources or {},
        "outputs": outputs,
        **(extra or {}),
    }
    summary_path = join_uri(cfg.output, "summary.json")
    summary["outputs"].append(summary_path)
    if cfg.report_clips:
        summary["outputs"].append(join_uri(cfg.output, "report.html"))
    write_bytes(summary_path, json.dumps(summary, indent=2).encode(), cfg.s3_endpoint_url)
    if cfg.report_clips:
        _write_report(table, summary, reference, sets, cfg)
    return summary


def media_settings(cfg: ScoreConfig, params):
    """How the report and the grading sheet make their media: with this job's settings."""
    from infer.media import MediaSettings

    return MediaSettings(params, cfg.griffin_lim_iters, cfg.seed, cfg.output, cfg.s3_endpoint_url)


def _write_report(table, summary: dict, reference: ReferenceSet, sets: list[GeneratedSet], cfg: ScoreConfig) -> None:
    import time

    from infer.html_report import write_report

    start = time.perf_counter()
    written = write_report(table, summary, reference, sets, media_settings(cfg, reference.params), cfg.report_clips)
    log.info("report.html and %d media files written in %.1f s", len(written) - 1, time.perf_counter() - start)


def _set_summary(table, label: str, frechet: dict, errors: list[dict], uri: str = "", clips: int | None = None,
                 matched: int | None = None, baseline: bool = False) -> dict:
    rows = table[table["set"] == label]
    out = {
        "baseline": baseline,
        "uri": uri,
        "clips": len(rows) if clips is None else clips,
        "matched": len(rows) if matched is None else matched,
        "scored": int(len(rows)),
        "errors": sum(e["set"] == label for e in errors),
        "frechet_distance": frechet,
        "mean": {k: float(rows[k].mean()) if len(rows) else None
                 for k in list(SCALAR_FEATURES) + list(DENSITY_FEATURES)},
    }
    # How far each clip's level is off, as the sanity ladder judges it: a signed mean lets clips
    # too loud and too quiet cancel out (another clip's real drums on held-out grooves: -0.3 dB
    # signed, 8.1 dB off per clip).
    out["mean"]["level_error_db"] = float(rows["level_diff_db"].abs().mean()) if len(rows) else None
    if "bucket_pred" in rows:
        out["predicted_bucket_histogram"] = np.bincount(rows["bucket_pred"].astype(int), minlength=4).tolist()
    if "bucket" in rows:
        annotated = rows["bucket"].dropna().astype(int)
        out["annotated_bucket_histogram"] = np.bincount(annotated, minlength=4).tolist()
        out["annotated_grade_histogram"] = np.bincount(rows["grade"].dropna().astype(int), minlength=10).tolist()
    return out


# ---------------------------------------------------------------- grader

GRADE_COLUMNS = ["grade_mean", "raters", "grade", "bucket"] + [f"grade_{d}" for d in
                                                                  ("quality", "contamination", "credibility", "time")]


def human_grades(table, annotations, labels: list[str]) -> dict:
    """What the paper reports of its raters: their agreement (Table I), each set's grade distribution
    (Fig. 3) and whether the baselines anchor the scale (true drums on top, noise and silence at the bottom)."""
    from infer.baselines import NOISE, OTHER, SILENCE, TRUE
    from infer.grader import rater_agreement

    graded = table[table["grade"].notna()] if "grade" in table else table.iloc[:0]
    distribution = {}
    for label in labels:
        rows = graded[graded["set"] == label]
        if len(rows):
            distribution[label] = {
                "clips": int(len(rows)), "mean_grade": round(float(rows["grade_mean"].mean()), 3),
                "grade_histogram": np.bincount(rows["grade"].astype(int), minlength=10).tolist(),
                "bucket_histogram": np.bincount(rows["bucket"].astype(int), minlength=4).tolist(),
                "mean_per_dimension": {d: round(float(rows[f"grade_{d}"].mean()), 3)
                                       for d in ("quality", "contamination", "credibility", "time")}}
    means = {label: d["mean_grade"] for label, d in distribution.items()}
    anchors = {"means": means}
    if TRUE in means:
        anchors["true_drums_top"] = all(means[TRUE] >= m for m in means.values())
    bottom = [b for b in (NOISE, SILENCE) if b in means]
    if bottom:
        others = [m for label, m in means.items() if label not in bottom]
        anchors["noise_silence_bottom"] = all(means[b] <= m for b in bottom for m in others)
    if TRUE in means and OTHER in means:
        anchors["true_above_other_clip"] = means[TRUE] > means[OTHER]
    return {"raters": sorted(annotations["rater"].astype(str).unique()),
            "annotation_rows": int(len(annotations)), "clips_graded": int(len(graded)),
            "agreement": rater_agreement(annotations), "grade_distribution": distribution, "anchors": anchors}


def _join_annotations(table, sets, annotations):
    """Add grade_mean / grade / bucket / raters columns (NaN where a clip has no annotation)."""
    from infer.grader import AnnotationError, clip_grades

    by_set = "set" in annotations.columns
    if not by_set:
        ids = table.loc[~table["baseline"], "clip_id"]
        shared = ids[ids.duplicated()].unique()
        if len(shared):
            raise AnnotationError(
                f"clip ids {list(shared[:5])} occur in several GENERATED sets; add a 'set' column "
                f"to the annotations naming the set ({', '.join(s.label for s in sets)})")
    grades = clip_grades(annotations, by_set)
    keys = ["set", "clip_id"] if by_set else ["clip_id"]
    generated = table[~table["baseline"]]
    merged = table.merge(grades, on=keys, how="left")
    if not by_set:  # a bare clip id names the generated clip; with a set, baselines are graded too (grade.html)
        merged.loc[merged["baseline"].to_numpy(), GRADE_COLUMNS] = np.nan
    unmatched = len(grades) - int((generated if not by_set else table).merge(grades, on=keys, how="inner").shape[0])
    if unmatched:
        log.warning("%d annotated clips are not among the scored clips (ids or set labels differ)", unmatched)
    return merged, unmatched


def _apply_grader(table, rows: StreamedRows, sets, grader, annotations, cfg: ScoreConfig, names: list[str],
                  n_mels: int):
    """Train (annotations), or load (--grader) and evaluate, then predict every clip in place.
    The grader's STOI-like inputs are read from the features spill (infer.clips_table)."""
    from infer.clips_table import grader_matrix
    from infer.grader import AnnotationError, train_grader

    summary: dict = {"source": None, "features": len(names)}
    if annotations is not None:
        try:
            merged, unmatched = _join_annotations(table, sets, annotations)
        except AnnotationError as err:
            raise ScoreError(str(err)) from err
        for column in GRADE_COLUMNS:
            table[column] = merged[column].to_numpy()
        summary["annotated_clips"] = int(table["bucket"].notna().sum())
        summary["annotations_unmatched"] = unmatched
    if grader is None and annotations is not None:
        annotated = np.flatnonzero(table["bucket"].notna().to_numpy())
        x = grader_matrix(table.iloc[annotated], rows.features_of(annotated), names, n_mels)
        try:
            grader = train_grader(x, table["bucket"].iloc[annotated].astype(int).to_numpy(), names,
                                  c=cfg.grader_c, seed=cfg.seed)
        except AnnotationError as err:
            raise ScoreError(str(err)) from err
        counts = np.asarray(grader.class_counts)
        summary.update(source="trained", cv_accuracy=grader.cv_accuracy, confusion_matrix=grader.confusion,
                       trained_on=grader.n_train, bucket_counts=grader.class_counts,
                       majority_baseline=float(counts.max() / max(1, counts.sum())),
                       confusion_rows="true bucket", confusion_columns="predicted bucket",
                       feature_names=[n for n in names if not n.startswith("stoi_") or n == "stoi_mean"])
    elif grader is not None:
        from infer.grader import GraderError

        try:
            grader.check_features([str(c) for c in table.columns] + stoi_names(n_mels), "computed by this job")
        except GraderError as err:
            raise ScoreError(f"--grader {cfg.grader}: {err}") from err
        names = grader.feature_names
        summary.update(source=cfg.grader, cv_accuracy_at_training=grader.cv_accuracy, features=len(names))
    if grader is None:
        return summary, None
    buckets, probs = predict_rows(grader, table, rows, names, n_mels)
    table["bucket_pred"] = buckets
    for b in range(probs.shape[1]):
        table[f"prob_{b}"] = probs[:, b]
    if annotations is not None and cfg.grader:
        annotated = table["bucket"].notna().to_numpy()
        if annotated.any():
            from sklearn.metrics import confusion_matrix

            truth = table.loc[annotated, "bucket"].astype(int).to_numpy()
            summary["accuracy_on_annotations"] = float((buckets[annotated] == truth).mean())
            summary["confusion_matrix"] = confusion_matrix(truth, buckets[annotated], labels=[0, 1, 2, 3]).tolist()
    return summary, grader


# Clips past which the grader is applied in Ray tasks (blocks of PREDICT_BLOCK clips) rather than
# in one vectorised call on the driver.
RAY_PREDICT_CLIPS = 5000
PREDICT_BLOCK = 2048


def _predict_block(batch: dict, grader) -> dict:
    x = np.stack([batch[f"f{i}"] for i in range(len(grader.feature_names))], axis=1)
    buckets, probs = grader.predict(x)
    return {"row": batch["row"], "bucket": buckets, "probs": probs}


def predict_rows(grader, table, rows: StreamedRows, names: list[str], n_mels: int):
    """(bucket, probabilities) of every scored row, its inputs read a group of rows at a time: a group
    of RAY_PREDICT_CLIPS or more goes to Ray tasks (predict_clips), so the driver never holds them all."""
    from infer.clips_table import grader_chunks

    from infer.grader import N_BUCKETS

    buckets, probs = [np.zeros(0, int)], [np.zeros((0, N_BUCKETS))]
    for _, x in grader_chunks(table, rows, names, n_mels, chunk=max(RAY_PREDICT_CLIPS, PREDICT_BLOCK)):
        b, p = predict_clips(grader, x)
        buckets.append(b)
        probs.append(p)
    return np.concatenate(buckets), np.concatenate(probs)


def predict_clips(grader, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grader on every clip: with the job's Ray up and many clips (the paper's 14,000), as a
    Ray Data map over blocks of the features (the grader travels as plain arrays); else in process."""
    import ray

    if not (ray.is_initialized() and len(x) >= RAY_PREDICT_CLIPS):
        return grader.predict(x)
    import pyarrow as pa
    import ray.data

    columns = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    columns["row"] = np.arange(len(x))
    table = pa.table(columns)
    ds = ray.data.from_arrow([table.slice(i, PREDICT_BLOCK) for i in range(0, len(x), PREDICT_BLOCK)])
    out = ds.map_batches(_predict_block, batch_format="numpy", batch_size=PREDICT_BLOCK, num_cpus=0.5,
                         fn_kwargs={"grader": grader})
    rows, buckets, probs = [], [], []
    for batch in out.iter_batches(batch_format="numpy", batch_size=None):
        rows.append(batch["row"])
        buckets.append(batch["bucket"])
        probs.append(batch["probs"])
    order = np.argsort(np.concatenate(rows), kind="stable")
    return np.concatenate(buckets)[order], np.concatenate(probs)[order]


# ---------------------------------------------------------------- plots


def _write_plots(table, labels: list[str], cfg: ScoreConfig) -> list[str]:
    from infer.plots import bucket_histogram_png, feature_histograms_png, grade_histogram_png
    from infer.job_io import join_uri

    written = []
    if "bucket_pred" in table:
        per_set = {l: np.bincount(table.loc[table["set"] == l, "bucket_pred"].astype(int), minlength=4)
                   for l in labels}
        path = join_uri(cfg.output, "buckets.png")
        write_bytes(path, bucket_histogram_png(per_set, "predicted grade bucket per clip"), cfg.s3_endpoint_url)
        written.append(path)
    if "grade" in table and table["grade"].notna().any():
        graded = [l for l in labels if table.loc[table["set"] == l, "grade"].notna().any()]
        per_set = {l: np.bincount(table.loc[(table["set"] == l) & table["grade"].notna(), "grade"].astype(int),
                                  minlength=10) for l in graded}
        path = join_uri(cfg.output, "grades.png")
        write_bytes(path, grade_histogram_png(per_set, "annotated grades"), cfg.s3_endpoint_url)
        written.append(path)
    names = ["stoi_mean", "rhythm_pattern", "density_pool3"]
    per_set = {l: {n: table.loc[table["set"] == l, n].to_numpy() for n in names} for l in labels}
    path = join_uri(cfg.output, "features.png")
    write_bytes(path, feature_histograms_png(per_set, names), cfg.s3_endpoint_url)
    written.append(path)
    return written
