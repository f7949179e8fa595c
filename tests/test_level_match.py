"""The drums' level: by default the level the generator drew them at, plus the offset; with
--drums-level bass, as loud as the bass (BS.1770 loudness) whatever their spectral balance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from infer import render

RATE = 22050


def _tone(freq: float, seconds: float = 4.0, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def _lufs(x: np.ndarray) -> float:
    return float(torchaudio.functional.loudness(torch.from_numpy(x)[None], RATE))


def test_drums_come_out_as_loud_as_the_bass_plus_the_offset():
    bass = _tone(80, amplitude=0.2)
    rng = np.random.default_rng(0)
    drums = 0.01 * rng.standard_normal(len(bass))
    for offset in (0.0, -6.0, 3.0):
        gain = render.level_match_gain_db(drums, bass, RATE, offset)
        assert _lufs(drums * 10 ** (gain / 20)) == pytest.approx(_lufs(bass) + offset, abs=0.05)


def test_a_hot_sub_bass_kick_does_not_turn_the_rest_of_the_kit_down():
    # The same hats with and without a loud 40 Hz boom under them: RMS is ruled by the boom and
    # pulls the hats ~28 dB down; loudness weights the boom as hearing does (BS.1770's K-filter
    # cuts the sub-bass and lifts the highs) and moves them ~10 dB less.
    rng = np.random.default_rng(1)
    bass = _tone(110, amplitude=0.1)
    hats = torch.from_numpy(0.02 * rng.standard_normal(len(bass)))
    hats = torchaudio.functional.highpass_biquad(hats, RATE, 5000.0).numpy()
    boom = _tone(40, amplitude=0.5)
    alone = render.level_match_gain_db(hats, bass, RATE)
    with_boom = render.level_match_gain_db(hats + boom, bass, RATE)
    rms_alone = 20 * np.log10(render.active_rms(bass) / render.active_rms(hats))
    rms_with_boom = 20 * np.log10(render.active_rms(bass) / render.active_rms(hats + boom))
    assert rms_alone - rms_with_boom > 20          # what RMS matching did to the hats
    assert alone - with_boom < rms_alone - rms_with_boom - 5


def test_short_or_silent_signals_fall_back_to_rms_and_never_blow_up():
    bass = _tone(80, seconds=0.2)                  # shorter than one 400 ms loudness block
    drums = 0.5 * _tone(200, seconds=0.2)
    assert render.loudness_lufs(drums, RATE) is None
    gain = render.level_match_gain_db(drums, bass, RATE)
    assert gain == pytest.approx(20 * np.log10(render.active_rms(bass) / render.active_rms(drums)), abs=1e-9)
    assert render.level_match_gain_db(np.zeros(RATE), _tone(80), RATE) == 0.0
    whisper = 1e-7 * _tone(300)                    # gated out as silence by BS.1770, capped by RMS
    assert render.level_match_gain_db(whisper, _tone(80), RATE) == render.GAIN_LIMITS_DB[1]


def test_the_drums_level_is_the_models_unless_asked_to_follow_the_bass():
    bass, drums = _tone(80, amplitude=0.2), _tone(2000, amplitude=0.01)
    assert render.drums_gain_db(drums, bass, RATE, "model") == 0.0
    assert render.drums_gain_db(drums, bass, RATE, "model", -4.5) == -4.5
    assert render.drums_gain_db(drums, bass, RATE, "bass", 2.0) == \
        render.level_match_gain_db(drums, bass, RATE, 2.0)
    with pytest.raises(ValueError, match="drums level"):
        render.drums_gain_db(drums, bass, RATE, "loud")


def test_the_cli_offers_the_levels_render_knows():
    from cycledrums_cli import build_parser

    parser = build_parser()
    for command in ("generate", "evaluate"):
        action = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions
                      if a.dest == "drums_level")
        assert tuple(action.choices) == render.DRUMS_LEVELS and action.default is None  # unset: the config decides
    from infer.options import GenerationOptions

    assert GenerationOptions().drums_level == render.DRUMS_LEVELS[0]


def test_the_limiter_turns_down_a_hot_kick_not_the_kit():
    rng = np.random.default_rng(0)
    kit = 0.05 * rng.standard_normal(2 * RATE)                # hats, well under full scale
    kick_at = RATE                                            # one kick 20 dB over full scale
    kit[kick_at:kick_at + 200] += 10.0 * np.hanning(200)
    limited, reduction_db = render.limit_peaks(kit, RATE)
    assert np.abs(limited).max() <= render.PEAK_LIMIT and reduction_db < -15
    # Only around the kick (hold + smoothing) does anything change; the kit keeps its level.
    reach = round((render.LIMITER_HOLD_SECONDS + render.LIMITER_SMOOTH_SECONDS) * RATE) + 200
    away = np.ones(len(kit), bool)
    away[kick_at - reach:kick_at + 200 + reach] = False
    np.testing.assert_allclose(limited[away], kit[away], rtol=1e-12, atol=1e-15)
    scaled, _ = render.peak_safe(kit)                         # scaling would take it all down
    assert render.active_rms(scaled[away]) < 0.2 * render.active_rms(kit[away])
    # Stereo: one gain for both channels, so their balance holds through the limiting.
    limited2, _ = render.limit_peaks(np.stack([kit, 0.5 * kit]), RATE)
    np.testing.assert_allclose(limited2[1], 0.5 * limited2[0], atol=1e-12)
    quiet = 0.5 * kit / np.abs(kit).max()
    assert render.limit_peaks(quiet, RATE) == (quiet, 0.0)
