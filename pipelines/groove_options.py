"""The options of `cycledrums grooves` that make its takes vary like real music (issue #30).

Declared once here with `option()`; `GroovesConfig` inherits them and the command line
builds their flags from these fields.  Every default keeps a take as it was before these
options existed (same bytes): one SoundFont, the style's bass program, a note on every
kick, no rests, no processing.  Checked here, before Ray starts (`variety_problem`).
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.options import option


@dataclass(kw_only=True)
class GrooveVariety:
    soundfont: list[str] | str | None = option(
        None, "General MIDI or drum-kit .sf2 file(s), one drawn per take with the seed; repeat the "
        "flag or give a comma list, e.g. --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2,"
        "/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2 (default: the TimGM6mb.sf2 that pretty_midi "
        "ships)", metavar="SF2")
    bass_programs: list[str] | None = option(
        None, "General MIDI bass programs (0-based), one drawn per take with the seed instead of "
        "the style's, e.g. --bass-programs 33,34,38,39 (fingered, picked, synth 1 and 2) "
        "(default: the style's program)", metavar="LIST")
    bass_rests: float = option(
        0.0, "share of bars, in runs of 1 to 4 bars, where the bass rests while the drums go on, "
        "e.g. --bass-rests 0.25", metavar="P")
    bass_skip: float = option(
        0.0, "share of kicks that start no new bass note, the note before held over them, "
        "e.g. --bass-skip 0.3", metavar="P")
    processing: bool = option(
        False, "process each stem with an EQ tilt, compression, mild saturation and a short room, "
        "drawn per take with the seed, e.g. --processing")


def comma_items(value: list[str] | str | None) -> list[str]:
    """A flag that takes one value, a comma list, or is repeated (`--soundfont`,
    `--bass-programs`) -> its items, stripped."""
    items = [value] if isinstance(value, str) else (value or [])
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def bass_program_list(value: list[str] | str | None) -> list[int]:
    """`--bass-programs` as given -> program numbers (ValueError for a word that is not one)."""
    return [int(p) for p in comma_items(value)]


def variety_problem(cfg: GrooveVariety) -> str | None:
    """What is wrong with the variety options, in one line, or None."""
    for name in ("bass_rests", "bass_skip"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            return f"--{name.replace('_', '-')} is a share of bars or kicks, from 0 to 1; got {value}"
    try:
        programs = bass_program_list(cfg.bass_programs)
    except ValueError:
        return f"--bass-programs takes General MIDI program numbers, e.g. 33,38; got {cfg.bass_programs}"
    wrong = [p for p in programs if not 0 <= p <= 127]
    if wrong or (cfg.bass_programs and not programs):
        return f"--bass-programs are General MIDI programs from 0 to 127; got {cfg.bass_programs}"
    return None


def realism_of(cfg: GrooveVariety) -> dict:
    """What a render task needs to know of the options (a plain dict: it travels to Ray)."""
    return {"bass_programs": bass_program_list(cfg.bass_programs), "bass_rests": cfg.bass_rests,
            "bass_skip": cfg.bass_skip, "processing": cfg.processing}
