"""Multi-task training: the task vocabulary of a run and each demo's task (``task.conditioning``).

Every demo has a task: its ``train.data`` entry's ``task`` (a name) and/or ``lang`` (an instruction, robomimic v0.5's
key), else the demo's own (a LeRobot episode's task string, an HDF5 demo's ``task`` attribute or its ``ep_meta``
``lang``/``task``). The run's vocabulary lists the training demos' tasks in order of first appearance, each as a
``name`` (what an environment reports, e.g. ``reach-v3``) and a ``text`` (the instruction; the name when none is
given), with one embedding row per task:

* ``onehot``: row ``i`` is the ``i``-th unit vector (``D`` = number of tasks);
* ``language``: the text encoder's embedding of the text (``task.text_encoder``), computed once per task here, so
  training and acting never run the text encoder per step; an instruction outside the vocabulary is embedded when
  asked for (zero-shot), which needs the encoder's local weights.

Batches carry ``("task", "id")`` and ``("task", "embedding")`` per row (:mod:`modmimic.keys`); checkpoints store the
vocabulary (``task_vocab``: names, texts, embeddings), so a policy acts with a task given by name or instruction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from modmimic.config import ConfigError, to_plain
from modmimic.data.episodes import DatasetError


@dataclass
class TaskVocab:
    conditioning: str  # onehot | language
    names: list
    texts: list
    embeddings: torch.Tensor  # [N, D] float32
    text_encoder: dict | None = field(default=None, repr=False)  # {fn, kwargs}: embeds instructions not listed
    stored: bool = False  # read from a checkpoint: its text encoder resolves only in trusted modules

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def find(self, task: str) -> int | None:
        """Row of ``task`` (a name, else a text), or None."""
        for table in (self.names, self.texts):
            if task in table:
                return table.index(task)
        return None

    def embed(self, tasks) -> torch.Tensor:
        """``[len(tasks), D]``: each task's row; a language policy embeds an instruction outside the vocabulary with
        its text encoder. An unknown one-hot task is a :class:`ConfigError` naming the known ones."""
        rows, new = [], []
        for t in tasks:
            i = self.find(str(t))
            if i is None and self.conditioning != "language":
                raise ConfigError(f"task {t!r} is not one of the policy's {len(self)} tasks: {', '.join(self.names)}")
            rows.append(i)
            if i is None and str(t) not in new:
                new.append(str(t))
        extra = {}
        if new:
            emb = text_embeddings(self.text_encoder, new, stored=self.stored)
            if emb.shape[1] != self.dim:
                raise ConfigError(f"the text encoder gives embeddings of size {emb.shape[1]}, the policy was trained "
                                  f"on size {self.dim}")
            extra = dict(zip(new, emb))
        return torch.stack([self.embeddings[i] if i is not None else extra[str(t)] for t, i in zip(tasks, rows)])

    def to_plain(self) -> dict:
        """What a checkpoint stores (plain containers and one tensor)."""
        return {"conditioning": self.conditioning, "names": list(self.names), "texts": list(self.texts),
                "embeddings": self.embeddings.detach().cpu().float().clone(),
                "text_encoder": self.text_encoder}

    @classmethod
    def from_plain(cls, d: dict, source: str = "checkpoint") -> "TaskVocab":
        try:
            names, texts = [str(x) for x in d["names"]], [str(x) for x in d["texts"]]
            emb = torch.as_tensor(d["embeddings"], dtype=torch.float32)
            cond = str(d["conditioning"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{source}: malformed task_vocab ({type(e).__name__}: {e})") from None
        if emb.dim() != 2 or emb.shape[0] != len(names) or len(texts) != len(names) or not len(names):
            raise ConfigError(f"{source}: task_vocab has {len(names)} names, {len(texts)} texts and embeddings of "
                              f"shape {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ConfigError(f"{source}: task_vocab embeddings are not finite")
        enc = d.get("text_encoder")
        return cls(cond, names, texts, emb, enc if isinstance(enc, dict) else None, stored=True)


def text_embeddings(text_encoder: dict | None, texts: list, stored: bool = False) -> torch.Tensor:
    """``[len(texts), D]`` from ``task.text_encoder`` (``{fn: dotted path, kwargs: {...}}``, null kwargs left out);
    ``stored``: the spec
    comes from a checkpoint, so ``fn`` resolves only in trusted modules (:mod:`modmimic.trust`)."""
    from modmimic.trust import UntrustedNameError, resolve, stored_config_modules

    spec = dict(text_encoder or {})
    if not spec.get("fn"):
        raise ConfigError("task.text_encoder.fn is not set: instructions cannot be embedded")
    try:
        fn = resolve(str(spec["fn"]), trusted=stored_config_modules() if stored else "scope")
    except UntrustedNameError as e:
        raise ConfigError(f"task.text_encoder.fn: {e}") from None
    kwargs = {k: v for k, v in dict(spec.get("kwargs") or {}).items() if v is not None}  # null: fn's default
    emb = np.asarray(fn(list(texts), **kwargs), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts) or not np.isfinite(emb).all():
        raise ConfigError(f"task.text_encoder.fn {spec['fn']} returned an array of shape {emb.shape} (finite "
                          f"[{len(texts)}, D] expected)")
    return torch.from_numpy(emb)


def demo_tasks(store, entry: dict) -> list[tuple[str, str]]:
    """``(name, text)`` of each demo of ``store`` (see the module docstring)."""
    name, lang = entry.get("task"), entry.get("lang")
    if name or lang:
        return [(str(name or lang), str(lang or name))] * len(store.demos)
    tasks = list(getattr(store, "tasks", None) or [])
    if len(tasks) == len(store.demos) and all(tasks):
        return [(str(t), str(t)) for t in tasks]
    raise DatasetError(f"{store.path}: task.conditioning needs each demo's task: give its train.data entry "
                       "task: <name> and/or lang: <instruction>, or use demos that name their task (LeRobot task "
                       "strings, an HDF5 demo attribute 'task' or ep_meta 'lang'/'task')")


def build_vocab(cfg, per_store: list) -> TaskVocab:
    """The vocabulary over the training demos' ``(name, text)`` lists (one list per store)."""
    names, texts = [], []
    for pairs in per_store:
        for n, t in pairs:
            if n in names:
                if texts[names.index(n)] != t:
                    raise ConfigError(f"task {n!r} has two instructions: {texts[names.index(n)]!r} and {t!r}")
                continue
            names.append(n)
            texts.append(t)
    cond = str(cfg.task.conditioning)
    enc = to_plain(cfg.task.text_encoder) if cond == "language" else None
    emb = torch.eye(len(names)) if cond == "onehot" else text_embeddings(enc, texts)
    return TaskVocab(cond, names, texts, emb, enc)


def demo_ids(vocab: TaskVocab, pairs: list, path: str) -> torch.Tensor:
    """Each demo's row in ``vocab`` (int64); a validation demo whose task was not trained on is an error."""
    out = []
    for n, _ in pairs:
        i = vocab.find(n)
        if i is None:
            raise DatasetError(f"{path}: task {n!r} of a validation demo is not among the training tasks "
                               f"({', '.join(vocab.names)})")
        out.append(i)
    return torch.tensor(out, dtype=torch.int64)


def conditioned(cfg) -> bool:
    return (cfg.get("task") or {}).get("conditioning") not in (None, "none", "None")
