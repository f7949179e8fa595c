"""Inference options are defined once (infer/options.py): each flag of generate, score and evaluate
maps to exactly one field and back, renamed flags still work for one release, and the options reach
the code that uses them (the report's audio uses the job's Griffin-Lim setting)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cluster.options import option_fields, options_from_args, options_of
from cycledrums_cli import build_parser, main
from infer.evaluate import EvaluateConfig
from infer.generate import GenerateConfig
from infer.options import GenerationOptions, ScoringOptions
from infer.score_inputs import ScoreConfig

# Flags that say what a job works on and where it runs, not how it generates or scores.
JOB_FLAGS = {"help", "command", "func", "verbose", "checkpoint", "inputs", "output", "generated", "reference",
             "test_set", "also", "keep_audio", "seed", "json", "address", "s3_endpoint_url", "device",
             "actors", "gpus_per_actor"}
OPTION_SETS = {"generate": (GenerationOptions,), "score": (ScoringOptions,),
               "evaluate": (GenerationOptions, ScoringOptions)}
CONFIGS = {"generate": GenerateConfig, "score": ScoreConfig, "evaluate": EvaluateConfig}


def parser_of(command: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


def visible_actions(parser):
    return [a for a in parser._actions if a.help != "==SUPPRESS=="]


@pytest.mark.parametrize("command", sorted(OPTION_SETS))
def test_every_inference_flag_is_one_field_and_every_field_one_flag(command):
    parser = parser_of(command)
    fields = {f.name: f for cls in OPTION_SETS[command] for f in option_fields(cls)}
    actions = [a for a in visible_actions(parser) if a.dest not in JOB_FLAGS]
    assert sorted(a.dest for a in actions) == sorted(fields)  # one flag each, no flag without a field
    for action in actions:
        f = fields[action.dest]
        assert "--" + f.name.replace("_", "-") in action.option_strings
        assert action.default is None  # unset: the dataclass's default decides
        assert f.metadata["help"] in action.help
    assert {f.name for f in option_fields(CONFIGS[command])} == set(fields)  # the job's config holds them all


@pytest.mark.parametrize("command", sorted(OPTION_SETS))
def test_parsed_flags_become_the_config_and_unset_ones_take_its_defaults(command):
    positionals = {"generate": ["ckpt", "in", "out"], "score": ["gen", "ref", "out"],
                   "evaluate": ["ckpt", "test", "out"]}[command]
    given = {"generate": ["--griffin-lim-iters", "5", "--generator-batch", "3", "--drums-level", "bass"],
             "score": ["--griffin-lim-iters", "5", "--inception-batch", "3", "--annotations", "a.csv",
                       "--annotations", "b.csv", "--no-baselines"],
             "evaluate": ["--griffin-lim-iters", "5", "--generator-batch", "3", "--inception-batch", "4",
                          "--variation", "0.1"]}[command]
    args = parser_of(command).parse_args(positionals + given)
    values = options_from_args(CONFIGS[command], args)
    assert values["griffin_lim_iters"] == 5
    defaults = {f.name: f.default for f in option_fields(CONFIGS[command])}
    assert set(values) < set(defaults)  # unset flags are left to the config
    if command == "score":
        assert values["annotations"] == ["a.csv", "b.csv"] and values["baselines"] is False
    if command == "evaluate":
        assert (values["generator_batch"], values["inception_batch"], values["variation"]) == (3, 4, 0.1)


@pytest.mark.parametrize("command, old, field, value", [
    ("generate", "--batch-size", "generator_batch", 3),
    ("score", "--batch-size", "inception_batch", 3),
    ("evaluate", "--batch-size", "inception_batch", 3),
    ("evaluate", "--generate-batch-size", "generator_batch", 3),
])
def test_renamed_flags_still_work_with_a_deprecation_note(command, old, field, value, capsys):
    parser = parser_of(command)
    args = parser.parse_args(["a", "b", "c", old, str(value)])
    assert getattr(args, field) == value
    err = capsys.readouterr().err
    assert old in err and "deprecated" in err and "--" + field.replace("_", "-") in err
    assert old not in parser.format_help()  # hidden from --help


def test_roundtrip_takes_the_same_griffin_lim_flag_and_its_old_name(capsys):
    args = parser_of("roundtrip").parse_args(["in.wav", "out.wav", "--iterations", "4"])
    assert args.griffin_lim_iters == 4 and "deprecated" in capsys.readouterr().err
    assert "--griffin-lim-iters" in parser_of("roundtrip").format_help()


def test_a_bad_inference_option_is_a_one_line_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "ckpt"), str(tmp_path), str(tmp_path / "out"),
                 "--generator-batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--generator-batch must be at least 1" in err and "Traceback" not in err


def test_evaluate_hands_its_options_to_generate_and_score_whole():
    cfg = EvaluateConfig(checkpoint="c", test_set="t", output="o", griffin_lim_iters=5, generator_batch=3,
                         inception_batch=4, report_clips=2, drums_level="bass")
    gen = GenerateConfig(**options_of(GenerationOptions, cfg), checkpoint="c", inputs=["t"], output="o")
    score = ScoreConfig(**options_of(ScoringOptions, cfg), generated=[], reference="t", output="o")
    assert (gen.griffin_lim_iters, gen.generator_batch, gen.drums_level) == (5, 3, "bass")
    assert (score.griffin_lim_iters, score.inception_batch, score.report_clips) == (5, 4, 2)
    # Every field of each option set reaches its job: nothing is left behind by a hand copy.
    for cls, made in ((GenerationOptions, gen), (ScoringOptions, score)):
        assert options_of(cls, made) == options_of(cls, cfg)


def test_every_job_prints_json():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    without = [name for name, p in sub.choices.items() if name != "submit"
               and not any(a.dest == "json" for a in p._actions)]
    assert without == []


def test_the_reports_audio_uses_the_jobs_griffin_lim_setting(monkeypatch):
    """The report and the grading sheet rebuild Parquet windows (true drums, bass) as audio with the
    job's --griffin-lim-iters, not a number of their own."""
    import pipelines.mel as mel
    from infer.media import Media
    from infer.score_summary import media_settings

    calls = []
    real = mel.image_to_audio

    def spy(image, params, n_iter, length=None):
        calls.append(n_iter)
        return real(image, params, n_iter=n_iter, length=length)

    monkeypatch.setattr(mel, "image_to_audio", spy)
    args = parser_of("score").parse_args(["g", "r", "o", "--griffin-lim-iters", "3"])
    cfg = ScoreConfig(**options_from_args(ScoreConfig, args), generated=["g"], reference="r", output="o")
    params = mel.MelParams()
    media = Media(reference=None, settings=media_settings(cfg, params))
    image = np.zeros((params.n_mels, 40), dtype=np.uint8)
    audio = media._invert(image)
    assert calls == [3] and len(audio) == 39 * params.hop_length
    assert dataclasses.replace(cfg, griffin_lim_iters=7).griffin_lim_iters == 7
    assert media_settings(dataclasses.replace(cfg, griffin_lim_iters=7), params).griffin_lim_iters == 7
