"""Run directories and per-run logging.

``make_run_dir`` creates ``<train.output_dir>/<experiment.name>/<YYYYmmddHHMMSS>[_<n>]`` (never an existing
directory, never a prompt); ``find_run_dir`` locates the run a ``resume=true`` continues.

Logging: one JSON object per epoch (``logs/metrics.jsonl``), TensorBoard event files (``logs/tb``, rollout videos
included), optionally Weights & Biases (``logs/wandb``, the same scalars, the resolved config and rollout videos), a
PNG of every loss term per update and the rollout success rate (``logs/curves.png``) and an optional copy of stdout
(``logs/log.txt``).

Scalar names follow robomimic's namespaces: ``Train/<name>``, ``Valid/<name>``, ``Rollout/<metric>/<env>``,
``Optimizer/<net>0_lr``, ``Timing_Stats/<Train|Valid>_<what>`` (minutes) and ``System/<what>``.

``curves.png`` is replaced through a temporary file and a rename (redrawn at most every ``PLOT_EVERY_S`` seconds and
at the end). ``metrics.jsonl`` is an append-only log: each epoch appends one whole line and flushes it to disk, so a
crash can at worst cut the last line short; readers skip such a line and a resumed run rewrites the file (through a
temporary file) without it and without epochs after the checkpoint. Rewriting the whole file every epoch would
cost O(epochs) per epoch. TensorBoard event files are append-only streams owned by TensorBoard.
"""
from __future__ import annotations

import glob
import io
import json
import math
import os
import sys
import time
import warnings

from modmimic.config import ConfigError, check_run_name
from modmimic.io import _atomic_write_bytes, atomic_write_text
from modmimic.rundir import RunDirError, open_append

RUN_MARKER = os.path.join("models", "last.pth")
PLOT_EVERY_S = 10.0


def make_run_dir(cfg) -> str:
    """A new ``<output_dir>/<experiment.name>/<timestamp>[_<n>]`` with ``logs/`` and ``models/`` (never an
    existing directory; safe against concurrent runs)."""
    check_run_name(cfg.experiment.name)
    root = os.path.join(os.path.abspath(os.path.expanduser(str(cfg.train.output_dir))), str(cfg.experiment.name))
    try:
        os.makedirs(root, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M%S")
        for n in range(10000):
            path = os.path.join(root, stamp if n == 0 else f"{stamp}_{n}")
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            os.makedirs(os.path.join(path, "logs"))
            os.makedirs(os.path.join(path, "models"))
            return path
    except OSError as e:
        raise RunDirError(f"train.output_dir={cfg.train.output_dir}: cannot create a run directory under {root} "
                          f"({e.strerror or type(e).__name__})") from None
    raise RunDirError(f"cannot create a new run directory under {root}: 10000 runs started this second")


def check_dir_creatable(path, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when directory ``path`` cannot exist: a part of it is a file, or
    its nearest existing parent is not writable. Nothing is created."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    p = path
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not os.path.isdir(p):
        raise ConfigError(f"{key}={path} cannot be a directory: {p} is a file")
    if p != path and not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be created: {p} is not writable")
    if p == path and not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} is not writable")


def unfinished_run(output_dir: str, name: str | None = None, resume_dir: str | None = None) -> str | None:
    """The newest run directory that holds a ``config.yaml`` but no checkpoint (its process was killed before the
    first epoch ended): ``resume_dir`` itself, else one under ``<output_dir>/<name>/``. A run that failed (it wrote
    ``logs/error.txt``) is not one. None when there is none."""
    if resume_dir:
        cands = [os.path.abspath(os.path.expanduser(str(resume_dir)))]
    else:
        cands = glob.glob(os.path.join(os.path.abspath(os.path.expanduser(str(output_dir))), str(name), "*"))
    # not a run that failed (logs/error.txt: restarting it would fail the same way)
    cands = [p for p in cands if os.path.isfile(os.path.join(p, "config.yaml")) and not is_run_dir(p)
             and not os.path.lexists(os.path.join(p, "logs", "error.txt"))]
    return max(cands, key=lambda p: os.path.getmtime(os.path.join(p, "config.yaml"))) if cands else None


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_MARKER))


