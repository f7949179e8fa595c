"""What `generate`'s driver keeps of the clips' result rows as they come back.

Each manifest row is about twenty fields; as Python dicts, 14,000 clips cost tens of MB
and grow with the job.  Rows go instead, a batch at a time, to a local Parquet file (a
few hundred bytes a clip, read back once as Arrow columns to be sorted and written), and
the summary's totals are kept as running sums.  Error rows are few and kept as they are.
"""
from __future__ import annotations

import os
import tempfile

STAGE_SECONDS = ("seconds_decode", "seconds_generate", "seconds_stitch", "seconds_invert", "seconds_mix_write")


def manifest_schema():
    import pyarrow as pa

    return pa.schema([
        ("clip_id", pa.string()), ("input", pa.string()), ("duration_s", pa.float64()),
        ("input_sample_rate", pa.int64()), ("sample_rate", pa.int64()), ("channels", pa.int64()),
        ("samples", pa.int64()), ("windows", pa.int64()), ("bass_source", pa.string()),
        ("drums_gain_db", pa.float64()), ("drums_trim_db", pa.float64()), ("mix_trim_db", pa.float64()),
        ("drums_path", pa.string()), ("mix_path", pa.string()), ("mel_path", pa.string()),
        ("seconds_decode", pa.float64()), ("seconds_generate", pa.float64()), ("seconds_stitch", pa.float64()),
        ("seconds_invert", pa.float64()), ("seconds_mix_write", pa.float64()),
    ])


class ManifestSink:
    """Takes generate's (manifest rows, error rows) batch by batch; see the module doc."""

    def __init__(self):
        self.folder = tempfile.TemporaryDirectory(prefix="cycledrums-manifest-")
        self.writer = None
        self.clips = 0
        self.windows = 0
        self.audio_seconds = 0.0
        self.stage_seconds = dict.fromkeys(STAGE_SECONDS, 0.0)
        self.errors: list[dict] = []

    @property
    def path(self) -> str:
        return os.path.join(self.folder.name, "manifest.parquet")

    def add(self, manifest: list[dict], errors: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.errors += errors
        if not manifest:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, manifest_schema())
        self.writer.write_table(pa.Table.from_pylist(manifest, schema=manifest_schema()))
        self.clips += len(manifest)
        self.windows += sum(int(r["windows"]) for r in manifest)
        self.audio_seconds += sum(float(r["duration_s"]) for r in manifest)
        for k in STAGE_SECONDS:
            self.stage_seconds[k] += sum(float(r[k]) for r in manifest)

    def sorted_table(self):
        """Every manifest row, as Arrow columns sorted by clip id."""
        import pyarrow.parquet as pq

        if self.writer is None:
            return manifest_schema().empty_table()
        self.writer.close()
        self.writer = None
        return pq.read_table(self.path).sort_by("clip_id")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.folder.cleanup()
