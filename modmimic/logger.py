"""Run directories and per-run logging.

``make_run_dir`` creates ``<train.output_dir>/<experiment.name>/<YYYYmmddHHMMSS>[_<n>]`` (never an existing
directory, never a prompt); ``find_run_dir`` locates the run a ``resume=true`` continues.

Logging: one JSON object per epoch (``logs/metrics.jsonl``), TensorBoard event files (``logs/tb``), a PNG
of the training/validation loss curves (``logs/curves.png``) and an optional copy of stdout (``logs/log.txt``).

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

from modmimic.config import ConfigError
from modmimic.io import _atomic_write_bytes, atomic_write_text

RUN_MARKER = os.path.join("models", "last.pth")
PLOT_EVERY_S = 10.0


def make_run_dir(cfg) -> str:
    """A new ``<output_dir>/<experiment.name>/<timestamp>[_<n>]`` with ``logs/`` and ``models/`` (never an
    existing directory; safe against concurrent runs)."""
    root = os.path.join(os.path.abspath(os.path.expanduser(str(cfg.train.output_dir))), str(cfg.experiment.name))
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
    raise RuntimeError(f"cannot create a new run directory under {root}")


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
    """The newest run directory that holds a ``config.yaml`` but no checkpoint (its process ended before the first
    epoch did): ``resume_dir`` itself, else one under ``<output_dir>/<name>/``. None when there is none."""
    if resume_dir:
        cands = [os.path.abspath(os.path.expanduser(str(resume_dir)))]
    else:
        cands = glob.glob(os.path.join(os.path.abspath(os.path.expanduser(str(output_dir))), str(name), "*"))
    cands = [p for p in cands if os.path.isfile(os.path.join(p, "config.yaml")) and not is_run_dir(p)]
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

    def __init__(self, log_dir: str, log_tb: bool = True, start_epoch: int = 1, plot: bool = True):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.jsonl_path = os.path.join(log_dir, "metrics.jsonl")
        self.png_path = os.path.join(log_dir, "curves.png")
        self.records = [r for r in read_metrics(self.jsonl_path) if r.get("epoch", 0) < start_epoch]
        if os.path.exists(self.jsonl_path):  # resume: drop epochs after the checkpoint and any torn last line
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
        with open(self.jsonl_path, "a") as f:  # one write of a whole line, flushed to disk
            f.write(self._line(rec))
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()
        if self.plot:
            # redraw at most every PLOT_EVERY_S seconds (and never more than 5% of the time); close() draws the rest
            if time.monotonic() - self._last_plot >= max(PLOT_EVERY_S, 20 * self._plot_cost):
                self.plot_curves()
            else:
                self._plot_pending = True

    def plot_curves(self) -> None:
        """``curves.png``: Train/Loss and Valid/Loss against the epoch (log scale when positive), and the rollout
        success rates in a second panel once there are any."""
        t0 = time.monotonic()
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            self.plot = False
            return

        def series(name):
            return [(r["epoch"], r[name]) for r in self.records if isinstance(r.get(name), (int, float))]

        success = sorted({k for r in self.records for k in r if k.startswith("Rollout/Success_Rate/")})
        fig, axes = plt.subplots(1, 2 if success else 1, figsize=(11 if success else 6, 4), squeeze=False)
        ax = axes[0, 0]
        positive = True
        for name in ("Train/Loss", "Valid/Loss"):
            pts = series(name)
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=name)
                positive &= all(v > 0 for _, v in pts)
        if positive and ax.lines:
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        for name in success:
            pts = series(name)
            axes[0, 1].plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=name.split("/")[-1])
            axes[0, 1].set_ylabel("rollout success rate")
            axes[0, 1].set_ylim(-0.02, 1.02)
        for a in axes[0]:
            a.set_xlabel("epoch")
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.grid(True, alpha=0.3)
            if a.lines:
                a.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        _atomic_write_bytes(self.png_path, lambda f: f.write(buf.getbuffer()))
        self._plot_cost = time.monotonic() - t0
        self._last_plot, self._plot_pending = time.monotonic(), False

    def close(self) -> None:
        if self._plot_pending:
            self.plot_curves()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class Tee:
    """Copies what is written to a stream into a file as well (robomimic ``terminal_output_to_txt``)."""

    def __init__(self, stream, path: str):
        self.stream = stream
        self.file = open(path, "a", buffering=1)

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
