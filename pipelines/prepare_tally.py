"""What `prepare`'s driver keeps of the tracks' result rows as they come back: counts and sums for
the summary, and only the rows of tracks that failed or carry a warning (for `_errors.csv`).

A catalog of 10,000 songs returns 10,000 rows; holding every one (a dict of ten fields each)
would grow the driver with the catalog for nothing the summary needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.windows import SPLITS

# The fields of a reported row that _errors.csv and the log read.
REPORTED_FIELDS = ("track_id", "path", "status", "stage", "reason", "warning", "transient")


@dataclass
class PrepareTally:
    ok: int = 0
    failed: int = 0
    failed_transient: int = 0
    warned: int = 0
    windows_dropped: int = 0
    audio_seconds: float = 0.0
    splits: dict = field(default_factory=lambda: {s: {"tracks": 0, "windows": 0} for s in SPLITS})
    reported: list = field(default_factory=list)  # failed or warned tracks, in the order they came
    returned: set = field(default_factory=set)    # the track ids the pipeline handed back

    def add(self, row: dict) -> None:
        self.returned.add(row["track_id"])
        self.windows_dropped += int(row.get("dropped", 0))
        if row["status"] == "ok":
            self.ok += 1
            self.audio_seconds += float(row["seconds"])
            self.splits[row["split"]]["tracks"] += 1
            self.splits[row["split"]]["windows"] += int(row["windows"])
            self.warned += bool(row.get("warning"))
        else:
            self.failed += 1
            self.failed_transient += bool(row.get("transient"))
        if row["status"] != "ok" or row.get("warning"):
            self.reported.append({k: row.get(k, "") for k in REPORTED_FIELDS})

    @property
    def windows_written(self) -> int:
        return sum(s["windows"] for s in self.splits.values())
