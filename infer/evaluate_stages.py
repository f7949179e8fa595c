"""The stages of `cycledrums evaluate` (infer/evaluate.py builds them into one Ray Data job): the
models' input beside each reference row, the drums each model generates and renders as generate
would, the features and baselines, the fused generator + Inception actor, and the audio of the
clips the report shows.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from infer.evaluate import EvaluateJob, Model

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stages


GENERATOR_SCRATCH = ("drums_image", "drums_audio", "bass_audio")


def model_input_batch(batch: dict, inputs: dict, kind: str, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Reference rows + generate's decode columns for each clip's bass (a row that cannot be
    generated, no bass or no usable reference, gets `error` and no input image)."""
    from infer.generate_decode import decode_batch
    from infer.generate_rows import new_row, to_columns, to_rows

    ids = [str(c) for c in batch["clip_id"]]
    if not ids:
        return batch
    if kind == "parquet":
        decoded = _parquet_model_input(batch, ids, inputs, params_dict)
    else:
        todo = [i for i, cid in enumerate(ids) if cid in inputs and not batch["ref_error"][i]]
        got = decode_batch({"clip_id": np.array([ids[i] for i in todo], dtype=object),
                            "uri": np.array([inputs[ids[i]] for i in todo], dtype=object)},
                           params_dict, s3_endpoint_url) if todo else {}
        by_index = dict(zip(todo, to_rows(got))) if todo else {}
        _stop_on_storage_fault(batch["ref_error"], by_index.values())
        decoded = [by_index.get(i) or new_row(clip_id=cid, input=inputs.get(cid, ""), stage="decode",
                                              error=_no_input(cid, inputs, batch["ref_error"][i]))
                   for i, cid in enumerate(ids)]
    columns = to_columns(decoded)
    columns.pop("clip_id")
    return {**{k: v for k, v in batch.items() if k not in columns}, **columns}


def _stop_on_storage_fault(ref_errors, decoded_rows) -> None:
    """A reference or bass file that could not be read for a storage fault (after the
    retries) stops the job with its one-line StorageError (`storage_faults_in_ray`): the
    figures are per test set, so a clip missing for a fault would change them, and a re-run
    retries it.  A bad file stays an error row."""
    from pipelines.storage import StorageError, is_storage_fault_text

    for error in ref_errors:
        if error and is_storage_fault_text(str(error)):
            raise StorageError(str(error))
    for row in decoded_rows:
        if row.get("transient"):
            raise StorageError(str(row["error"]))


def _no_input(clip_id: str, inputs: dict, ref_error: str) -> str:
    return f"no usable reference ({ref_error})" if ref_error else f"no bass for clip {clip_id}"


def _parquet_model_input(batch: dict, ids: list[str], inputs: dict, params_dict: dict) -> list[dict]:
    """A Parquet clip's model input is its bass window, the image the reference rows already hold
    (generate's parquet_batch makes the same bytes from the same column)."""
    from pipelines.mel import MelParams

    from infer.generate_decode import window_row

    p = MelParams.from_dict(params_dict)
    return [window_row(p, cid, inputs[cid], bytes(batch["bass_image"][i])) for i, cid in enumerate(ids)]