def find_run_dir(output_dir: str, name: str | None = None, resume_dir: str | None = None) -> str:
    """The run to resume: ``resume_dir``; else ``output_dir`` itself if it is a run directory; else the run under
    ``<output_dir>/<name>/`` whose ``last.pth`` is the newest."""
    if resume_dir:
        path = os.path.abspath(os.path.expanduser(str(resume_dir)))
        if not is_run_dir(path):
            raise ConfigError(f"resume_dir={resume_dir}: no {RUN_MARKER} there; not a modmimic run directory "
                              "(or its first epoch never finished)")
        return path
    out = os.path.abspath(os.path.expanduser(str(output_dir)))
    if is_run_dir(out):
        return out
    check_run_name(name)
    root = os.path.join(out, str(name))
    runs = [p for p in glob.glob(os.path.join(root, "*")) if is_run_dir(p)]
    if not runs:
        raise ConfigError(f"resume=true: no run to resume: {out} is not a run directory and {root} holds no run "
                          f"with {RUN_MARKER}; pass resume_dir=<run dir>")
    return max(runs, key=lambda p: os.path.getmtime(os.path.join(p, RUN_MARKER)))


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (empty when it does not exist). A line cut short by a crash in the
    middle of an append is ignored."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


class RunLogger:
    """Writes every epoch's scalars to the JSONL file, TensorBoard and the curves plot.

    ``start_epoch``: on resume, records of later epochs (written before a crash, after the last checkpoint) are
    dropped, and TensorBoard purges its events from that epoch on.
    """

    def __init__(self, log_dir: str, log_tb: bool = True, start_epoch: int = 1, plot: bool = True, wandb_run=None):
        self.log_dir = log_dir
        self.wandb = wandb_run  # a wandb run (start_wandb) or None
        self.plotted: dict = {}
        os.makedirs(log_dir, exist_ok=True)
        self.jsonl_path = os.path.join(log_dir, "metrics.jsonl")
        self.png_path = os.path.join(log_dir, "curves.png")
        self.records = [r for r in read_metrics(self.jsonl_path) if r.get("epoch", 0) < start_epoch]
        if os.path.exists(self.jsonl_path):  # resume: drop epochs after the checkpoint and any torn last line
            from modmimic.io import atomic_write_text

            atomic_write_text(self.jsonl_path, "".join(self._line(r) for r in self.records))
        self.plot = plot
        self._last_plot, self._plot_cost, self._plot_pending = -math.inf, 0.0, False
        self.tb = None
        if log_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional dependency (extra "log")
                warnings.warn("experiment.logging.log_tb is true but tensorboard is not installed "
                              "(pip install 'modmimic[log]'); logging to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(os.path.join(log_dir, "tb"), purge_step=start_epoch if start_epoch > 1 else None)

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n"

    def record(self, epoch: int, scalars: dict, step: int | None = None) -> None:
        """Log one epoch's scalars (names as above) everywhere; ``step`` (the global gradient step) goes to the
        JSONL record only (TensorBoard's x axis is the epoch, as in robomimic)."""
        rec = {"epoch": epoch, **({} if step is None else {"step": step}), **scalars}
        self.records.append(rec)
        with open_append(os.path.dirname(self.log_dir), self.jsonl_path) as f:  # one whole line, flushed to disk
            f.write(self._line(rec))
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({"epoch": epoch, **{k: v for k, v in scalars.items()
                                              if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        if self.plot:
            # redraw at most every PLOT_EVERY_S seconds (and never more than 5% of the time); close() draws the rest
            if time.monotonic() - self._last_plot >= max(PLOT_EVERY_S, 20 * self._plot_cost):
                self._draw()
            else:
                self._plot_pending = True

    def _draw(self) -> None:
        """:meth:`plot_curves`, best effort: the picture of the curves never stops a run (a failure warns once and
        turns plotting off; the metrics log and TensorBoard have the numbers)."""
        try:
            self.plot_curves()
        except Exception as e:  # noqa: BLE001 - matplotlib raises many kinds
            self.plot, self._plot_pending = False, False
            warnings.warn(f"curves.png is not drawn any more: {type(e).__name__}: {e}", stacklevel=3)

    def plot_curves(self) -> None:
        """``curves.png``: one panel per update (``total``, then e.g. ``critic``, ``vf``, ``actor``) with every loss
        term of that update, training and validation side by side (log scale when positive), and a panel of rollout
        success rates with their 95 % Wilson interval once there are any. All panels share the epoch axis, so a
        single rollout point sits at its epoch. :attr:`plotted` holds what was drawn (:func:`curve_panels`)."""
        t0 = time.monotonic()
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            self.plot = False
            return
        panels = curve_panels(self.records)
        self.plotted = panels
        if not panels:
            self._plot_pending = False
            return
        epochs = [r["epoch"] for r in self.records if isinstance(r.get("epoch"), int)]
        lo, hi = (min(epochs), max(epochs)) if epochs else (0, 1)
        n = len(panels)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        try:
            for ax, (title, series) in zip(axes.flat, panels.items()):
                success = title == "rollout success rate"
                positive = True
                terms = sorted({label.split(" ", 1)[-1] for label in series})  # train and valid of a term: one colour
                for label, pts in series.items():
                    xs = [p[0] for p in pts]
                    ys = [p[1] for p in pts]
                    marker = "o" if len(pts) < 30 else None
                    style = "--" if label.startswith("valid") else "-"
                    if success and len(pts[0]) == 4:
                        # Wilson bounds at a rate of 0 or 1 can sit a rounding error inside the rate: never below zero
                        err = [[max(0.0, y - p[2]) for y, p in zip(ys, pts)], [max(0.0, p[3] - y) for y, p in zip(ys, pts)]]
                        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"{label} (95% CI)")
                        if len(pts) > 1:
                            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
                    else:
                        ax.plot(xs, ys, style, marker=marker, label=label,
                                color=f"C{terms.index(label.split(' ', 1)[-1]) % 10}")
                    positive &= all(y > 0 for y in ys)
                if success:
                    ax.set_ylim(-0.02, 1.02)
                    ax.set_ylabel("success rate")
                elif positive and series:
                    ax.set_yscale("log")
                ax.set_title(title)
                ax.set_xlabel("epoch")
                ax.set_xlim(lo - 0.5, hi + 0.5)  # every panel on the run's epochs, even with one point
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7)
            for ax in list(axes.flat)[n:]:
                ax.set_visible(False)
            fig.tight_layout()
            from modmimic.io import _atomic_write_bytes

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        finally:  # an interrupted drawing (Ctrl-C, a stop signal) leaves no figure open behind it
            plt.close(fig)
        _atomic_write_bytes(self.png_path, lambda f: f.write(buf.getbuffer()))
        self._plot_cost = time.monotonic() - t0
        self._last_plot, self._plot_pending = time.monotonic(), False

    def log_video(self, tag: str, path: str, epoch: int) -> None:
        """A rollout video (an MP4 written by :class:`modmimic.envs.video.VideoWriter`) to TensorBoard (an animated
        image, as ``add_video`` writes) and to Weights & Biases, when they are on."""
        if self.tb is None and self.wandb is None:
            return
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Video(path, format="mp4"), "epoch": epoch})
        if self.tb is not None:
            try:
                summary = video_summary(tag, path)
            except Exception as e:  # noqa: BLE001 - a video that cannot be read back must not stop training
                warnings.warn(f"cannot add {path} to TensorBoard: {e}")
                return
            self.tb._get_file_writer().add_summary(summary, epoch)
            self.tb.flush()

    def close(self) -> None:
        """Draw what is pending and close the writers (idempotent)."""
        if self._plot_pending and self.plot:
            self._draw()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def discard(self) -> None:
        """Close the writers without drawing (the run directory is about to be removed)."""
        self._plot_pending = False
        self.close()


