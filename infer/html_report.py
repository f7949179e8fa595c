"""OUTPUT/report.html: a static listening report of a score run (works from a folder or S3).

The page links only relative paths: report.html, media/<clip>/... beside it (audio as
Ogg Vorbis, spectrograms as PNG), and the full tables (clips.csv, errors.csv,
summary.json) and plots written by score.  What it shows:
  - per set (generated and baseline, flagged): clips, means of the scalar metrics and
    the Fréchet distances with the clip counts they rest on; the sanity ladder;
    the histograms;
  - per set, a sortable table (click a header) of N clips (--report-clips): the worst,
    best and random thirds by the ranking metric (the grader's expected grade
    bucket when there is a grader, else the first metric that passes the ladder, else
    stoi_mean), each with audio players (bass, this set's drums, their mix, the true
    drums) and a spectrogram figure: bass / this set's drums / true drums stacked on
    one time axis (s), frequency axis in Hz, colour bar in dB.
It scales to any number of clips: only the shown clips get media, so the page and its
files stay small (a few MB for the defaults with 6-30 s clips).
"""
from __future__ import annotations

import html
import logging
import posixpath
import time

import numpy as np

from infer.media import Media, MediaSettings, ogg_bytes, spectrogram_png

log = logging.getLogger(__name__)

REPORT = "report.html"
MEDIA = "media"
RANK_PREFERENCE = ("rhythm_true_onsets", "rhythm_pattern", "stoi_mean", "spectrum_match", "rhythm_tempo")
TABLE_METRICS = ("stoi_mean", "level_diff_db", "spectrum_match", "rhythm_true_onsets", "rhythm_pattern",
                 "rhythm_tempo", "density_pool3")
SET_METRICS = ("stoi_mean", "level_error_db") + TABLE_METRICS[1:]   # sets: also mean |level diff|


# ---------------------------------------------------------------- which clips


def ranking(table, ladder: dict | None) -> tuple[str, object]:
    """(description, per-row score, higher = better) used to pick the worst / best clips."""
    if "prob_0" in table:
        probs = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
        return "expected grade bucket (grader)", probs @ np.arange(probs.shape[1])
    passing = [m for m in RANK_PREFERENCE if ladder and ladder.get(m, {}).get("passes")]
    metric = passing[0] if passing else "stoi_mean"
    return metric + (" (passes the sanity ladder)" if passing else ""), table[metric].to_numpy(float)