def drums_batch(batch: dict, index: int, params_dict: dict, ref_params_dict: dict, sample_rate: int | None,
                drums_gain_db: float, drums_level: str, output: str | None, s3_endpoint_url: str | None) -> dict:
    """Model `index`'s generated windows -> its drums as generate renders them -> the mel image score
    would make of that drums.wav: columns gen_image_<index>, gen_error_<index>.  With `output`, the
    clip's files are also written there (generate's layout)."""
    from pipelines.audio import AudioError
    from pipelines.mel import MelParams
    from pipelines.storage import StorageError, write_bytes

    from infer import generate_render
    from infer.generate_rows import to_rows
    from infer.job_io import join_uri, remove_quietly
    from infer.score_stages import image_bytes, mel_image_from_bytes

    params, ref_params = MelParams.from_dict(params_dict), MelParams.from_dict(ref_params_dict)
    rows = to_rows(batch)
    todo = [dict(r) for r in rows if not r["error"]]  # copies: a stitch error is this model's, not the row's
    inverted = generate_render.inverted_rows(todo, params)
    made = {}
    for r in todo:
        cid = str(r["clip_id"])
        if r["error"]:
            made[cid] = (b"", f"{r['stage']}: {r['error']}")
            continue
        try:
            contents, _ = generate_render.render_clip(r, inverted, params, sample_rate, drums_gain_db,
                                                      drums_level, s3_endpoint_url)
            image = mel_image_from_bytes(contents["drums"], f"{cid}/drums.wav", ref_params)
            for kind, data in contents.items() if output else ():
                write_bytes(join_uri(output, cid, generate_render.OUTPUT_FILES[kind]), data, s3_endpoint_url)
        except StorageError:
            raise  # stops the job with its one-line message (storage_faults_in_ray)
        except (AudioError, OSError, ValueError, RuntimeError) as err:
            if output:
                for name in generate_render.OUTPUT_FILES.values():
                    remove_quietly(join_uri(output, cid, name), s3_endpoint_url)
            made[cid] = (b"", f"render: {type(err).__name__}: {err}")
            continue
        made[cid] = (image_bytes(image), "")
    out = dict(batch)
    n = len(rows)
    for key in GENERATOR_SCRATCH:  # the next model starts from clean generator columns
        out[key] = np.array([b""] * n, dtype=object)
    out[f"gen_image_{index}"] = np.array([made.get(str(r["clip_id"]), (b"", ""))[0] for r in rows], dtype=object)
    out[f"gen_error_{index}"] = np.array([made[str(r["clip_id"])][1] if str(r["clip_id"]) in made
                                          else f"{r['stage']}: {r['error']}" for r in rows], dtype=object)
    return out


def features_batch(batch: dict, lookup: dict, index: dict, params_dict: dict, baselines: bool, seed: int) -> dict:
    """score's features stage, the generated images taken from the row instead of files."""
    from pipelines.audio import AudioError
    from pipelines.mel import MelParams

    from infer.score_stages import clip_rows, image_from_bytes

    params = MelParams.from_dict(params_dict)

    def generated_image(i: int, label: str, uri: str) -> np.ndarray:
        error = str(batch[f"gen_error_{index[label]}"][i])
        if error:
            raise AudioError(f"{uri}: {error}")
        return image_from_bytes(batch[f"gen_image_{index[label]}"][i], params.n_mels)

    return clip_rows(batch, lookup, params, baselines, seed, generated_image)


class EvaluateActor:
    """On a CPU cluster: a block of reference clips' whole evaluation, one actor per core.

    The reference decoding (`before`, for audio references), each model's input and
    generator (generate's GeneratorActor: generator, stitch, Griffin-Lim),
    its drums rendered and analysed (drums_batch), then score's features, baselines and
    Inception (score_stages.FeaturesInceptionActor).  One process per core holds all of a
    clip's heavy work: nothing waits for another pool's actors to start, and nothing
    heavy crosses the object store."""

    def __init__(self, models: list[dict], features: dict, before=(), **inception):
        from infer.generate_actor import GeneratorActor
        from infer.score_stages import FeaturesInceptionActor

        self.scorer = FeaturesInceptionActor(features=features, features_fn=features_batch, **inception)
        # [(generator actor, model_input_batch kwargs or None, drums_batch kwargs)]
        self.models = [(GeneratorActor(**m["generator"]), m["input"], m["drums"]) for m in models]
        self.before = before  # the reference decoding of audio references (score.reference_dataset)

    def __call__(self, batch: dict) -> dict:
        from infer.score_stages import run_steps

        batch = run_steps(batch, self.before)
        for generator, model_input, drums in self.models:
            if model_input:
                batch = model_input_batch(batch, **model_input)
            batch = drums_batch(generator(batch), **drums)
        return self.scorer(batch)


