"""The inference options, declared once: how drums are generated and how they are scored.

`generate` takes `GenerationOptions`, `score` takes `ScoringOptions`, `evaluate` both:
each job's config derives from the option sets it takes, its flags are built from their
fields (cluster/options.py), and evaluate hands each set on with `options_of`, so no
field is copied by hand.  Defaults and help texts live only here.

Imports nothing heavy: the command line reads it at parse time.
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import UserError
from cluster.options import option
from pipelines.codec_options import griffin_lim_option

GENERATION, SCORING = "generation", "scoring"
# How loud the rendered drums are (infer/render.py): the first is the default.
DRUMS_LEVELS = ("model", "bass")

# Flags renamed in 2026-12 so that one name means one thing in every job; the old names
# still work, hidden, with a deprecation note, until the next release.
GENERATE_OLD_NAMES = {"generator_batch": ["--batch-size"]}
SCORE_OLD_NAMES = {"inception_batch": ["--batch-size"]}
EVALUATE_OLD_NAMES = {"generator_batch": ["--generate-batch-size"], "inception_batch": ["--batch-size"]}


class OptionError(UserError):
    """An inference option out of range."""


@dataclass(kw_only=True)
class GenerationOptions:
    variation: float = option(
        0.0, "standard deviation of the noise added to the generator's input, in its [-1, 1] scale; "
        "0 turns randomness off (default: 0; try 0.05-0.2)", GENERATION)
    griffin_lim_iters: int = griffin_lim_option()
    sample_rate: int | None = option(
        None, "output sample rate in Hz (default: each input's own rate; the mel rate, 22050, for "
        "Parquet input)", GENERATION)
    generator_batch: int = option(8, "windows per generator forward pass, and clips per render batch",
                                  GENERATION)
    drums_level: str = option(
        DRUMS_LEVELS[0], "model: the drums at the level the generator drew them against this bass (it "
        "learned the level from real mixes); bass: as loud as the bass (ITU-R BS.1770 integrated "
        "loudness), for a model whose level cannot be trusted", GENERATION, choices=DRUMS_LEVELS)
    drums_gain_db: float = option(0.0, "dB added to the drums on top of --drums-level", GENERATION)

    def check_generation(self) -> None:
        _at_least_one(griffin_lim_iters=self.griffin_lim_iters, generator_batch=self.generator_batch)
        if not self.variation >= 0:
            raise OptionError(f"--variation must be >= 0, got {self.variation}")
        if self.sample_rate is not None and not 4000 <= self.sample_rate <= 384000:
            raise OptionError(f"--sample-rate must be within 4000-384000 Hz, got {self.sample_rate}")


@dataclass(kw_only=True)
class ScoringOptions:
    annotations: list[str] | None = option(
        None, "human grades that train (or, with --grader, evaluate) the grader; repeat it for several "
        "raters, e.g. the CSVs grade.html downloads (default: none)", SCORING, metavar="CSV")
    grader: str | None = option(
        None, "apply a saved grader instead of training one: OUTPUT/grader.json of an earlier run, its "
        "grader.npz beside it; plain data, and a pickle (.joblib) is refused unread (default: none)",
        SCORING, metavar="PATH")
    grading_sheet: int = option(
        0, "write OUTPUT/grade.html, a blind listening test of N clips sampled across the sets and the "
        "baselines, whose downloaded CSVs are --annotations files (default: 0, none)", SCORING, metavar="N")
    grading_key: str | None = option(
        None, "the grading_key.csv that maps grade.html's opaque ids back to (set, clip) for "
        "--annotations from that page (default: OUTPUT/grading_key.csv)", SCORING, metavar="PATH")
    inception_weights: str | None = option(
        None, "Inception-v3 state dict (torchvision's inception_v3 layout), local or s3:// (default: "
        "torchvision's cache, <torch hub dir>/checkpoints/inception_v3_google-0cc3c7bd.pth; nothing is "
        "downloaded)", SCORING, metavar="PATH")
    inception_batch: int = option(16, "clips per Inception batch", SCORING)
    grader_c: float = option(1.0, "inverse L2 regularisation strength of the grader's logistic "
                             "regression", SCORING)
    baselines: bool | None = option(
        None, "score the baseline sets (true drums, another clip's drums, the bass, shaped noise, "
        "silence) and the sanity ladder (default: on when the reference has 2 or more clips)", SCORING)
    report_clips: int = option(
        24, "clips per set shown in the report (and given audio by evaluate): the N worst, best and "
        "random ones", SCORING, metavar="N")
    # The report plays Parquet windows (true drums, bass) inverted with the job's own setting.
    griffin_lim_iters: int = griffin_lim_option()

    def check_scoring(self) -> None:
        _at_least_one(inception_batch=self.inception_batch, griffin_lim_iters=self.griffin_lim_iters)
        if self.report_clips < 0 or self.grading_sheet < 0:
            raise OptionError("--report-clips and --grading-sheet must be >= 0")


def _at_least_one(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
