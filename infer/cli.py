"""Subcommands of the inference side: generate (drums for bass lines), score (automatic evaluation),
evaluate (both in one job).

Only argparse here: torch and Ray are imported when a subcommand runs, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys

from cluster.job_options import add_job_options, add_job_parser
from cluster.options import add_option_flags, option_fields, options_from_args
from cluster.resources import add_resource_options
from infer.options import (EVALUATE_OLD_NAMES, GENERATE_OLD_NAMES, SCORE_OLD_NAMES, GenerationOptions,
                           ScoringOptions)


def register(sub: argparse._SubParsersAction) -> None:
    _register_generate(sub)
    _register_score(sub)
    _register_evaluate(sub)


# ---------------------------------------------------------------- generate


def _register_generate(sub) -> None:
    p = add_job_parser(
        sub, "generate",
        help="generate drums for bass lines with a trained checkpoint (Ray Data batch job)",
        description="""\
Generate drums for bass lines with a trained CycleGAN (or Pix2Pix) checkpoint (Ray Data).

  cycledrums generate run/ bass-lines/ drums-out --variation 0.1 --seed 3

INPUT is one or more bass audio files or folders of them (any length, any format
soundfile reads: WAV, FLAC, OGG, MP3), or a Parquet window set written by
`cycledrums prepare` (its `test` split, `bass` column: one clip per window, id
"<track_id>/w<window:04d>").  Local paths or s3:// URLs.  In a folder holding
`<song>/bass.*` files (the musdb18 layout) only the bass files are used and each
clip is named after its folder; otherwise every audio file is a clip named after
its path without extension.

Per clip, under OUTPUT/<clip id>/:
  drums.wav     the generated drums, mono, at the level --drums-level says (by
                default the one the generator drew), only their peaks limited
  mix.wav       the ORIGINAL bass (its channels, resampled only if --sample-rate
                asks) plus the drums; scaled down only if it would clip
  drums_mel.png the stitched drum mel-spectrogram (low frequencies at the bottom)
and OUTPUT/manifest.parquet + manifest.csv (one row per clip: input, duration,
windows, seconds per stage), errors.parquet + errors.csv (inputs that could not
be used, e.g. corrupt or silent, with the reason), summary.json.
Both WAVs are exactly as long as the input, to the sample, at the output rate.
For a Parquet input the bass in the mix is re-synthesised from its mel window
(the Parquet holds no audio), and the output rate defaults to the mel rate.

The job: decode + mel + 256-frame windows (CPU tasks) -> the generator (an actor
pool, see --device and --actors) -> windows stitched with a raised-cosine cross-fade
over their 50-frame overlaps, Griffin-Lim, level, mix, write (CPU tasks).  The
generator is deterministic; with --variation S > 0 its input noise is drawn from
--seed, the clip id and the window index: different seeds give different drums, the
same seed the same drums, and with --variation 0 (the default) the seed changes
nothing.""",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint folder, or a training run folder (its latest checkpoint is used); local or s3://")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="bass audio files / folders, or a prepare Parquet window set; local or s3://")
    p.add_argument("output", metavar="OUTPUT", help="output folder, local or s3:// (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --variation noise (default: 0)")
    add_generation_options(p, GENERATE_OLD_NAMES)
    add_resource_options(p, what="generator")
    add_job_options(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from cluster.resources import ResourceRequest
    from infer.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(
        **options_from_args(GenerationOptions, args),
        checkpoint=args.checkpoint, inputs=list(args.inputs), output=args.output, seed=args.seed,
        s3_endpoint_url=args.s3_endpoint_url, address=args.address,
        resources=ResourceRequest.from_args(args))
    summary = run_generate(cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"generated drums for {summary['clips']} clip(s) ({summary['audio_seconds']:.1f} s of audio) "
              f"in {summary['seconds']['job']:.1f} s, {summary['errors']} error(s); "
              f"manifest and errors in {args.output}")
    if summary.get("errors_transient"):
        print(f"cycledrums generate: {summary['errors_transient']} clip(s) failed on storage / network "
              "faults (see errors.csv); a re-run retries them", file=sys.stderr)
        return 1
    return 0 if summary["clips"] or not summary["errors"] else 1


# ---------------------------------------------------------------- score


def _register_score(sub) -> None:
    p = add_job_parser(
        sub, "score",
        help="score generated drums against the true drums: STOI-like, Inception-density, rhythm; grader",
        description="""\
