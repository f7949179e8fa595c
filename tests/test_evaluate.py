"""`cycledrums evaluate`: generate + score in one job, with the figures of the two jobs run back to back."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.test_generate import write_tiny_checkpoint

GL_ITERS = "4"  # few Griffin-Lim iterations: the comparison does not need good audio


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """4 test songs of 7 s in the musdb layout (<song>/bass.wav, <song>/drums.wav)."""
    from pipelines.synth import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, tracks=12, seconds=7.0, seed=3)
    return root / "test"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"cyclegan": str(write_tiny_checkpoint(root / "cyclegan")),
            "pix2pix": str(write_tiny_checkpoint(root / "pix2pix", model="pix2pix", seed=1))}


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> str:
    from infer.inception import save_random_weights

    return str(save_random_weights(str(tmp_path_factory.mktemp("inception") / "inception.pth"), seed=0))


def _clips(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "clips.csv", keep_default_na=False).sort_values(["set", "clip_id"]) \
        .reset_index(drop=True)


def _report_audio(out: Path, index: str = r"\d+") -> set[str]:
    """The drums the report plays: media/<clip>/set<index>.ogg (set 0: the first model)."""
    page = (out / "report.html").read_text()
    return set(re.findall(rf'src="(media/[^"]+/set{index}\.ogg)"', page))


@pytest.fixture(scope="module")
def evaluated(ray_local, models, test_set, inception, tmp_path_factory) -> Path:
    from cycledrums_cli import main

    out = tmp_path_factory.mktemp("evaluate")
    assert main(["evaluate", models["cyclegan"], str(test_set), str(out), "--inception-weights", inception,
                 "--griffin-lim-iters", GL_ITERS, "--report-clips", "2"]) == 0
    return out


@pytest.mark.timeout(600)
def test_evaluate_gives_the_figures_of_generate_then_score(evaluated, models, test_set, inception, tmp_path):
    from cycledrums_cli import main

    generated, scored = tmp_path / "generated", tmp_path / "scores"
    assert main(["generate", models["cyclegan"], str(test_set), str(generated),
                 "--griffin-lim-iters", GL_ITERS]) == 0
    assert main(["score", str(generated), str(test_set), str(scored), "--inception-weights", inception,
                 "--report-clips", "2"]) == 0
    ours, theirs = _clips(evaluated), _clips(scored)
    assert list(ours["set"]) == list(theirs["set"]) and list(ours["clip_id"]) == list(theirs["clip_id"])
    assert set(ours["set"]) == {"cyclegan", "true-drums", "other-clip", "bass-copy", "shaped-noise", "silence"}
    assert (ours["clip_id"][ours["set"] == "cyclegan"].tolist() ==
            sorted(p.name for p in test_set.iterdir() if p.is_dir()))
    figures = [c for c in theirs.columns if c.startswith(("stoi_", "level_", "spectrum_", "rhythm_", "density_"))]
    assert len(figures) > 256
    np.testing.assert_allclose(ours[figures].to_numpy(float), theirs[figures].to_numpy(float), rtol=1e-4, atol=1e-4)
    ours_summary = json.loads((evaluated / "summary.json").read_text())
    theirs_summary = json.loads((scored / "summary.json").read_text())
    # The same verdicts on the same means (Inception batches differ, so floats differ in the 7th digit).
    ours_ladder, theirs_ladder = ours_summary["sanity_ladder"], theirs_summary["sanity_ladder"]
    assert {m: r["passes"] for m, r in ours_ladder.items()} == {m: r["passes"] for m, r in theirs_ladder.items()}
    for metric, record in theirs_ladder.items():
        assert ours_ladder[metric]["means"] == pytest.approx(record["means"], rel=1e-4, abs=1e-6)
    for label in ("cyclegan", "silence"):
        fd, ref = ours_summary.get("sets", {}).get(label) or ours_summary["baselines"][label], \
            theirs_summary.get("sets", {}).get(label) or theirs_summary["baselines"][label]
        for layer, record in ref["frechet_distance"].items():
            assert fd["frechet_distance"][layer]["value"] == pytest.approx(record["value"], rel=1e-4, abs=1e-6)
    # Same report clips, and far less written: generate wrote 3 files for every clip.
    assert _report_audio(evaluated) == _report_audio(scored)
    # The report clips' audio (made in the driver on CPU) is generate's drums.
    written = sorted((evaluated / "audio" / "cyclegan").glob("*/drums.wav"))
    assert written
    for path in written:
        ours, theirs = sf.read(path)[0], sf.read(generated / path.parent.name / "drums.wav")[0]
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 2 / 32768


@pytest.mark.timeout(120)
def test_only_the_report_clips_get_audio_and_the_table_names_it(evaluated):
    clips = _clips(evaluated)
    ours = clips[clips["set"] == "cyclegan"]
    written = sorted(p.parent.name for p in (evaluated / "audio" / "cyclegan").glob("*/drums.wav"))
    shown = sorted({Path(p).parent.name for p in _report_audio(evaluated, "0")})
    assert written == shown and 0 < len(written) < len(ours)  # --report-clips 2: the worst and the best
    for cid, path in zip(ours["clip_id"], ours["generated"]):
        assert path == (str(evaluated / "audio" / "cyclegan" / cid / "drums.wav") if cid in written else "")
    for cid in written:
        assert sorted(p.name for p in (evaluated / "audio" / "cyclegan" / cid).iterdir()) == \
            ["drums.wav", "drums_mel.png", "mix.wav"]
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["evaluate"]["models"]["cyclegan"]["audio_clips"] == len(written)
    # On CPU one pool of actors holds the generator and Inception: one process per actor.
    resources = summary["evaluate"]["generator_resources"]
    pids = {what: sorted(e["pid"] for e in resources["placements"] if e["what"] == what)
            for what in ("generator", "Inception")}
    assert pids["generator"] == pids["Inception"] and len(pids["generator"]) == resources["actors"]["max_size"]


@pytest.mark.timeout(600)
def test_also_adds_a_model_as_a_set_and_keep_audio_writes_every_clip(ray_local, models, test_set, inception, tmp_path):
    from cycledrums_cli import main

    out = tmp_path / "both"
    assert main(["evaluate", f"cg={models['cyclegan']}", str(test_set), str(out), "--also",
                 f"p2p={models['pix2pix']}", "--inception-weights", inception, "--griffin-lim-iters", GL_ITERS,
                 "--report-clips", "2", "--keep-audio", "--no-baselines"]) == 0
    clips = _clips(out)
    songs = sorted(p.name for p in test_set.iterdir() if p.is_dir())
    assert set(clips["set"]) == {"cg", "p2p"}
    for label in ("cg", "p2p"):
        assert clips.loc[clips["set"] == label, "clip_id"].tolist() == songs
        assert sorted(p.parent.name for p in (out / "audio" / label).glob("*/mix.wav")) == songs
        assert (clips.loc[clips["set"] == label, "generated"] != "").all()
    # Two models, two sets of drums: a Pix2Pix is not the CycleGAN.
    a, b = (clips.loc[clips["set"] == s, "spectrum_match"].to_numpy() for s in ("cg", "p2p"))
    assert not np.allclose(a, b)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluate"]["models"]["p2p"]["model"] == "pix2pix"
    # Each CPU actor holds both generators and Inception: its memory reservation says so
    # (else Ray Data warns at the end of the job that the actors outgrew it).
    from infer.evaluate import fused_actor_memory

    reserved = summary["evaluate"]["generator_resources"]["actors"]["memory"]
    assert reserved == fused_actor_memory(2) > fused_actor_memory(1)


def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the check did not run before the job")
    monkeypatch.setattr("cluster.ray_runtime.init_ray", refuse)


@pytest.mark.timeout(120)
def test_bad_input_exits_2_before_ray_and_writes_nothing(models, test_set, inception, tmp_path, monkeypatch, capsys):
    from cycledrums_cli import main

    _no_ray(monkeypatch)
    out = tmp_path / "out"
    common = ["--inception-weights", inception]

    def fails(*argv: str) -> str:
        assert main(["evaluate", *argv, *common]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "no checkpoint" in fails(str(tmp_path / "nowhere"), str(test_set), str(out))
    err = fails(models["cyclegan"], str(test_set), str(out), "--also", models["cyclegan"])
    assert "two models are labelled 'cyclegan'" in err and "LABEL=CHECKPOINT" in err
    assert "reserved for a baseline" in fails(f"silence={models['cyclegan']}", str(test_set), str(out))
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    assert "existing file" in fails(models["cyclegan"], str(test_set), str(taken))
    assert taken.read_text() == "keep me"
    drums_only = tmp_path / "drums-only" / "song"
    drums_only.mkdir(parents=True)
    (drums_only / "drums.wav").write_bytes((test_set / sorted(p.name for p in test_set.iterdir())[0] /
                                           "drums.wav").read_bytes())
    assert "no clip has a bass beside its drums" in fails(models["cyclegan"], str(drums_only.parent), str(out))
    assert not out.exists()


@pytest.mark.timeout(120)
def test_a_pool_that_cannot_be_planned_ends_the_books_of_those_already_planned(ray_local, monkeypatch):
    # On GPUs evaluate plans two pools, each with its placement book: when the second cannot
    # be scheduled the job stops, and the first pool's book must not stay behind.
    import cluster.resources as resources
    from infer.evaluate import EvaluateError, _plan_pools

    books = []

    def plan_model_stage(request, *, what, **policy):
        if books:
            raise resources.ResourceError(f"{what} needs 1 GPU; the cluster has none left")
        books.append(resources.new_placement_book())
        return object(), books[-1]

    monkeypatch.setattr(resources, "choose_device", lambda device, view: ("cuda", "asked for"))
    monkeypatch.setattr(resources, "plan_model_stage", plan_model_stage)
    with pytest.raises(EvaluateError, match="needs 1 GPU"):
        _plan_pools(resources.ResourceRequest(device="cuda", actors=(1, 1)), n_models=1)
    assert len(books) == 1
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(books[0].read.remote(), timeout=60)


@pytest.mark.timeout(300)
def test_device_cuda_without_gpus_is_one_line(ray_local, models, test_set, inception, tmp_path, capsys):
    """#31 item 10: evaluate --device cuda on a cluster without GPUs: exit 2 and one line, as
    train and generate say it (it was a traceback)."""
    import torch

    from cycledrums_cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    address = ray_local.get_runtime_context().gcs_address
    assert main(["evaluate", models["cyclegan"], str(test_set), str(tmp_path / "out"), "--device", "cuda",
                 "--inception-weights", inception, "--address", address]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--device cuda: no GPU" in err, err
    assert err.strip().count("\n") == 0, err
