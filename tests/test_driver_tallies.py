"""prepare's and generate's drivers keep counts, not every track's / clip's result row
(pipelines.prepare_tally, infer.generate_manifest).  No Ray: the rows are what the jobs' Ray
pipelines hand back."""
from __future__ import annotations

import tracemalloc

from infer.generate_manifest import STAGE_SECONDS, ManifestSink, manifest_schema
from pipelines.prepare_tally import PrepareTally


def _track_row(i: int) -> dict:
    status = "failed" if i % 50 == 7 else "ok"
    return {"track_id": f"t{i:05d}", "path": f"s3://b/songs/{i}", "split": "test" if i % 5 == 0 else "train",
            "sources": "{}", "status": status, "stage": "decode" if status == "failed" else "",
            "reason": "unreadable" if status == "failed" else "", "seconds": 30.0,
            "transient": i % 100 == 7, "warning": "clipped" if i % 50 == 9 else "",
            "windows": 0 if status == "failed" else 6, "dropped": 1}


def test_the_prepare_tally_counts_every_track_and_keeps_only_the_reported_ones():
    tally = PrepareTally()
    for i in range(1000):
        tally.add(_track_row(i))
    assert (tally.ok, tally.failed, tally.failed_transient, tally.warned) == (980, 20, 10, 20)
    assert tally.splits == {"train": {"tracks": 780, "windows": 780 * 6}, "test": {"tracks": 200, "windows": 200 * 6}}
    assert tally.windows_written == 980 * 6 and tally.windows_dropped == 1000
    assert tally.audio_seconds == 980 * 30.0
    assert [r["track_id"] for r in tally.reported] == [f"t{i:05d}" for i in range(1000) if i % 50 in (7, 9)]
    assert len(tally.returned) == 1000


def _clip_rows(start: int, n: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        row = {f.name: 0 for f in manifest_schema()}
        row.update(clip_id=f"song{(i * 7919) % 10007:05d}/w0000", input=f"s3://b/in/{i}.wav", duration_s=6.0,
                   windows=2, bass_source="input", drums_path="d", mix_path="m", mel_path="p",
                   **{k: 0.5 for k in STAGE_SECONDS})
        rows.append(row)
    return rows


def test_the_manifest_sink_writes_every_row_sorted_and_sums_the_summarys_totals():
    sink = ManifestSink()
    try:
        for start in range(0, 300, 64):
            sink.add(_clip_rows(start, min(64, 300 - start)), [{"clip_id": f"bad{start}"}])
        table = sink.sorted_table()
    finally:
        sink.close()
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == 300 == sink.clips and ids == sorted(ids)
    assert sink.windows == 600 and sink.audio_seconds == 1800.0
    assert sink.stage_seconds == {k: 150.0 for k in STAGE_SECONDS}
    assert len(sink.errors) == 5
    assert table.schema == manifest_schema()


def _sink_peak(n: int) -> int:
    tracemalloc.start()
    sink = ManifestSink()
    for start in range(0, n, 64):
        sink.add(_clip_rows(start, 64), [])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sink.close()
    return peak


def test_the_manifest_sink_does_not_grow_with_the_clips():
    """Python objects held while rows come in: one batch's worth, whatever the number of clips
    (a list of dicts grows by about 2 KB a clip)."""
    _sink_peak(64)
    one, four = _sink_peak(1024), _sink_peak(4096)
    assert four - one < 0.1 * (4096 - 1024) * 2000, (one, four)