Score generated drums against the true drums of the same clips (Ray Data).

  cycledrums score cyclegan=drums-out windows/ scores --also pix2pix=pix2pix-out

GENERATED  the drums to score: a `cycledrums generate` OUTPUT folder (its manifest
           lists the clips), or a folder of drum audio (`<clip>/drums.wav` or
           `<clip>.wav`).  Written `LABEL=PATH` to name the set; more sets with
           --also (e.g. CycleGAN vs Pix2Pix).  Default label: the model named in the
           generate summary, else the folder name.
REFERENCE  the true drums: a `prepare` Parquet window set (its `test` split; clip id
           "<track_id>/w<window:04d>", matching `generate` run on the same Parquet;
           the bass comes from its `bass` column), or a folder of drum audio
           (`<clip>/drums.*`, with `<clip>/bass.*` beside it for the rhythm features,
           or `<clip>.*`).  Generated clips are matched to reference clips by id.
           All reference clips are the "real drums" of the density features.
OUTPUT     folder (local or s3://) for clips.parquet/.csv (per clip: 256 STOI-like
           correlations, stoi_mean, level_diff_db, rhythm_*, density_<layer>,
           annotated grade and bucket, predicted bucket and probabilities),
           errors.parquet/.csv, summary.json (per set: means, Fréchet distance per
           Inception layer, bucket histograms; grader accuracy and confusion matrix),
           buckets.png / grades.png (like the paper's figures 4 / 3), features.png,
           report.html, grader.json + grader.npz when a grader is trained (plain
           data, no pickle), and grade.html with --grading-sheet (see below).

Clips match when their ids are equal, or when one is the other with leading
folders removed ("track-1" matches "test/track-1"), if exactly one reference clip
fits; a set with no matching clip at all is an error (exit 2).

Baselines (--baselines) are scored as sets of their own; the sanity ladder in
summary.json says, per metric, whether it ranks them true > other clip > noise /
silence / bass (set means and per-clip win rates), and the grader is trained only
on the metrics that pass.

Annotations CSV (--annotations): header clip_id,rater,quality,contamination,
credibility,time[,set]; one row per clip and rater; the four grades are integers
0-9 (9 best; contamination 9 = no contamination).  A clip's grade is the mean over
raters and dimensions, rounded; buckets 0-3, 4-5, 6-7, 8-9.  `set` is needed only
when several GENERATED sets share clip ids.  Repeat --annotations for several raters.

The grading loop: --grading-sheet N writes the blind listening test OUTPUT/grade.html
(audio under OUTPUT/grading/<id>/); give raters grade.html and grading/ only, not
OUTPUT/grading_key.csv, the map from id to (set, clip).  Each rater's answers
download as an annotations CSV.  Then score again with --annotations A.csv
--annotations B.csv (ids mapped back through OUTPUT/grading_key.csv, or
--grading-key): summary.json's `human_grades` and report.html give the raters'
Pearson agreement per dimension and overall, each set's grade distribution with the
baselines as anchors, the grader's cross-validated accuracy and confusion matrix,
and the grader's buckets for every clip.""",
    )
    p.add_argument("generated", metavar="GENERATED", help="[LABEL=]PATH of the generated drums (see above)")
    p.add_argument("reference", metavar="REFERENCE", help="Parquet window set or folder of true drums (see above)")
    p.add_argument("output", metavar="OUTPUT", help="output folder, local or s3:// (created if missing)")
    p.add_argument("--also", metavar="LABEL=PATH", action="append", default=[],
                   help="another GENERATED set scored in the same run; repeatable (default: none)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the cross-validation folds, the other-clip pairing and the baseline noise "
                        "(default: 0)")
    add_scoring_options(p, SCORE_OLD_NAMES)
    add_resource_options(p, what="Inception")
    add_job_options(p)
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from infer.score import ScoreConfig, run_score

    from cluster.resources import ResourceRequest

    cfg = ScoreConfig(
        **options_from_args(ScoringOptions, args),
        generated=[args.generated] + list(args.also), reference=args.reference, output=args.output,
        seed=args.seed, s3_endpoint_url=args.s3_endpoint_url, address=args.address,
        resources=ResourceRequest.from_args(args))
    summary = run_score(cfg)
    _print_grading(summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    for label, s in summary["sets"].items():
        line = f"{label}: {s['scored']} clips scored, {s['errors']} errors, mean stoi {s['mean']['stoi_mean']}"
        if "predicted_bucket_histogram" in s:
            line += f", predicted buckets (0-3/4-5/6-7/8-9) {s['predicted_bucket_histogram']}"
        print(line)
    if summary.get("sanity_ladder"):
        verdicts = ", ".join(f"{m} {'pass' if r['passes'] else 'FAIL'}" for m, r in summary["sanity_ladder"].items())
        print(f"sanity ladder (true > other clip > noise/silence/bass): {verdicts}")
    g = summary["grader"]
    if g.get("cv_accuracy") is not None:
        print(f"grader: cross-validated accuracy {g['cv_accuracy']:.3f} on {g['trained_on']} clips "
              f"(majority baseline {g['majority_baseline']:.3f})")
    print(f"outputs in {args.output}")
    return 0


# ---------------------------------------------------------------- evaluate


def _register_evaluate(sub) -> None:
    p = add_job_parser(
        sub, "evaluate",
        help="generate drums for a test set and score them, in one Ray Data job (= generate + score)",
        description="""\
Generate drums for a test set with one or more checkpoints and score them, in one
Ray Data job.

  cycledrums evaluate cyclegan=run/ data/test scores --also pix2pix=pix2pix-run/

The test clips stream through the generator into the scoring stages, with the same
outputs as `cycledrums generate` then `cycledrums score` on the same clips, without
writing every generated clip to storage and reading it back.

CHECKPOINT  [LABEL=]checkpoint folder or training run folder (its latest
            checkpoint), local or s3://.  Its set is labelled LABEL, default the
            model in its config (cyclegan / pix2pix).  More models: --also.
TEST_SET    the test clips, with their true drums: a folder of <clip>/bass.* and
            <clip>/drums.* stems (the musdb18 layout; clips without a bass are
            reference only), or a `prepare` Parquet window set (its `test` split,
            one clip per window, "<track_id>/w<window:04d>").
OUTPUT      folder, local or s3:// (created if missing): score's outputs,
            clips.parquet/.csv, errors.parquet/.csv, summary.json (with an
            `evaluate` part: models, where their audio is), features.png (and
            buckets.png / grades.png / grader.json + .npz with a grader), report.html,
            grade.html with --grading-sheet (see `cycledrums score --help`)
            with media/ beside it; and the generated audio as generate lays it out,
            audio/<set>/<clip>/drums.wav, mix.wav, drums_mel.png.

Audio is written only for the clips report.html shows (--report-clips per set; they
are generated again with the same seed once the scores pick them), or for every
clip with --keep-audio.  The clips table's `generated` column names each clip's
drums.wav ('' where none was written).

The job: on a CPU cluster one actor per core does a clip's whole evaluation
(generator, Griffin-Lim, features, Inception), so the job starts one process per
core.  On GPUs each model gets a generator actor pool, with its drums rendered as
generate renders them and analysed as score analyses a drums.wav (CPU tasks), and
the features run in CPU tasks beside the Inception actors; a generator and an
Inception actor share each GPU (each reserves half of --gpus-per-actor).""",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="[LABEL=]checkpoint or training run folder (see above)")
    p.add_argument("test_set", metavar="TEST_SET", help="stems folder or Parquet window set (see above)")
    p.add_argument("output", metavar="OUTPUT", help="output folder, local or s3:// (created if missing)")
    p.add_argument("--also", metavar="LABEL=CHECKPOINT", action="append", default=[],
                   help="another model evaluated in the same run as a set of its own (e.g. pix2pix=RUN); "
                        "repeatable (default: none)")
    p.add_argument("--keep-audio", action="store_true",
                   help="write every clip's drums.wav, mix.wav and drums_mel.png (default: only the clips the "
                        "report shows)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the --variation noise, the other-clip pairing, the baseline noise and the "
                        "report's random clips (default: 0)")
    add_generation_options(p, EVALUATE_OLD_NAMES)
    add_scoring_options(p, EVALUATE_OLD_NAMES, after_generation=True)
    add_resource_options(p, what="generator and Inception")
    add_job_options(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from cluster.resources import ResourceRequest
    from infer.evaluate import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(
        **options_from_args(EvaluateConfig, args), checkpoint=args.checkpoint, test_set=args.test_set, output=args.output, also=list(args.also),
        keep_audio=args.keep_audio, seed=args.seed, s3_endpoint_url=args.s3_endpoint_url, address=args.address,
        resources=ResourceRequest.from_args(args))
    summary = run_evaluate(cfg)
    _print_grading(summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    for label, s in summary["sets"].items():
        audio = summary["evaluate"]["models"][label]
        print(f"{label}: {s['scored']} clips scored, {s['errors']} errors, mean stoi {s['mean']['stoi_mean']}; "
              f"audio of {audio['audio_clips']} clip(s) in {audio['audio']}")
    if summary.get("sanity_ladder"):
        verdicts = ", ".join(f"{m} {'pass' if r['passes'] else 'FAIL'}" for m, r in summary["sanity_ladder"].items())
        print(f"sanity ladder (true > other clip > noise/silence/bass): {verdicts}")
    print(f"outputs in {args.output} (open report.html)")
    return 0


def _print_grading(summary: dict) -> None:
    """The grading loop's lines: where grade.html is, the raters' agreement, the anchors."""
    sheet = summary.get("grading_sheet")
    if sheet:
        print(f"grading sheet: {sheet['clips']} clips in {sheet['page']} (give raters it and grading/; "
              f"the key {sheet['key']} stays with you)")
    human = summary.get("human_grades")
    if human:
        agree = human["agreement"]["mean_pairwise"]
        print(f"human grades: {human['clips_graded']} clips by {len(human['raters'])} rater(s); mean pairwise "
              "Pearson r " + ", ".join(f"{d} {'-' if r is None else f'{r:.2f}'}" for d, r in agree.items()))
        anchors = {k: v for k, v in human["anchors"].items() if k != "means"}
        if anchors:
            print("anchors: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in anchors.items()))


def add_generation_options(p, old_names: dict) -> None:
    """How drums are generated: the options generate and evaluate share (infer/options.py)."""
    add_option_flags(p.add_argument_group("generation"), GenerationOptions, old_names=old_names)


def add_scoring_options(p, old_names: dict, after_generation: bool = False) -> None:
    """How drums are scored: the options score and evaluate share (infer/options.py).  After the
    generation options, the ones both sets hold (Griffin-Lim iterations) are there already."""
    shared = [f.name for f in option_fields(GenerationOptions)] if after_generation else []
    add_option_flags(p.add_argument_group("scoring"), ScoringOptions, old_names=old_names, exclude=shared)
