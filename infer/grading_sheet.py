"""OUTPUT/grade.html: a blind listening test whose answers are the grader's annotations CSV.

`cycledrums score ... --grading-sheet N` (and evaluate) writes, beside report.html:
  grade.html            the page (works from file://, no server, no network)
  grading/<id>/bass.ogg, drums.ogg, mix.ogg
                        each sampled clip's audio under an opaque id: a random token
                        that says nothing about the set or the clip
  grading_key.csv       the map id -> (set, clip id); NOT linked from the page: give the
                        raters grade.html and grading/ only
The sample: N (set, clip) pairs drawn with the seed across every generated set and
every baseline (true drums, another clip's drums, shaped noise, silence, bass copy:
the raters' anchors and the grader's calibration), in turn from each set so that all
are represented, then shuffled.

In the page a rater types a name, plays the bass, the drums and the mix of each clip
and gives the paper's four 0-9 grades; the grades live in the browser's localStorage
(keyed by the sheet id, so a reload loses nothing) and "Download CSV" saves
`clip_id,rater,quality,contamination,credibility,time,sheet` (clip_id = the opaque id).
`cycledrums score ... --annotations A.csv --annotations B.csv` reads those files: ids
are mapped back through grading_key.csv (OUTPUT's, or --grading-key), with the set
column, so baseline clips are graded too.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import time

import numpy as np

from cluster.errors import UserError
from infer.grader import DIMENSIONS

log = logging.getLogger(__name__)

SHEET = "grade.html"
FOLDER = "grading"
KEY = "grading_key.csv"
KEY_COLUMNS = ("id", "sheet", "set", "clip_id")
# The paper's four dimensions, as the raters read them (9 = best on every one).
DEFINITIONS = {
    "quality": "Sound quality: do the drums sound natural, free of artefacts, distortion and noise? (9 = like a "
               "studio recording)",
    "contamination": "Contamination: are the drums free of other sounds leaking in (bass, hiss, other "
                     "instruments)? (9 = only drums)",
    "credibility": "Credibility: could a real drummer have played this part for this song? (9 = fully "
                   "credible)",
    "time": "Timing: do the drums follow the beat and the feel of the bass line? (9 = locked to it)",
}
IN_PROCESS_CLIPS = 16


class GradingKeyError(UserError):
    """Annotations from a grading sheet whose key is missing or does not fit."""


def grading_sample(table, labels: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """[(set label, clip id)]: n scored clips across `labels`, taken in turn from each set, shuffled.

    Depends only on the table's (set, clip id) pairs, the labels, n and the seed, so evaluate
    can ask for the same sample (to write those clips' audio) before the sheet is made."""
    from infer.baselines import stable_seed

    rng = np.random.default_rng(stable_seed(seed, "grading-sheet"))
    pools = []
    for label in labels:
        ids = sorted(set(table.loc[table["set"] == label, "clip_id"].astype(str)))
        pools.append([ids[i] for i in rng.permutation(len(ids))])
    order = list(rng.permutation(len(labels)))
    picked: list[tuple[str, str]] = []
    depth = 0
    while len(picked) < n and any(depth < len(p) for p in pools):
        for i in order:
            if depth < len(pools[i]) and len(picked) < n:
                picked.append((labels[i], pools[i][depth]))
        depth += 1
    return [picked[i] for i in rng.permutation(len(picked))]


def _opaque_ids(n: int, seed: int) -> list[str]:
    """n distinct random tokens, by position in the shuffled sample: they carry nothing of a clip's
    set or id, and the same seed and clips give the same tokens (a re-run keeps the key valid)."""
    from infer.baselines import stable_seed

    rng = np.random.default_rng(stable_seed(seed, "grading-ids"))
    out: list[str] = []
    while len(out) < n:
        token = f"{int(rng.integers(16 ** 10)):010x}"
        if token not in out:
            out.append(token)
    return out


def write_grading_sheet(table, labels: list[str], reference, settings, n: int) -> dict:
    """Write grade.html, grading/<id>/*.ogg and grading_key.csv; returns the summary's `grading_sheet` part."""
    from infer.job_io import join_uri
    from pipelines.storage import write_bytes

    start = time.perf_counter()
    output, s3_endpoint_url = settings.output, settings.s3_endpoint_url
    sample = grading_sample(table, labels, n, settings.seed)
    ids = _opaque_ids(len(sample), settings.seed)
    generated = {(s, c): g for s, c, g in zip(table["set"].astype(str), table["clip_id"].astype(str),
                                              table["generated"].astype(str))}
    items = [(token, label, clip_id, generated.get((label, clip_id), ""))
             for token, (label, clip_id) in zip(ids, sample)]
    made, written = _media(items, reference, settings)
    failed = {token: media for token, media in made.items() if isinstance(media, str)}
    for token, reason in failed.items():
        log.warning("grading sheet: no audio for one sampled clip (%s); left out", reason)
    kept = [it for it in items if it[0] not in failed]
    key_rows = "".join(f"{t},{{sheet}},{_csv(label)},{_csv(cid)}\n" for t, label, cid, _ in kept)
    sheet_id = hashlib.sha256(key_rows.encode()).hexdigest()[:12]
    key = ",".join(KEY_COLUMNS) + "\n" + key_rows.replace("{sheet}", sheet_id)
    key_uri = join_uri(output, KEY)
    write_bytes(key_uri, key.encode(), s3_endpoint_url)
    page_uri = join_uri(output, SHEET)
    write_bytes(page_uri, sheet_html(sheet_id, [(t, made[t]) for t, *_ in kept]).encode(), s3_endpoint_url)
    per_set = {label: sum(1 for _, l, _, _ in kept if l == label) for label in labels}
    log.info("grade.html: %d clips (%s) in %.1f s", len(kept), per_set, time.perf_counter() - start)
    return {"page": page_uri, "key": key_uri, "sheet": sheet_id, "clips": len(kept), "per_set": per_set,
            "left_out": len(failed), "outputs": written + [key_uri, page_uri]}


def _csv(value: str) -> str:
    value = str(value)
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def _media(items, reference, settings):
    """({token: {"bass": path or None, "drums": path, "mix": path or None} or an error text}, URIs written).
    Clips sharing a reference clip are made in one call (its audio decoded once); past
    IN_PROCESS_CLIPS clips, with the job's Ray up, one Ray task per reference clip."""
    import ray

    groups: dict[str, list] = {}
    for token, label, clip_id, generated in items:
        groups.setdefault(clip_id, []).append((token, label, generated))
    if ray.is_initialized() and len(items) > IN_PROCESS_CLIPS:
        task = ray.remote(num_cpus=1, max_retries=1)(clip_audio)
        ref = ray.put(reference)
        results = ray.get([task.remote(ref, cid, entries, settings) for cid, entries in groups.items()])
    else:
        results = [clip_audio(reference, cid, entries, settings) for cid, entries in groups.items()]
    made, written = {}, []
    for by_token, uris in results:
        made.update(by_token)
        written += uris
    return made, written


def clip_audio(reference, clip_id: str, entries: list, settings) -> tuple[dict, list[str]]:
    """The bass, drums and mix Ogg files of each (token, set label, generated) of one reference clip."""
    from infer.media import Media, ogg_bytes
    from infer.job_io import join_uri
    from pipelines.storage import write_bytes

    media = Media(reference, settings)
    rate = settings.params.sample_rate
    out, written = {}, []

    def put(token: str, name: str, audio: np.ndarray) -> str:
        rel = f"{FOLDER}/{token}/{name}.ogg"
        uri = join_uri(settings.output, FOLDER, token, f"{name}.ogg")
        write_bytes(uri, ogg_bytes(audio, rate), settings.s3_endpoint_url)
        written.append(uri)
        return rel

    for token, label, generated in entries:
        try:
            ref = media.reference_clip(clip_id)
            drums, _ = media.drums(label, clip_id, generated)
            files = {"bass": None, "drums": put(token, "drums", drums), "mix": None}
            if ref["bass"] is not None:
                bass = ref["bass"][0]
                n = min(len(bass), len(drums))
                files["bass"] = put(token, "bass", bass)
                files["mix"] = put(token, "mix", bass[:n] + drums[:n])
            out[token] = files
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            out[token] = f"{type(err).__name__}: {err}"
    return out, written


# ---------------------------------------------------------------- reading answers back


def read_key(uri: str, s3_endpoint_url: str | None = None):
    import pandas as pd

    from pipelines.storage import fsspec_filesystem, read_bytes

    fs, inner = fsspec_filesystem(uri, s3_endpoint_url)
    if not fs.exists(inner):
        raise GradingKeyError(f"the annotations come from a grading sheet, but its key {uri} is not there; "
                              f"give --grading-key OUTPUT/{KEY} of the run that wrote grade.html")
    key = pd.read_csv(io.BytesIO(read_bytes(uri, s3_endpoint_url)), dtype=str, keep_default_na=False)
    if list(key.columns) != list(KEY_COLUMNS):
        raise GradingKeyError(f"{uri}: not a grading key (columns {list(key.columns)})")
    return key


def is_sheet_annotations(annotations) -> bool:
    return "sheet" in annotations.columns


def map_sheet_ids(annotations, key_uri: str, s3_endpoint_url: str | None = None):
    """Annotations from grade.html (opaque clip ids, a `sheet` column) -> rows with set and clip id."""
    key = read_key(key_uri, s3_endpoint_url)
    sheets = set(annotations["sheet"].astype(str))
    known = set(key["sheet"])
    if not sheets <= known:
        raise GradingKeyError(f"annotations from grading sheet(s) {sorted(sheets - known)}, but {key_uri} is the "
                              f"key of sheet {sorted(known)}; give the --grading-key of the run that wrote them")
    by_id = key.set_index("id")
    unknown = sorted(set(annotations["clip_id"]) - set(by_id.index))
    if unknown:
        raise GradingKeyError(f"{len(unknown)} annotated id(s) are not in {key_uri} (e.g. {unknown[:3]})")
    out = annotations.copy()
    out["grading_id"] = out["clip_id"]
    out["set"] = by_id.loc[out["clip_id"], "set"].to_numpy()
    out["clip_id"] = by_id.loc[out["grading_id"], "clip_id"].to_numpy()
    return out


# ---------------------------------------------------------------- the page

_STYLE = """
body{font-family:sans-serif;margin:1.2em auto;max-width:1100px;padding:0 1em;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.5em 0;z-index:1}
.clip{border:1px solid #ccc;border-radius:6px;padding:.6em .9em;margin:.8em 0}
.clip.done{border-color:#4a4;background:#f4fbf4}.clip h3{margin:.1em 0 .4em;font-size:15px}
.players{display:flex;gap:1em;flex-wrap:wrap}.players label{font-size:12px;color:#555;display:block}
audio{width:260px;height:32px}.grades{display:flex;gap:1.2em;flex-wrap:wrap;margin-top:.5em}
.grades label{font-size:13px}.grades input{width:3.2em;font-size:15px;margin-left:.3em}
dl.defs dt{font-weight:bold;display:inline}dl.defs dd{display:inline;margin:0 0 0 .3em}
dl.defs div{margin:.2em 0}#progress{font-weight:bold}button{font-size:14px;margin-left:.6em}
input:invalid{background:#fdd}
"""

_SCRIPT = r"""
const SHEET = document.body.dataset.sheet, DIMS = JSON.parse(document.body.dataset.dims);
const STORE = 'cycledrums-grading:' + SHEET;
function load(){ try { return JSON.parse(localStorage.getItem(STORE)) || {rater:'', grades:{}}; }
                 catch(e){ return {rater:'', grades:{}}; } }
let state = load();
function save(){ localStorage.setItem(STORE, JSON.stringify(state)); }
function valid(v){ return /^[0-9]$/.test(String(v)); }
function complete(id){ const g = state.grades[id] || {}; return DIMS.every(d => valid(g[d])); }
function progress(){
  const clips = Array.from(document.querySelectorAll('.clip'));
  let done = 0;
  clips.forEach(c => { const ok = complete(c.dataset.id); c.classList.toggle('done', ok); if (ok) done++; });
  document.getElementById('progress').textContent = done + ' of ' + clips.length + ' graded';
  return done;
}
function restore(){
  document.getElementById('rater').value = state.rater || '';
  document.querySelectorAll('.grades input').forEach(inp => {
    const g = state.grades[inp.dataset.id] || {};
    inp.value = valid(g[inp.dataset.dim]) ? g[inp.dataset.dim] : '';
  });
  progress();
}
document.getElementById('rater').addEventListener('input', e => { state.rater = e.target.value.trim(); save(); });
document.querySelectorAll('.grades input').forEach(inp => inp.addEventListener('input', () => {
  const g = state.grades[inp.dataset.id] = state.grades[inp.dataset.id] || {};
  if (valid(inp.value)) g[inp.dataset.dim] = Number(inp.value); else delete g[inp.dataset.dim];
  save(); progress();
}));
function gradingCsv(){
  const q = s => /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  const lines = ['clip_id,rater,' + DIMS.join(',') + ',sheet'];
  document.querySelectorAll('.clip').forEach(c => {
    const id = c.dataset.id;
    if (complete(id)) lines.push([id, q(state.rater)].concat(DIMS.map(d => state.grades[id][d]), [SHEET]).join(','));
  });
  return lines.join('\n') + '\n';
}
function download(){
  const msg = document.getElementById('message');
  if (!state.rater){ msg.textContent = 'Type your name first.'; return false; }
  if (!progress()){ msg.textContent = 'Grade at least one clip first (all four grades).'; return false; }
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([gradingCsv()], {type: 'text/csv'}));
  a.download = 'grades-' + state.rater.replace(/[^A-Za-z0-9_-]+/g, '_') + '-' + SHEET + '.csv';
  document.body.appendChild(a); a.click(); a.remove();
  msg.textContent = 'Saved ' + a.download + ' (' + progress() + ' clips).';
  return true;
}
function startOver(){
  if (!confirm('Clear the name and every grade in this browser, for the next rater?')) return;
  state = {rater:'', grades:{}}; save(); restore();
}
document.getElementById('download').addEventListener('click', download);
document.getElementById('reset').addEventListener('click', startOver);
restore();
"""


def sheet_html(sheet_id: str, clips: list[tuple[str, dict]]) -> str:
    """The page: only opaque ids and grading/<id>/ paths, nothing of the sets or the clips."""
    defs = "".join(f"<div><dt>{d}</dt><dd>{html.escape(DEFINITIONS[d])}</dd></div>" for d in DIMENSIONS)
    blocks = []
    for k, (token, files) in enumerate(clips, 1):
        players = "".join(
            f"<div><label>{name}</label><audio controls preload=metadata src=\"{html.escape(files[name])}\"></audio>"
            f"</div>" for name in ("bass", "drums", "mix") if files.get(name))
        inputs = "".join(
            f"<label>{d} <input type=number min=0 max=9 step=1 inputmode=numeric data-id=\"{token}\" "
            f"data-dim=\"{d}\" title=\"{html.escape(DEFINITIONS[d])}\"></label>" for d in DIMENSIONS)
        blocks.append(f"<section class=clip data-id=\"{token}\"><h3>Clip {k} of {len(clips)} "
                      f"<small>({token})</small></h3><div class=players>{players}</div>"
                      f"<div class=grades>{inputs}</div></section>")
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>cycledrums listening test</title><style>{_STYLE}</style></head>
<body data-sheet="{sheet_id}" data-dims='{json.dumps(list(DIMENSIONS))}'>
<h1>Listening test: grade the drums</h1>
<p>Each clip is a bass line with a drum part. Listen to the bass, the drums and their mix, then give four
grades from 0 (worst) to 9 (best). You are not told where any drum part comes from; grade what you hear.
Your grades are kept in this browser as you type (a reload loses nothing); when you are done, download
your CSV and send it back.</p>
<dl class=defs>{defs}</dl>
<header><label>Your name <input id=rater autocomplete=off></label>
<span id=progress>0 of {len(clips)} graded</span>
<button id=download type=button>Download CSV</button>
<button id=reset type=button>Start over (next rater)</button> <span id=message></span></header>
{''.join(blocks)}
<script>{_SCRIPT}</script>
</body></html>
"""
