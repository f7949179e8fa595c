"""infer/bass_rests.py: what generated drums do where the bass rests, on synthetic clips made here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infer.bass_rests import MIN_REST_FRAMES, rest_figures, rest_frames
from pipelines.mel import MelParams, audio_to_image

PARAMS = MelParams()
RATE = PARAMS.sample_rate
N = PARAMS.window_samples           # one 256-frame window
GAP_S = (2.0, 4.5)                  # the bass rests here


def _image(audio: np.ndarray) -> np.ndarray:
    return audio_to_image(torch.from_numpy(audio.astype(np.float32)), PARAMS).numpy()


def _bass(gap: bool = True) -> np.ndarray:
    t = np.arange(N) / RATE
    bass = 0.4 * np.sin(2 * np.pi * 82.4 * t) * (0.6 + 0.4 * np.cos(2 * np.pi * 2 * t))
    if gap:
        bass[int(GAP_S[0] * RATE):int(GAP_S[1] * RATE)] = 0.0
    return bass


def _drums(seed: int = 0) -> np.ndarray:
    """Kick on the beats (120 bpm), hats on the eighths: decaying bursts with silence between."""
    rng = np.random.default_rng(seed)
    out = np.zeros(N)
    hit = np.arange(int(0.2 * RATE)) / RATE
    kick = 0.8 * np.sin(2 * np.pi * 55 * hit) * np.exp(-hit * 25)
    hat = 0.15 * rng.standard_normal(len(hit)) * np.exp(-hit * 60)
    for k, start in enumerate(np.arange(0.1, N / RATE - 0.2, 0.25)):
        i = int(start * RATE)
        out[i:i + len(hit)] += (kick if k % 2 == 0 else 0) + hat
    return out


def _hum(seed: int = 1) -> np.ndarray:
    """The trained model's output where the bass rests: a steady ~300 Hz tone on flat noise, loud."""
    t = np.arange(N) / RATE
    return 0.5 * np.sin(2 * np.pi * 300 * t) + 0.05 * np.random.default_rng(seed).standard_normal(N)


@pytest.fixture(scope="module")
def clip():
    return {"bass": _image(_bass()), "drums": _image(_drums()), "hum": _image(_hum())}


def test_rest_frames_are_the_bass_gap(clip):
    rests = rest_frames(clip["bass"])
    frames = np.flatnonzero(rests)
    fps = RATE / PARAMS.hop_length
    # The gap, give or take the STFT's reach (2048 samples ~ 2 frames either side).
    assert abs(frames[0] / fps - GAP_S[0]) < 0.1 and abs(frames[-1] / fps - GAP_S[1]) < 0.1
    assert rests.sum() == frames[-1] - frames[0] + 1  # one run


def test_the_true_drums_in_the_rests_score_as_the_true_drums(clip):
    figures = rest_figures(clip["drums"], clip["drums"], clip["bass"])
    assert figures is not None and 0.35 < figures["rest_share"] < 0.5
    assert abs(figures["level_diff_db"]) < 1e-9
    assert figures["onset_agreement"] > 0.99
    assert figures["steadiness"] == figures["true_steadiness"] < 0.5
    assert figures["true_level_db"] > -20.0  # they play (the floor is -50)


def test_a_hum_in_the_rests_is_loud_off_beat_and_steady(clip):
    figures = rest_figures(clip["hum"], clip["drums"], clip["bass"])
    drums = rest_figures(clip["drums"], clip["drums"], clip["bass"])
    assert figures["level_diff_db"] > 10.0
    assert figures["onset_agreement"] < 0.1
    assert figures["steadiness"] > 0.7 and figures["steadiness"] > drums["steadiness"] + 0.3
    assert figures["tone_share"] > 0.3 and figures["tone_share"] > 3 * figures["true_tone_share"]


def test_other_drums_in_the_rests_play_but_off_the_true_hits(clip):
    """Drums of another part (shifted by a sixteenth): the level matches, the onsets do not."""
    shifted = _image(np.roll(_drums(), int(0.125 * RATE)))
    figures = rest_figures(shifted, clip["drums"], clip["bass"])
    assert abs(figures["level_diff_db"]) < 2.0
    assert figures["onset_agreement"] < 0.5
    assert figures["steadiness"] < 0.5


def test_a_clip_without_rests_has_no_figures(clip):
    bass = _image(_bass(gap=False))
    assert rest_frames(bass).sum() < MIN_REST_FRAMES
    assert rest_figures(clip["drums"], clip["drums"], bass) is None


def test_a_short_gap_between_notes_is_no_rest():
    bass = _bass(gap=False)
    bass[int(2.0 * RATE):int(2.1 * RATE)] = 0.0  # 0.1 s: a gap between notes
    assert not rest_frames(_image(bass)).any()


@pytest.mark.parametrize("peak_db, gap_db, rests", [
    (15.0, -20.0, True),    # under the absolute floor (-10 dB, prepare's near-silent window level)
    (15.0, -5.0, False),    # above the floor and 20 dB under the peak: the bass is quiet, not resting
    (30.0, -8.0, True),     # above the floor but 38 dB under a loud peak: hiss in a rest
])
def test_a_rest_is_under_the_floor_or_far_under_the_peak(peak_db, gap_db, rests):
    level = np.full(256, peak_db)
    level[100:160] = gap_db
    image = np.repeat(level[None, :], PARAMS.n_mels, axis=0)  # dB floats: every bin at the frame's level
    assert rest_frames(image).sum() == (60 if rests else 0)


def test_where_the_true_drums_rest_too_there_are_no_onsets_to_agree_with(clip):
    drums = _drums()
    drums[int(GAP_S[0] * RATE):] = 0.0
    silent = _image(drums)
    figures = rest_figures(clip["hum"], silent, clip["bass"])
    assert figures["onset_agreement"] is None and figures["true_level_db"] == pytest.approx(PARAMS.db_min, abs=1)
    assert figures["level_diff_db"] > 40 and figures["true_steadiness"] < 0.05


def test_the_rests_gate_is_taken_against_the_model_s_whole_input(clip):
    """With other stems mixed into the input (real_songs.py --mix-in), the rests are the bass's,
    but a copy of the input must get nothing there, as score's gate gives it nothing."""
    other = _image(0.3 * _drums(seed=3))          # a rhythmic part that plays through the bass's gap
    copy = rest_figures(other, clip["drums"], clip["bass"], input_image=other)
    assert copy is not None and copy["onset_agreement"] == 0.0
    alone = rest_figures(other, clip["drums"], clip["bass"])    # against the bass alone it scores
    assert alone["onset_agreement"] > 0.5
