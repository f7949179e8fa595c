"""The mel codec's one user option, light enough for the command line to read at parse time."""
from __future__ import annotations

from cluster.options import option

# Iterations of Griffin-Lim in every mel -> audio inversion (generate, evaluate, the report's
# audio of Parquet windows, roundtrip): torchaudio's default, enough for drums, whose phase is
# mostly noise; more cost time linearly for little audible gain.
GRIFFIN_LIM_ITERS = 32


def griffin_lim_option():
    """The `--griffin-lim-iters` field, for every job that inverts mel images to audio."""
    return option(GRIFFIN_LIM_ITERS, "Griffin-Lim iterations of each mel -> audio inversion",
                  "generation")