# ---------------------------------------------------------------- audio of the report's clips


class ReportAudio:
    """finish's `before_write`: writes the audio of the clips the report shows (or notes where the
    main job wrote all of it) and points the clips table's `generated` column at each drums.wav."""

    def __init__(self, job: EvaluateJob, pools: dict, info: dict):
        self.job, self.pools, self.info = job, pools, info

    def __call__(self, table, ladder) -> None:
        from infer.html_report import report_clips
        from infer.job_io import join_uri

        job = self.job
        n = job.score_cfg.report_clips
        shown = report_clips(table, ladder, [m.label for m in job.models], n, job.cfg.seed) if n else {}
        if job.score_cfg.grading_sheet:  # grade.html's clips need their audio too (score_summary.finish)
            from infer.grading_sheet import grading_sample

            labels = [m.label for m in job.models] + sorted(set(table.loc[table["baseline"], "set"]))
            for label, cid in grading_sample(table, labels, job.score_cfg.grading_sheet, job.cfg.seed):
                shown.setdefault(label, []).append((cid, "graded"))
        for m in job.models:
            start = time.perf_counter()
            rows = table["set"] == m.label
            table.loc[rows, "generated"] = ""
            if m.write_all:
                written = set(table.loc[rows, "clip_id"])
            else:
                written = self.generate_clips(m, sorted({cid for cid, _ in shown.get(m.label, [])}))
            has_audio = rows & table["clip_id"].isin(written)
            table.loc[has_audio, "generated"] = [join_uri(m.gen_cfg.output, cid, "drums.wav")
                                                 for cid in table.loc[has_audio, "clip_id"]]
            self.info["models"][m.label] = {
                "checkpoint": m.job["checkpoint"], "model": m.job["config"].get("model"),
                "audio": m.gen_cfg.output,
                "audio_written_for": "every clip" if m.write_all else "the report's clips",
                "audio_clips": int(has_audio.sum()),
                "seconds_report_audio": round(time.perf_counter() - start, 3) if not m.write_all else 0.0,
            }

    def generate_clips(self, m: Model, clip_ids: list[str]) -> set[str]:
        """generate's own stages on these clips only; returns the ids whose files were written."""
        from infer import generate_stages as stages
        from infer.sources import AudioClip

        if not clip_ids:
            return set()
        wanted = set(clip_ids)
        plan, _ = self.pools["generator"]  # its book has ended: the job's summary is taken
        if plan.device == "cpu":  # a handful of clips: the driver holds the model already
            manifest, errors = stages.generate_in_process(m.gen_cfg, {**m.job, "kind": self.job.reference.kind,
                                                                      "source": self.job.reference.uri},
                                                          clip_ids, self.job.inputs)
            return self._written(m, manifest, errors)
        if self.job.reference.kind == "parquet":
            ds = stages.source_dataset(m.gen_cfg, {**m.job, "kind": "parquet", "source": self.job.reference.uri},
                                       plan.io)
            ds = ds.filter(lambda row: row["clip_id"] in wanted, num_cpus=plan.io_task_cpus)
        else:
            clips = [AudioClip(cid, self.job.inputs[cid]) for cid in clip_ids]
            ds = stages.source_dataset(m.gen_cfg, {**m.job, "kind": "audio", "clips": clips}, plan.io)
        ds = stages.render_stage(stages.generator_stage(ds, m.gen_cfg, m.job, plan, None), m.gen_cfg,
                                 m.job["params"], plan.io)
        return self._written(m, *stages.collect_results(ds, len(clip_ids)))

    @staticmethod
    def _written(m: Model, manifest: list[dict], errors: list[dict]) -> set[str]:
        for e in errors:
            log.warning("report audio of %s / %s not written: %s", m.label, e["clip_id"], e["reason"])
        return {r["clip_id"] for r in manifest}