def curve_panels(records: list[dict]) -> dict:
    """What ``curves.png`` shows, from the metrics records: ``{panel title: {series label: [(epoch, value), ...]}}``.

    Loss terms are the ``Train/...`` and ``Valid/...`` scalars whose last name part contains ``loss`` (any case).
    ``Train/Loss`` (the sum) goes to the panel ``total``; ``Train/<update>/<term>`` to the panel ``<update>`` (IQL:
    ``critic`` with ``loss``, ``critic1_loss``, ``critic2_loss``; ``vf``; ``actor``), labelled ``train <term>`` and
    ``valid <term>``. Rollout success rates go to ``rollout success rate`` as ``(epoch, rate, low, high)`` with the
    Wilson interval when the records have it."""
    panels: dict = {}
    for r in records:
        epoch = r.get("epoch")
        if not isinstance(epoch, int):
            continue
        for k, v in r.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                continue
            parts = k.split("/")
            if parts[0] in ("Train", "Valid") and "loss" in parts[-1].lower():
                title = "total" if len(parts) == 2 else "/".join(parts[1:-1])
                label = f"{parts[0].lower()} {parts[-1]}"
                panels.setdefault(title, {}).setdefault(label, []).append((epoch, float(v)))
            elif k.startswith("Rollout/Success_Rate/"):
                env = k[len("Rollout/Success_Rate/"):]
                low, high = r.get(f"Rollout/Success_Rate_CI95_Low/{env}"), r.get(f"Rollout/Success_Rate_CI95_High/{env}")
                point = (epoch, float(v)) if low is None or high is None else (epoch, float(v), float(low), float(high))
                panels.setdefault("rollout success rate", {}).setdefault(env, []).append(point)
    order = ["total"] + sorted(t for t in panels if t not in ("total", "rollout success rate"))
    return {t: dict(sorted(panels[t].items())) for t in order + ["rollout success rate"] if t in panels}