def select_clips(scores: np.ndarray, clip_ids: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """[(clip id, 'worst' | 'best' | 'random')]: n clips in all, a third of each (no clip twice)."""
    order = list(np.argsort(scores, kind="stable"))
    k = max(1, n // 3) if n else 0
    worst, best = order[:k], [i for i in reversed(order[-k:]) if i not in order[:k]] if k else []
    rest = [i for i in order if i not in set(worst) | set(best)]
    rng = np.random.default_rng(seed)
    size = max(0, min(len(rest), n - len(worst) - len(best)))  # n < 3: the worst and the best only
    random = list(rng.choice(rest, size=size, replace=False)) if rest else []
    return [(clip_ids[i], c) for c, group in (("worst", worst), ("best", best), ("random", random)) for i in group]


def report_clips(table, ladder: dict | None, labels: list[str], n: int, seed: int) -> dict[str, list]:
    """{set label: [(clip id, 'worst' | 'best' | 'random')]}: the clips the report shows per set."""
    _, scores = ranking(table, ladder)
    table = table.assign(_score=scores)
    out = {}
    for label in labels:
        # By clip id first: rows arrive in the order the actors finish, and tied scores
        # (common for an untrained model) must not make the pick depend on that order.
        # Rounded: the same clip scored from memory (evaluate) or from a 16-bit WAV (score)
        # differs in the 6th digit, which must not reorder near-ties either.
        rows = table[table["set"] == label].sort_values("clip_id", kind="stable")
        scores = np.round(rows["_score"].to_numpy(float), 4)
        out[label] = select_clips(scores, rows["clip_id"].tolist(), n, seed)
    return out


# ---------------------------------------------------------------- the page

_STYLE = """
body{font-family:sans-serif;margin:1em;max-width:1600px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 5px;font-size:13px;vertical-align:top}th{background:#eee}
th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#999}.pass{color:#070}.fail{color:#b00}
.baseline{color:#666;font-style:italic}audio{width:190px;height:30px;display:block}
table.clips{width:100%}table.clips th{font-size:12px;overflow-wrap:anywhere}table.clips td{font-size:12px}
table.clips td.spec{width:34%}img.spec{width:100%;max-width:420px;min-width:260px;height:auto}
.tag{font-size:11px;padding:1px 4px;border-radius:3px;background:#ddd}.matrices{display:flex;gap:1.5em;flex-wrap:wrap}
table.matrix caption,table#predicted caption{white-space:nowrap;text-align:left;font-size:12px;padding-bottom:2px}
"""

_SCRIPT = """
function sortTable(th){
  const table=th.closest('table'), body=table.tBodies[0], col=th.cellIndex;
  const asc=th.dataset.dir!=='asc'; th.dataset.dir=asc?'asc':'desc';
  const key=r=>{const c=r.cells[col]; const v=c.dataset.v!==undefined?c.dataset.v:c.textContent;
                const n=parseFloat(v); return isNaN(n)?v:n;};
  const rows=Array.from(body.rows);
  rows.sort((a,b)=>{const x=key(a),y=key(b); const r=(x<y)?-1:(x>y)?1:0; return asc?r:-r;});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('th.sortable').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
"""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return html.escape(str(value))


def _sets_table(summary: dict) -> str:
    entries = list(summary["sets"].items()) + list(summary.get("baselines", {}).items())
    layers = list(next(iter(summary["sets"].values()))["frechet_distance"]) if summary["sets"] else []
    head = "".join(f"<th class=sortable>{m}</th>" for m in SET_METRICS) + \
        "".join(f"<th class=sortable>FD {l}</th>" for l in layers)
    rows = []
    for label, s in entries:
        cls = " class=baseline" if s.get("baseline") else ""
        cells = "".join(f"<td>{_fmt(s['mean'].get(m))}</td>" for m in SET_METRICS)
        for layer in layers:
            fd = s["frechet_distance"][layer]
            cells += (f"<td data-v=\"{fd['value'] if fd['value'] is not None else ''}\">{_fmt(fd['value'])}"
                      f"<br><small>{fd['clips']} vs {fd['reference_clips']} clips, {fd['covariance'] or '-'}"
                      f"</small></td>")
        kind = "baseline" if s.get("baseline") else "generated"
        rows.append(f"<tr{cls}><td>{html.escape(label)}</td><td>{kind}</td><td>{s['scored']}</td>{cells}</tr>")
    return (f"<table id=sets><thead><tr><th class=sortable>set</th><th class=sortable>kind</th>"
            f"<th class=sortable>clips</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _ladder_table(ladder: dict | None) -> str:
    if not ladder:
        return "<p>No sanity ladder (run with baselines and at least 2 reference clips).</p>"
    from infer.baselines import BASS, NOISE, OTHER, SILENCE, TRUE

    order = (TRUE, OTHER, NOISE, SILENCE, BASS)
    head = "".join(f"<th>{s} mean</th>" for s in order)
    rows = []
    for metric, r in ladder.items():
        means = "".join(f"<td>{_fmt(r['means'].get(s))}</td>" for s in order)
        wins = "<br>".join(f"{g['higher']} &gt; {g['lower']}: {g['win_rate']:.2f}" for g in r["rungs"])
        verdict = "<span class=pass>pass</span>" if r["passes"] else "<span class=fail>fail</span>"
        rows.append(f"<tr><td>{metric}</td>{means}<td><small>{wins}</small></td><td>{verdict}</td></tr>")
    return (f"<table id=ladder><thead><tr><th>metric</th>{head}<th>per-clip win rates</th><th>verdict</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _matrix(title: str, names: list[str], matrix: list[list], cell=_fmt) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{html.escape(n)}</th>{''.join(f'<td>{cell(v)}</td>' for v in row)}</tr>"
                   for n, row in zip(names, matrix))
    return f"<table class=matrix><caption>{html.escape(title)}</caption><thead><tr><th></th>{head}</tr></thead>" \
           f"<tbody>{rows}</tbody></table>"


def _human_section(summary: dict) -> str:
    """Human grades and the grader: the raters' agreement (the paper's Table I), each set's grades
    with the baselines as anchors, the grader's cross-validated accuracy and confusion matrix, and
    its buckets for every clip (Fig. 4)."""
    parts = []
    sheet = summary.get("grading_sheet")
    if sheet:
        parts.append(f"<p>Grading sheet: <a href=\"grade.html\">grade.html</a>, {sheet['clips']} clips under "
                     f"opaque ids (key: grading_key.csv, kept here, not linked from the sheet).</p>")
    human = summary.get("human_grades")
    if human:
        agree = human["agreement"]
        raters = agree["raters"]
        mats = [_matrix(f"{d} (Pearson r)", raters, m) for d, m in agree["per_dimension"].items()]
        mats.append(_matrix("overall: mean of the four (Pearson r)", raters, agree["overall"]))
        mats.append(_matrix("clips graded by both", raters, agree["clips_in_common"]))
        dims = ("quality", "contamination", "credibility", "time")
        rows = []
        for label, d in human["grade_distribution"].items():
            hist = " ".join(str(c) for c in d["grade_histogram"])
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{d['clips']}</td><td>{_fmt(d['mean_grade'])}</td>"
                        + "".join(f"<td>{_fmt(d['mean_per_dimension'][k])}</td>" for k in dims)
                        + f"<td><code>{hist}</code></td><td><code>{d['bucket_histogram']}</code></td></tr>")
        anchors = "; ".join(f"{k.replace('_', ' ')}: {'yes' if v else 'NO'}"
                            for k, v in human["anchors"].items() if k != "means")
        parts.append(
            f"<h3>Raters' agreement</h3><p>{len(raters)} rater(s), {human['clips_graded']} clips graded. "
            f"{html.escape(agree['method'])}; mean pairwise r: "
            + ", ".join(f"{d} {_fmt(r)}" for d, r in agree["mean_pairwise"].items())
            + f".</p><div class=matrices>{''.join(mats)}</div>"
            f"<h3>Grades per set</h3><p>Mean over raters and dimensions; histogram of the rounded grades 0..9; "
            f"buckets 0-3 / 4-5 / 6-7 / 8-9. Anchors: {html.escape(anchors) or '-'}.</p>"
            f"<table id=grades><thead><tr><th>set</th><th>clips</th><th>mean grade</th>"
            + "".join(f"<th>{k}</th>" for k in dims)
            + f"<th>grades 0..9</th><th>buckets</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    grader = summary.get("grader") or {}
    if grader.get("source"):
        line = f"source: {grader['source']}"
        if grader.get("cv_accuracy") is not None:
            line = (f"cross-validated accuracy {grader['cv_accuracy']:.3f} on {grader['trained_on']} clips "
                    f"(majority-bucket baseline {grader['majority_baseline']:.3f}, chance 0.25)")
        elif grader.get("accuracy_on_annotations") is not None:
            line += f"; accuracy on these annotations {grader['accuracy_on_annotations']:.3f}"
        conf = ""
        if grader.get("confusion_matrix"):
            conf = _matrix("confusion: rows true bucket, columns predicted", ["0-3", "4-5", "6-7", "8-9"],
                           grader["confusion_matrix"], cell=str)
        entries = list(summary["sets"].items()) + list(summary.get("baselines", {}).items())
        hist_rows = "".join(f"<tr><td>{html.escape(l)}</td>" + "".join(f"<td>{c}</td>" for c in s_["predicted_bucket_histogram"])
                            + "</tr>" for l, s_ in entries if "predicted_bucket_histogram" in s_)
        parts.append(f"<h3>The grader</h3><p>{html.escape(line)}.</p>{conf}"
                     f"<table id=predicted><caption>predicted bucket of every scored clip, per set</caption>"
                     f"<thead><tr><th>set</th><th>0-3</th><th>4-5</th><th>6-7</th><th>8-9</th></tr></thead>"
                     f"<tbody>{hist_rows}</tbody></table>")
    if not parts:
        return ""
    return "<h2 id=human>Human grades and the grader</h2>" + "".join(parts)


def _audio(path: str, label: str) -> str:
    return (f"<span class=tag>{html.escape(label)}</span>"
            f"<audio controls preload=metadata src=\"{html.escape(path)}\"></audio>")


def write_report(table, summary: dict, reference, sets: list, settings: MediaSettings, n_clips: int) -> list[str]:
    """Write report.html and its media under `settings.output`; returns the URIs written."""
    from infer.job_io import join_uri
    from pipelines.storage import write_bytes

    how, scores = ranking(table, summary.get("sanity_ladder"))
    table = table.assign(_score=scores)
    labels = [s.label for s in sets] + list(summary.get("baselines", {}))
    shown = report_clips(table, summary.get("sanity_ladder"), labels, n_clips, settings.seed)
    rows = {label: table[table["set"] == label].set_index("clip_id") for label in labels}
    wanted: dict[str, list] = {}  # clip id -> [(set index, set label, its `generated` column)]
    for index, label in enumerate(labels):
        for clip_id, _ in shown[label]:
            wanted.setdefault(clip_id, []).append((index, label, str(rows[label].loc[clip_id]["generated"])))
    made, written = _media(wanted, reference, settings)
    sections = []
    for index, label in enumerate(labels):
        body = []
        for clip_id, category in shown[label]:
            media = made.get((clip_id, index))
            if isinstance(media, str):  # one clip's media must not sink the page
                log.warning("report: no media for %s / %s: %s", label, clip_id, media)
                continue
            body.append(_clip_row(media, clip_id, category, rows[label].loc[clip_id]))
        kind = "baseline" if label not in {s.label for s in sets} else "generated"
        head = "".join(f"<th class=sortable>{m.replace('_', '_<wbr>')}</th>"
                       for m in ("clip", "shown as", "rank score") + TABLE_METRICS)
        sections.append(
            f"<h2 id=\"set-{index}\">{html.escape(label)} <small class=tag>{kind}</small></h2>"
            f"<table class=clips><thead><tr>{head}<th>listen</th><th class=spec>spectrogram</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")
    page = _page(summary, how, n_clips, labels, sections)
    uri = join_uri(settings.output, REPORT)
    write_bytes(uri, page.encode(), settings.s3_endpoint_url)
    return written + [uri]


# Set rows of the page whose media the driver makes itself: below this, starting task
# processes (each imports torch and matplotlib, about 3 s of a core) costs more than the
# figures (measured on 2 cores: 18 rows took 8.4 s in the driver, 9.6 s in tasks).
IN_PROCESS_ROWS = 32


def _media(wanted: dict, reference, settings: MediaSettings):
    """({(clip id, set index): (players HTML, spectrogram path) or an error text}, URIs written).

    Each set row costs about half a second of a core (audio, Ogg files, a spectrogram
    figure): the default 24 clips x 7 sets is over a minute in one process.  So past
    IN_PROCESS_ROWS rows, when the job's Ray is up, one Ray task per clip and set."""
    import ray

    start = time.perf_counter()
    rows = sum(len(entries) for entries in wanted.values())
    if ray.is_initialized() and rows > IN_PROCESS_ROWS:
        # (clip id, [(set index, label, generated)], with the clip's bass and true drums files)
        work = [(cid, [entry], i == 0) for cid, entries in wanted.items() for i, entry in enumerate(entries)]
        task = ray.remote(num_cpus=1, max_retries=1)(clip_media)
        ref = ray.put(reference)
        results = ray.get([task.remote(ref, cid, entries, settings, shared) for cid, entries, shared in work])
    else:  # one call per clip: its reference audio is decoded once for all its sets
        work = [(cid, entries, True) for cid, entries in wanted.items()]
        results = [clip_media(reference, cid, entries, settings) for cid, entries, _ in work]
    made, written = {}, []
    for (cid, _, _), (by_index, uris) in zip(work, results):
        made.update({(cid, index): media for index, media in by_index.items()})
        written += uris
    log.info("report: media of %d clip(s), %d set row(s) in %.1f s", len(wanted), rows,
             time.perf_counter() - start)
    return made, written


def clip_media(reference, clip_id: str, entries: list, settings: MediaSettings,
               shared: bool = True) -> tuple[dict, list[str]]:
    """One clip's media for each (set index, label, generated) in `entries`: each set's drums,
    mix and spectrogram figure, and with `shared` the clip's bass and true drums (the
    players of every set link those).  Returns ({set index: (players HTML, spectrogram
    path) or an error text}, URIs written)."""
    from infer.job_io import join_uri
    from infer.sources import safe_clip_id
    from pipelines.storage import write_bytes

    written: list[str] = []

    def put(rel: str, data: bytes) -> str:
        uri = join_uri(settings.output, *rel.split("/"))
        write_bytes(uri, data, settings.s3_endpoint_url)
        written.append(uri)
        return rel

    media = Media(reference, settings)
    folder = posixpath.join(MEDIA, safe_clip_id(clip_id))
    params = settings.params
    rate = params.sample_rate
    out: dict = {}
    for index, label, generated in entries:
        try:
            ref = media.reference_clip(clip_id)
            if shared:
                put(f"{folder}/true.ogg", ogg_bytes(ref["true"][0], rate))
                if ref["bass"] is not None:
                    put(f"{folder}/bass.ogg", ogg_bytes(ref["bass"][0], rate))
                shared = False
            audio, image = media.drums(label, clip_id, generated)
            players = [_audio(put(f"{folder}/set{index}.ogg", ogg_bytes(audio, rate)), f"{label} drums")]
            panels = {}
            if ref["bass"] is not None:
                bass_audio, bass_img = ref["bass"]
                n = min(len(bass_audio), len(audio))
                players.insert(0, _audio(f"{folder}/bass.ogg", "bass"))
                players.append(_audio(put(f"{folder}/set{index}_mix.ogg",
                                          ogg_bytes(bass_audio[:n] + audio[:n], rate)), "mix"))
                panels["bass"] = bass_img
            players.append(_audio(f"{folder}/true.ogg", "true drums"))
            panels[f"{label} drums"] = image
            panels["true drums"] = ref["true"][1]
            out[index] = ("".join(players), put(f"{folder}/set{index}.png", spectrogram_png(panels, params)))
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            out[index] = f"{type(err).__name__}: {err}"
    return out, written


def _clip_row(media: tuple[str, str], clip_id: str, category: str, row) -> str:
    players, png = media
    metrics = "".join(f"<td>{_fmt(float(row[m]))}</td>" for m in TABLE_METRICS)
    return (f"<tr><td>{html.escape(clip_id)}</td><td>{category}</td><td>{_fmt(float(row['_score']))}</td>"
            f"{metrics}<td>{players}</td>"
            f"<td class=spec><a href=\"{png}\"><img class=spec src=\"{png}\" alt=\"spectrograms of {html.escape(clip_id)}\">"
            f"</a></td></tr>")


def _page(summary: dict, how: str, n_clips: int, labels: list[str], sections: list[str]) -> str:
    plots = [p for p in ("features.png", "buckets.png", "grades.png")
             if any(o.endswith(p) for o in summary.get("outputs", []))]
    nav = " | ".join(f"<a href=\"#set-{i}\">{html.escape(l)}</a>" for i, l in enumerate(labels))
    grader = summary.get("grader", {})
    grader_line = (f"cross-validated accuracy {grader['cv_accuracy']:.3f} on {grader['trained_on']} clips"
                   if grader.get("cv_accuracy") is not None else f"source: {grader.get('source')}")
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>cycledrums score report</title><style>{_STYLE}</style></head>
<body>
<h1>cycledrums score report</h1>
<p>Reference: {html.escape(str(summary['reference']['uri']))} ({summary['reference']['usable']} usable clips).
Full tables: <a href="clips.csv">clips.csv</a>, <a href="errors.csv">errors.csv</a>
({summary['errors']} errors), <a href="summary.json">summary.json</a>. Grader: {html.escape(grader_line)}.</p>
<p>Sets: {nav}</p>
<h2>Summary per set</h2>
<p>Means over each set's clips; Fréchet distances to the reference clips per Inception layer, with the
clip counts and covariance estimate each rests on. Baseline sets are in italics.</p>
{_sets_table(summary)}
<h2>Sanity ladder</h2>
<p>Does each metric rank true drums &gt; another clip's drums &gt; shaped noise, silence, a copy of the bass?
(set means; per-clip win rates, ties count half; pass = every rung in order with a win rate of at least 0.5)</p>
{_ladder_table(summary.get('sanity_ladder'))}
{_human_section(summary)}
<h2>Histograms</h2>
{''.join(f'<img src="{p}" alt="{p}" style="max-width:100%">' for p in plots)}
<p>Per set below: {n_clips} clips (worst, best and random thirds by {html.escape(how)}). Click a column header
to sort.</p>
{''.join(sections)}
<script>{_SCRIPT}</script>
</body></html>
"""
