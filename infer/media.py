"""The audio and pictures of the pages score writes (report.html, grade.html): Ogg files, the
spectrogram figure, and `Media`, which rebuilds each shown clip's audio and mel image from the
job's own inputs (files, or Parquet windows inverted with the job's Griffin-Lim setting).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)



# Seconds of audio per Vorbis write (see ogg_bytes).
OGG_BLOCK_SECONDS = 4


def ogg_bytes(audio: np.ndarray, rate: int) -> bytes:
    """Mono audio -> Ogg Vorbis bytes (peak-limited to 1)."""
    import soundfile as sf

    audio = np.asarray(audio, np.float32)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 1.0:
        audio = audio / peak
    if audio.size == 0:
        audio = np.zeros(rate // 10, np.float32)
    buf = io.BytesIO()
    # In blocks: libsndfile 1.2's Vorbis encoder crashes the process (SIGSEGV) when one
    # write holds more than about 90 s at 22.05 kHz, i.e. on any full song (issue #31).
    block = OGG_BLOCK_SECONDS * rate
    channels = audio.shape[1] if audio.ndim == 2 else 1
    with sf.SoundFile(buf, "w", rate, channels, format="OGG", subtype="VORBIS") as out:
        for start in range(0, audio.shape[0], block):
            out.write(audio[start:start + block])
    return buf.getvalue()


def spectrogram_png(panels: dict[str, np.ndarray], params) -> bytes:
    """Mel images stacked on one time axis: time (s), frequency (Hz, mel-spaced), colour bar (dB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infer.features import mel_bin_frequencies

    freqs = mel_bin_frequencies(params.n_mels, params.sample_rate)
    fps = params.sample_rate / params.hop_length
    frames = max(img.shape[1] for img in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.7 * len(panels) + 0.4), sharex=True, squeeze=False)
    mesh = None
    for ax, (name, image) in zip(axes[:, 0], panels.items()):
        db = params.db_min + image.astype(np.float32) * params.db_step
        mesh = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=params.db_min, vmax=params.db_max,
                         extent=(0, image.shape[1] / fps, 0, params.n_mels), interpolation="nearest")
        ticks = [t for t in (100, 500, 1000, 2000, 5000, 10000) if t <= freqs[-1]]
        ax.set_yticks(np.interp(ticks, freqs, np.arange(params.n_mels)), [f"{t:g}" for t in ticks])
        ax.set_ylabel("Hz")
        ax.set_xlim(0, frames / fps)
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(mesh, ax=axes[:, 0].tolist(), label="dB", fraction=0.03, pad=0.02)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class MediaSettings:
    """How a page's media are made (the report's and the grading sheet's): the mel parameters and the
    job's Griffin-Lim iterations for audio rebuilt from mel windows, the seed of the baselines' noise,
    and where the files go."""

    params: object                 # pipelines.mel.MelParams
    griffin_lim_iters: int
    seed: int
    output: str
    s3_endpoint_url: str | None = None


class Media:
    """Mel images and audio of the clips the page shows, made from the job's inputs."""

    def __init__(self, reference, settings: MediaSettings):
        self.reference, self.params = reference, settings.params
        self.s3, self.seed = settings.s3_endpoint_url, settings.seed
        self.n_iter = settings.griffin_lim_iters
        self._cache: dict = {}
        self._rows = {r["clip_id"]: r for r in getattr(reference, "audio_rows", [])}

    def _audio_file(self, uri: str) -> np.ndarray:
        from pipelines.audio import load_audio
        from pipelines.storage import read_bytes

        f = io.BytesIO(read_bytes(uri, self.s3))
        f.name = uri
        return load_audio(f, self.params.sample_rate, allow_silent=True).numpy()

    def _image(self, audio: np.ndarray) -> np.ndarray:
        import torch

        from pipelines.mel import audio_to_image

        return audio_to_image(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), self.params).numpy()

    def _invert(self, image: np.ndarray) -> np.ndarray:
        import torch

        from pipelines.mel import image_to_audio

        length = (image.shape[1] - 1) * self.params.hop_length  # centred STFT: frames - 1 hops
        return image_to_audio(torch.from_numpy(np.ascontiguousarray(image)), self.params, n_iter=self.n_iter,
                              length=length).numpy()

    def reference_clip(self, clip_id: str) -> dict:
        """{'true': (audio, image), 'bass': (audio, image) or None}."""
        key = ("ref", clip_id)
        if key not in self._cache:
            self._cache[key] = self._load_reference(clip_id)
        return self._cache[key]

    def _load_reference(self, clip_id: str) -> dict:
        if self.reference.kind == "audio":
            row = self._rows[clip_id]
            true = self._audio_file(row["drums_uri"])
            out = {"true": (true, self._image(true)), "bass": None}
            if row["bass_uri"]:
                bass = self._audio_file(row["bass_uri"])
                out["bass"] = (bass, self._image(bass))
            return out
        true_img, bass_img = _parquet_window(self.reference.uri, clip_id, self.params, self.s3)
        return {"true": (self._invert(true_img), true_img), "bass": (self._invert(bass_img), bass_img)}

    def drums(self, label: str, clip_id: str, source: str) -> tuple[np.ndarray, np.ndarray]:
        """(audio, image) of one set's drums for a clip; `source` is the row's `generated` column."""
        from infer import baselines as B

        ref = self.reference_clip(clip_id)
        true_audio, true_img = ref["true"]
        if label not in B.BASELINES:
            audio = self._audio_file(source)
            return audio, self._image(audio)
        if label == B.TRUE:
            return true_audio, true_img
        if label == B.BASS and ref["bass"] is not None:
            return ref["bass"]
        if label == B.OTHER and source:
            other_audio, other_img = self.reference_clip(source)["true"]
            reps = -(-len(true_audio) // max(1, len(other_audio)))
            return np.tile(other_audio, reps)[:len(true_audio)], B.fit_frames(other_img, true_img.shape[1])
        if label == B.NOISE:
            image = B.shaped_noise_image(true_img, self.params, B.stable_seed(self.seed, clip_id, B.NOISE))
            return self._invert(image), image
        return np.zeros_like(true_audio), np.zeros_like(true_img)


def _parquet_window(uri: str, clip_id: str, params, s3_endpoint_url: str | None):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem
    from pipelines.windows import binary_to_images

    track, window = clip_id.rsplit("/w", 1)
    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["track_id", "window", "drums", "bass"],
        filter=(pc.field("split") == "test") & (pc.field("window") == int(window)))
    from pipelines.clip_ids import window_clip_id

    ids = [window_clip_id(t, w) for t, w in zip(table.column("track_id").to_pylist(),
                                                table.column("window").to_pylist())]
    i = ids.index(clip_id)
    drums = binary_to_images(table.column("drums").slice(i, 1), params)[0]
    bass = binary_to_images(table.column("bass").slice(i, 1), params)[0]
    return np.asarray(drums, np.uint8), np.asarray(bass, np.uint8)