def read_video_frames(path: str, every: int = 1, max_frames: int = 600):
    """RGB frames ``[T, H, W, 3]`` uint8 of an MP4 (imageio's ffmpeg plugin)."""
    import imageio
    import numpy as np

    reader = imageio.get_reader(path, format="ffmpeg")
    try:
        frames = [f for i, f in enumerate(reader) if i % every == 0][:max_frames]
    finally:
        reader.close()
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def video_summary(tag: str, path: str, fps: int = 10, max_side: int = 256):
    """The TensorBoard summary ``SummaryWriter.add_video`` writes (an animated GIF in an image summary), made
    without moviepy (which ``add_video`` needs and modmimic does not depend on)."""
    import numpy as np
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = read_video_frames(path)
    if len(frames) == 0:
        raise ValueError(f"{path} has no frames")
    h, w = frames.shape[1:3]
    scale = min(1.0, max_side / max(h, w))
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    if scale < 1.0:
        images = [im.resize((max(1, int(w * scale)), max(1, int(h * scale)))) for im in images]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    image = Summary.Image(height=images[0].height, width=images[0].width, colorspace=3,
                          encoded_image_string=buf.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def start_wandb(cfg, run_dir: str):
    """A Weights & Biases run for ``run_dir`` (``experiment.logging.wandb_proj_name``), with the resolved config;
    files go to ``<run_dir>/logs/wandb``. ``WANDB_MODE=offline`` (or ``disabled``) is honoured by wandb itself. The
    run id is derived from the run directory, so a resumed run continues the same wandb run."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("experiment.logging.log_wandb=true needs the wandb package: pip install 'modmimic[wandb]'"
                          ) from None
    from omegaconf import OmegaConf

    name = f"{cfg.experiment.name}_{os.path.basename(run_dir)}"
    run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:64]
    folder = os.path.join(run_dir, "logs")
    os.makedirs(folder, exist_ok=True)
    return wandb.init(project=str(cfg.experiment.logging.wandb_proj_name), name=name, id=run_id, resume="allow",
                      dir=folder, config=OmegaConf.to_container(cfg, resolve=True), settings=wandb.Settings(
                          console="off", silent=True))


class Tee:
    """Copies what is written to a stream into a file as well (robomimic ``terminal_output_to_txt``)."""

    def __init__(self, stream, path: str):
        self.stream = stream
        self.file = open_append(os.path.dirname(os.path.dirname(os.path.abspath(path))), path, buffering=1)

    def write(self, s):
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return self.stream.isatty()

    def fileno(self):
        return self.stream.fileno()

    def close(self):
        self.file.close()


class tee_stdout:
    """Context manager: ``sys.stdout`` also goes to ``path`` while active."""

    def __init__(self, path: str | None):
        self.path = path
        self.tee = None

    def __enter__(self):
        if self.path is not None:
            self.tee = Tee(sys.stdout, self.path)
            sys.stdout = self.tee
        return self

    def __exit__(self, *exc):
        if self.tee is not None:
            sys.stdout = self.tee.stream
            self.tee.close()
        return False
