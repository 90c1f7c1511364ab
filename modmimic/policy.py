"""Self-describing checkpoints, ``RolloutPolicy`` and ``policy_from_checkpoint``.

A checkpoint (``torch.save`` of a dict of plain containers, written atomically) holds everything needed to rebuild
and run a policy:

    format / format_version       "modmimic-checkpoint", 2
    versions                      modmimic, torch, tensordict, python
    algo_name, recipe_name
    config                        the resolved config, as a JSON string (a plain dict once loaded)
    shape_metadata                {ac_dim, all_shapes, all_obs_keys, action_keys}
    env_metadata                  the dataset's env_args
    obs_normalization_stats       {key: {offset, scale}} as nested lists, or None
    action_normalization_stats    {action key: {offset, scale}} as nested lists, or None
    model                         Algo.serialize()
    variable_state                training counters (epoch, best scores, ...), set by the trainer
    trainer_state                 optional: sampler / RNG states (tensors, lists, numbers) and the unresolved config
                                  (a JSON string) for bit-exact resume

Checkpoints are data, never code. The file holds only dicts, lists, tuples, strings, numbers, booleans, None and
tensors (:func:`save_checkpoint` refuses anything else), and :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``: a file with any other pickled object is refused (:class:`CheckpointError`)
without running it. The loaded dict's shape is checked field by field before use. The config's callables
(``_target_``, ``fn``) resolve only inside ``modmimic.*`` unless the caller trusts more modules
(``trusted_modules=`` or ``MODMIMIC_TRUSTED_MODULES``, see :mod:`modmimic.trust`). Format 1 (modmimic before this
format, which pickled numpy objects) is refused: retrain.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import re
from collections import Counter, OrderedDict

import numpy as np
import torch
from omegaconf import OmegaConf

import modmimic
from modmimic.algo import Algo, algo_factory
from modmimic.config import ConfigError, config_factory
from modmimic.data.stats import stats_from_lists, stats_to_lists
from modmimic.io import atomic_torch_save
from modmimic.rotations import RUNTIME_CONVERSIONS, convert_rot_6d
from modmimic.stored import StoredFileError, check_resolvers, loads_json
from modmimic.trust import UntrustedNameError, check_config_names, stored_config_modules, trusting

FORMAT = "modmimic-checkpoint"
FORMAT_VERSION = 2
JSON_FIELDS = (("config",), ("trainer_state", "config"))  # stored as JSON strings, plain dicts once loaded


class CheckpointError(ValueError):
    """A file is not a (compatible) modmimic checkpoint, or it is refused (it would run code)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most ``limit`` characters (omegaconf's add ``full_key:`` lines)."""
    return " ".join(str(e).split())[:limit]


def versions() -> dict:
    import tensordict

    return {"modmimic": str(modmimic.__version__), "torch": str(torch.__version__),
            "tensordict": str(tensordict.__version__), "python": platform.python_version()}


def make_checkpoint(algo: Algo, obs_normalization_stats=None, action_normalization_stats=None, env_meta=None,
                    variable_state=None, trainer_state=None, action_keys=None, task_vocab=None) -> dict:
    """``task_vocab``: a multi-task policy's :class:`modmimic.tasks.TaskVocab` (stored as ``task_vocab``, its
    embedding size as ``shape_metadata.task_dim``)."""
    cfg = OmegaConf.to_container(algo.config, resolve=True)
    out = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
        "algo_name": algo.algo_name, "recipe_name": algo.recipe_name, "config": cfg,
        "shape_metadata": {"ac_dim": algo.ac_dim, "all_shapes": {k: list(v) for k, v in algo.obs_key_shapes.items()},
                           "all_obs_keys": sorted(algo.obs_key_shapes),
                           "action_keys": list(action_keys or cfg["train"]["action_keys"])},
        "env_metadata": env_meta or {},
        "obs_normalization_stats": stats_to_lists(obs_normalization_stats),
        "action_normalization_stats": stats_to_lists(action_normalization_stats),
        "model": algo.serialize(),
        "variable_state": variable_state or {},
        "trainer_state": trainer_state,
    }
    if task_vocab is not None:
        out["task_vocab"] = task_vocab.to_plain()
        out["shape_metadata"]["task_dim"] = task_vocab.dim
    return out


# --- storage: plain containers only ------------------------------------------------------------------------

_PLAIN_DICTS = (dict, OrderedDict, Counter)  # what torch.load(weights_only=True) rebuilds
_PLAIN_LEAVES = (str, int, float, bool, type(None), torch.Tensor, torch.nn.Parameter, torch.Size)


def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first entry that ``torch.load(weights_only=True)`` could not read back."""
    if type(obj) in _PLAIN_DICTS:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoint keys are str or int")
            check_plain(v, f"{where}.{k}")
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif type(obj) not in _PLAIN_LEAVES:  # exact types: a str subclass (torch's TorchVersion) pickles its class
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                        "dicts, lists, tuples, str, numbers, bool, None and tensors (convert it first)")


def _config_text(cfg, where: str) -> str:
    text = json.dumps(cfg)
    if json.loads(text) != cfg:
        raise TypeError(f"checkpoint {where} does not survive a JSON round trip (non-string keys or tuples?)")
    return text


def encode_checkpoint(ckpt: dict) -> dict:
    """The stored form of a checkpoint dict: configs as JSON strings; every entry plain (checked)."""
    out = dict(ckpt)
    for path in JSON_FIELDS:
        parent = out
        for k in path[:-1]:
            if not isinstance(parent.get(k), dict):
                parent = None
                break
            parent[k] = parent = dict(parent[k])
        if parent is not None and isinstance(parent.get(path[-1]), dict):
            parent[path[-1]] = _config_text(parent[path[-1]], ".".join(path))
    check_plain(out)
    return out


def save_checkpoint(path: str, ckpt: dict) -> None:
    atomic_torch_save(encode_checkpoint(ckpt), path)


def _weights_only_reason(e: BaseException) -> str:
    """What torch's weights-only unpickler refused, in modmimic's words (the global it names, or the opcode)."""
    text = " ".join(str(e).split())
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it names the callable {m.group(1)}"
    return "an object that is not a tensor, number, string or container"


def read_checkpoint_file(path: str):
    """``torch.load(path, map_location="cpu", weights_only=True)``, every failure a :class:`CheckpointError` in
    modmimic's words (never torch's advice to switch the safe loader off)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}" if not os.path.exists(path)
                              else f"checkpoint {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused pickles, truncated files, not a torch file at all
        text = str(e).lower()
        op = re.search(r"unsupported operand (\d+)", text)
        if op:  # not a pickle of plain data: random bytes, or a protocol-0/1 pickle (its first opcode is refused)
            code = int(op.group(1))
            raise CheckpointError(
                f"cannot read checkpoint {path}: refused: it is not a torch file of plain data (pickle opcode {code} "
                f"{chr(code)!r} is not one a checkpoint uses); nothing in it was run") from None
        if "weights only" in text or "weights_only" in text:
            raise CheckpointError(
                f"{path}: refused: it contains pickled objects that would run code when loaded "
                f"({_weights_only_reason(e)}). modmimic loads checkpoints as data only (tensors, numbers, strings, "
                "containers); a checkpoint written by modmimic before checkpoint format 2 also stores numpy objects: "
                "retrain with this version") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {one_line(e)}") from None


def _field(ckpt: dict, key: str, types, source: str, what: str):
    if key not in ckpt:
        raise CheckpointError(f"{source}: the checkpoint has no {key!r} field ({what}); it is incomplete or not "
                              "written by modmimic")
    v = ckpt[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in (types if isinstance(types, tuple)
                                                                         else (types,))):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise CheckpointError(f"{source}: checkpoint field {key!r} ({what}) must be {names}, got "
                              f"{type(v).__name__}")
    return v


def _json_config(text, source: str, key: str) -> dict:
    """A stored config field (JSON text, or a dict) under the stored-file rules: nesting bounded, no
    interpolation resolvers (:mod:`modmimic.stored`)."""
    if not isinstance(text, (str, dict)):
        raise CheckpointError(f"{source}: checkpoint field {key!r} must be a JSON string or a dict, got "
                              f"{type(text).__name__}")
    try:
        cfg = text if isinstance(text, dict) else loads_json(text, f"checkpoint field {key!r}")
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{source}: checkpoint field {key!r} must hold a JSON object, got "
                                  f"{type(cfg).__name__}")
        check_resolvers(cfg, f"checkpoint field {key!r}")
    except StoredFileError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg


def _shape_metadata(sm: dict, source: str) -> None:
    ac = sm.get("ac_dim")
    if not isinstance(ac, int) or isinstance(ac, bool) or ac < 1:
        raise CheckpointError(f"{source}: shape_metadata.ac_dim must be a positive int, got {ac!r}")
    shapes = sm.get("all_shapes")
    if not isinstance(shapes, dict) or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                        and d >= 0 for d in v)
            for k, v in shapes.items()):
        raise CheckpointError(f"{source}: shape_metadata.all_shapes must map observation keys to lists of ints, got "
                              f"{str(shapes)[:200]}")
    keys = sm.get("action_keys")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointError(f"{source}: shape_metadata.action_keys must be a list of str, got {str(keys)[:200]}")


def _stats(stats, source: str, key: str) -> None:
    if stats is None:
        return
    ok = isinstance(stats, dict) and all(
        isinstance(k, str) and isinstance(d, dict) and all(isinstance(n, str) for n in d) for k, d in stats.items())
    if ok:
        try:
            stats_from_lists(stats)
        except (ValueError, TypeError):
            ok = False
    if not ok:
        raise CheckpointError(f"{source}: checkpoint field {key!r} must be None or {{key: {{offset, scale}}}} with "
                              f"numeric lists, got {str(stats)[:200]}")


def check_checkpoint(raw, source: str = "checkpoint") -> dict:
    """Validate a loaded checkpoint's fields and types; returns it with its JSON configs parsed (a new dict)."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = f"a {type(raw).__name__}" + (f" with keys {sorted(map(str, raw))[:8]}" if isinstance(raw, dict) else "")
        raise CheckpointError(f"{source} is not a modmimic checkpoint: {got}, without the 'format': "
                              f"'{FORMAT}' entry (a bare state_dict or another library's checkpoint?)")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{source}: checkpoint field 'format_version' must be int, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is newer than this modmimic's "
                              f"({FORMAT_VERSION}); upgrade modmimic")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is from an older modmimic, which this "
                              f"version (format {FORMAT_VERSION}) no longer reads: retrain the policy")
    ckpt = dict(raw)
    _field(ckpt, "algo_name", str, source, "the robomimic algo name")
    _field(ckpt, "recipe_name", str, source, "the recipe")
    ckpt["config"] = _json_config(_field(ckpt, "config", (str, dict), source, "the training config"), source, "config")
    _shape_metadata(_field(ckpt, "shape_metadata", dict, source, "observation shapes and action dim"), source)
    model = _field(ckpt, "model", dict, source, "the network weights")
    nets = model.get("nets", model)
    if not isinstance(nets, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in nets.items()):
        raise CheckpointError(f"{source}: checkpoint field model.nets must map parameter names to tensors")
    for key in ("env_metadata", "variable_state", "trainer_state"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{source}: checkpoint field {key!r} must be a dict or None, got "
                                  f"{type(ckpt[key]).__name__}")
    ckpt["env_metadata"] = ckpt.get("env_metadata") or {}
    if ckpt.get("task_vocab") is not None:
        from modmimic.tasks import TaskVocab

        if not isinstance(ckpt["task_vocab"], dict):
            raise CheckpointError(f"{source}: checkpoint field 'task_vocab' must be a dict")
        try:
            TaskVocab.from_plain(ckpt["task_vocab"], source)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    ckpt["variable_state"] = ckpt.get("variable_state") or {}
    for key in ("obs_normalization_stats", "action_normalization_stats"):
        _stats(ckpt.get(key), source, key)
    ts = ckpt.get("trainer_state")
    if ts is not None and ts.get("config") is not None:
        ckpt["trainer_state"] = {**ts, "config": _json_config(ts["config"], source, "trainer_state.config")}
    return ckpt


def load_checkpoint(path_or_dict) -> dict:
    """A checkpoint (path, or a dict such as :func:`make_checkpoint` returns) loaded without unpickling objects and
    checked field by field; configs as plain dicts. Every problem is a :class:`CheckpointError`; the file is only
    read."""
    if isinstance(path_or_dict, dict):
        return check_checkpoint(path_or_dict, "checkpoint dict")
    path = os.fspath(path_or_dict)
    return check_checkpoint(read_checkpoint_file(path), path)


def check_weights(algo: Algo, nets: dict, source: str) -> None:
    """The checkpoint's weights against the networks its own metadata builds: names of what is missing, unexpected
    or of another shape (a few, not the whole state dict)."""
    want = {k: tuple(v.shape) for k, v in algo.nets.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in nets.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [f"{k} is {list(have[k])} in the checkpoint, {list(want[k])} for the recipe" for k in want
              if k in have and have[k] != want[k]]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''})")
    raise CheckpointError(f"{source}: the weights do not fit recipe {algo.recipe_name!r} built from the checkpoint's "
                          f"config and shape_metadata (ac_dim {algo.ac_dim}, observations "
                          f"{dict(algo.obs_key_shapes)}): {', '.join(parts)} parameters")


def algo_from_checkpoint(ckpt, device="cpu", load_optimizers: bool = False, trusted_modules=None,
                         source: str | None = None) -> Algo:
    """The algorithm a checkpoint (path or dict) describes, with its weights. The config's callables resolve only
    inside ``modmimic.*``, ``MODMIMIC_TRUSTED_MODULES`` and ``trusted_modules`` (a list of module names).
    ``source``: how messages name the checkpoint."""
    source = source or (os.fspath(ckpt) if isinstance(ckpt, (str, os.PathLike)) else "checkpoint")
    ckpt = load_checkpoint(ckpt)
    modules = stored_config_modules(trusted_modules)
    try:
        check_config_names(ckpt["config"], modules, "its config")
    except UntrustedNameError as e:
        raise CheckpointError(f"{source}: refused: {e}") from None
    sm = ckpt["shape_metadata"]
    try:
        with trusting(modules):
            config = config_factory(ckpt["algo_name"], ckpt["config"])
            algo = algo_factory(ckpt["algo_name"], config, {k: tuple(v) for k, v in sm["all_shapes"].items()},
                                sm["ac_dim"], device, task_dim=sm.get("task_dim"))
    except UntrustedNameError as e:
        raise CheckpointError(f"{source}: refused: its recipe {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{source}: its config does not build an algorithm: {e}") from None
    except Exception as e:  # noqa: BLE001 - a malformed config (wrong types deep inside) is bad input
        raise CheckpointError(f"{source}: its config does not build an algorithm: {type(e).__name__}: "
                              f"{one_line(e)}") from None
    model = ckpt["model"]
    check_weights(algo, model.get("nets", model), source)
    try:
        algo.deserialize(model, load_optimizers=load_optimizers)
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: cannot load its model state: {type(e).__name__}: {one_line(e)}") from None
    return algo


# --- action formats (robomimic train.action_config.<key>.format / convert_at_runtime) -----------------------------

ACTION_CONFIG_FIELDS = ("normalization", "format", "convert_at_runtime")
ACTION_FORMATS = ("rot_6d", "rot_axis_angle", "rot_euler", "rot_quat")  # only rot_6d is converted when acting


def check_action_config(action_keys, action_config) -> None:
    """The ``format`` / ``convert_at_runtime`` entries of ``train.action_config`` for the keys in ``action_keys``:
    unknown fields, formats or conversions are a :class:`ConfigError` naming the key."""
    for k in action_keys:
        entry = (action_config or {}).get(k)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"train.action_config.{k} must be a dict of {', '.join(ACTION_CONFIG_FIELDS)}, got "
                              f"{entry!r}")
        unknown = [n for n in entry if n not in ACTION_CONFIG_FIELDS]
        if unknown:
            raise ConfigError(f"train.action_config.{k} has unknown fields {unknown}; an entry has "
                              f"{', '.join(ACTION_CONFIG_FIELDS)}")
        fmt, conv = entry.get("format"), entry.get("convert_at_runtime")
        if fmt is not None and (not isinstance(fmt, str) or fmt not in ACTION_FORMATS):
            raise ConfigError(f"train.action_config.{k}.format is {fmt!r}; known formats are "
                              f"{', '.join(ACTION_FORMATS)} (only rot_6d is converted when acting) or null")
        if conv is not None and (not isinstance(conv, str) or conv not in RUNTIME_CONVERSIONS):
            raise ConfigError(f"train.action_config.{k}.convert_at_runtime is {conv!r}; a rot_6d action converts to "
                              f"{' or '.join(RUNTIME_CONVERSIONS)} (the default) when acting")


def action_segments(action_keys, action_config, widths: dict) -> list[tuple[str, int, int, str | None]]:
    """``[(key, start, stop, conversion or None)]`` over the flat action vector: each key's slice, in order, and the
    ``convert_at_runtime`` of ``format: rot_6d`` keys (``rot_axis_angle`` by default). ``widths``: ``{key: dims}``.
    A rot_6d key whose width is not a multiple of 6 is a :class:`ConfigError` naming it."""
    check_action_config(action_keys, action_config)
    out, start = [], 0
    for k in action_keys:
        entry = (action_config or {}).get(k) or {}
        w = int(widths[k])
        conv = None
        if entry.get("format") == "rot_6d":
            conv = entry.get("convert_at_runtime") or "rot_axis_angle"
            if w % 6 or w == 0:
                raise ConfigError(f"train.action_config.{k}.format is rot_6d, but action key {k!r} has {w} dims per "
                                  "step: a 6D rotation has 6 (k rotations 6k); use the rot_6d dataset (e.g. "
                                  "action_dict/rel_rot_6d from `python -m modmimic.dataset extract_action_dict`) or "
                                  "drop the format")
        out.append((k, start, start + w, conv))
        start += w
    return out


def stats_widths(action_normalization_stats: dict) -> dict:
    """``{action key: dims}`` of per-key action statistics."""
    return {k: int(np.asarray(st["offset"]).size) for k, st in action_normalization_stats.items()}


class RolloutPolicy:
    """Wraps an :class:`Algo` for environment interaction (robomimic ``RolloutPolicy``).

    ``__call__(ob, goal=None, batched_ob=False)`` takes a numpy observation dict (one environment, or a batch of
    environments with ``batched_ob=True``), normalizes it with the training statistics, asks the algorithm's acting
    path and returns numpy actions, un-normalized per action key. Per-environment state (RNN hidden state,
    observation context, subgoal) lives in the acting path: ``start_episode(n)`` resets all ``n`` environments,
    ``reset_envs(done_mask)`` only those that start a new episode.

    ``action_config`` (robomimic's ``train.action_config``): after un-normalizing, each key with ``format: rot_6d``
    becomes axis-angle (``convert_at_runtime: rot_axis_angle``, the default) or Euler XYZ (``rot_euler``), 3 dims per
    6, so the environment receives its native action (``action_dim`` wide).

    A multi-task policy (``task_vocab``, a :class:`modmimic.tasks.TaskVocab`) acts on each environment's task:
    ``__call__(..., tasks=[...])`` (one task name or instruction per environment, or one for all), or the tasks set
    by :meth:`set_tasks`.
    """

    def __init__(self, policy: Algo, obs_normalization_stats=None, action_normalization_stats=None,
                 action_keys=None, action_config=None, act_path=None, task_vocab=None):
        self.policy = policy
        self.task_vocab = task_vocab
        self._tasks, self._task_emb = None, None
        if getattr(policy, "task_dim", None) and task_vocab is None:
            raise ConfigError("RolloutPolicy: a multi-task policy needs its task_vocab")
        self.act_path = act_path  # None: the algorithm's own (see fork)
        self.obs_normalization_stats = obs_normalization_stats
        self.action_normalization_stats = action_normalization_stats
        self.action_keys = list(action_keys or (list(action_normalization_stats) if action_normalization_stats else []))
        self.action_config = dict(action_config or {})
        self._affine = None
        if action_normalization_stats:
            off = np.concatenate([np.asarray(action_normalization_stats[k]["offset"]).reshape(-1)
                                  for k in self.action_keys])
            sc = np.concatenate([np.asarray(action_normalization_stats[k]["scale"]).reshape(-1)
                                 for k in self.action_keys])
            self._affine = (off.astype(np.float32), sc.astype(np.float32))
        self._segments = self._action_segments()
        self.num_envs = 1

    def _action_segments(self) -> list | None:
        """:func:`action_segments` when some key is converted, else None (the action passes as it is)."""
        check_action_config(self.action_keys, self.action_config)
        if not any((self.action_config.get(k) or {}).get("format") == "rot_6d" for k in self.action_keys):
            return None
        if self.action_normalization_stats:
            widths = stats_widths(self.action_normalization_stats)
        elif len(self.action_keys) == 1:
            widths = {self.action_keys[0]: int(self.policy.ac_dim)}
        else:
            raise ConfigError(f"RolloutPolicy: converting the rot_6d actions of {self.action_keys} needs each key's "
                              "width: pass action_normalization_stats")
        segs = action_segments(self.action_keys, self.action_config, widths)
        ac_dim = getattr(self.policy, "ac_dim", None)
        if ac_dim is not None and segs[-1][2] != int(ac_dim):
            raise ConfigError(f"RolloutPolicy: action keys {self.action_keys} have {segs[-1][2]} dims, the policy "
                              f"acts with {ac_dim}")
        return segs

    @property
    def action_dim(self) -> int | None:
        """Dims of the actions this returns (the environment's): the policy's, less 3 per converted 6D rotation."""
        ac_dim = getattr(self.policy, "ac_dim", None)
        if self._segments is None:
            return None if ac_dim is None else int(ac_dim)
        return sum((e - s) // 2 if conv else e - s for _, s, e, conv in self._segments)

    def fork(self) -> "RolloutPolicy":
        """A policy over the same networks and statistics with its own episode state: a fresh acting path built
        from the recipe's ``act`` spec (RNN hidden state, observation history, action queues). The policy server
        gives each client session one; the networks are shared, not copied."""
        new = copy.copy(self)
        new.act_path, new.num_envs = self.policy.new_act_path(), 1
        return new

    @property
    def acting_path(self):
        """The acting path this policy's episode state lives in."""
        return self.policy.act_path if self.act_path is None else self.act_path

    def start_episode(self, num_envs: int = 1) -> None:
        self.num_envs = num_envs
        self.policy.set_eval()
        self.acting_path.reset(num_envs)

    def reset_envs(self, done) -> None:
        self.acting_path.reset(self.num_envs, torch.as_tensor(np.asarray(done, dtype=bool)))

    def _prepare(self, ob: dict, batched: bool, keys) -> dict:
        """``keys``: the policy's observation keys (a dict of their per-step shapes, or a list)."""
        out = {}
        for k in keys:
            if k not in ob:
                raise KeyError(f"observation has no key {k!r} that the policy needs (has: {sorted(ob)})")
            v = np.asarray(ob[k])
            shape = keys[k] if isinstance(keys, dict) else v.shape[1 if batched else 0:]
            if v.dtype != np.uint8 or len(shape) < 2:  # images stay uint8: the encoder makes them float
                v = v.astype(np.float32, copy=False)
            if not batched:
                v = v[None]
            st = (self.obs_normalization_stats or {}).get(k)
            if st is not None:
                v = (v - np.asarray(st["offset"], np.float32).reshape(-1)) / np.asarray(st["scale"], np.float32).reshape(-1)
            out[k] = torch.from_numpy(v).to(self.policy.device)
        return out

    @property
    def multi_task(self) -> bool:
        return self.task_vocab is not None

    def set_tasks(self, tasks) -> None:
        """The task (name or instruction) of every environment from now on: a list, one per environment, or one
        string for all; embedded once here (a new instruction through the text encoder)."""
        if not self.multi_task:
            raise ConfigError("this policy is not multi-task (trained without task.conditioning): it takes no task")
        tasks = [tasks] if isinstance(tasks, str) else [str(t) for t in tasks]
        if tasks != self._tasks:
            self._tasks, self._task_emb = tasks, self.task_vocab.embed(tasks).to(self.policy.device)

    def __call__(self, ob: dict, goal: dict | None = None, batched_ob: bool = False, tasks=None) -> np.ndarray:
        obs = self._prepare(ob, batched_ob, self.policy.obs_shapes)
        g = self._prepare(goal, batched_ob, self.policy.goal_shapes) if goal is not None and self.policy.goal_shapes else None
        task = None
        if tasks is not None:
            self.set_tasks(tasks)
        if self.multi_task:
            if self._task_emb is None:
                raise ConfigError(f"this policy is multi-task: give the task (one of {', '.join(self.task_vocab.names)}"
                                  f"{' or an instruction' if self.task_vocab.conditioning == 'language' else ''})")
            task = self._task_emb
            B = next(iter(obs.values())).shape[0]
            if task.shape[0] not in (1, B):
                raise ConfigError(f"{task.shape[0]} tasks for {B} environments")
        kw = {} if task is None else {"task": task}  # (a single-task algorithm object may not take task=)
        a = (self.policy.get_action(obs, g, **kw) if self.act_path is None else
             self.policy.get_action(obs, g, act_path=self.act_path, **kw)).detach().cpu().numpy()
        a = self._env_actions(a)
        return a if batched_ob else a[0]

    def _env_actions(self, a: np.ndarray) -> np.ndarray:
        """Network actions ``[..., A]`` -> the environment's: un-normalized, 6D rotations converted."""
        if self._affine is not None:
            a = a * self._affine[1] + self._affine[0]
        if self._segments is not None:
            a = np.concatenate([a[..., s:e] if conv is None else convert_rot_6d(a[..., s:e], conv).astype(a.dtype)
                                for _, s, e, conv in self._segments], -1)
        return a

    def _network_actions(self, a: np.ndarray, batched: bool, B: int) -> torch.Tensor:
        """Environment actions ``[P, A]`` (``[B, P, A]``) -> the network's (normalized) ``[B, P, A]`` tensor."""
        a = a if batched else a[None]
        if self._segments is not None:
            raise ValueError("decided actions cannot be given to a policy whose rot_6d actions are converted")
        if a.ndim != 3 or a.shape[0] != B or a.shape[2] != int(self.policy.ac_dim):
            raise ValueError(f"decided actions have shape {list(a.shape)}: expected [{B}, P, {self.policy.ac_dim}]")
        if self._affine is not None:
            a = (a - self._affine[0]) / self._affine[1]
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.policy.device)

    @property
    def chunking(self) -> dict | None:
        """How this policy's chunks are executed (``chunk_size``, ``obs_horizon``, ``temporal_ensemble``,
        ``ensemble_k``), or None when it acts one step at a time."""
        path = self.acting_path
        if not hasattr(path, "predict") or not hasattr(path, "Ta"):
            return None
        return {"chunk_size": int(path.Ta), "obs_horizon": int(path.To),
                "temporal_ensemble": bool(path.temporal_ensemble), "ensemble_k": float(path.ensemble_k)}

    def predict_chunk(self, window: dict, batched_ob: bool = False, prefix=None) -> np.ndarray:
        """The whole chunk a chunking policy predicts from an observation window, without touching episode state
        (:class:`modmimic.chunking.ChunkExecutor` queues and merges chunks itself). ``window``: key -> the last
        ``obs_horizon`` raw observations, oldest first, ``[obs_horizon, *shape]`` (``[B, obs_horizon, *shape]``
        with ``batched_ob``). Returns the environment's actions for the current step and the following ones,
        ``[H, A]`` (``[B, H, A]``); the first ``chunk_size`` are what the in-process policy executes.
        ``prefix``: environment actions ``[P, A]`` (``[B, P, A]``) already decided for the first ``P`` steps,
        inpainted by sampling policies (Diffusion Policy, flow policy) and returned as given."""
        spec = self.chunking
        if spec is None:
            raise ValueError(f"recipe {self.policy.recipe_name!r} acts one step at a time "
                             f"({type(self.acting_path).__name__}): it has no chunks to predict")
        To = spec["obs_horizon"]
        flat, B = {}, None
        for k in self.policy.obs_shapes:
            if k not in window:
                raise KeyError(f"observation window has no key {k!r} that the policy needs (has: {sorted(window)})")
            v = np.asarray(window[k])
            v = v if batched_ob else v[None]
            if v.ndim < 2 or v.shape[1] != To:
                raise ValueError(f"observation window {k!r} has shape {list(v.shape)}: expected "
                                 f"[{'B, ' if batched_ob else ''}{To}, ...] (obs_horizon {To})")
            B = v.shape[0]
            flat[k] = v.reshape(B * To, *v.shape[2:])
        td = self.policy._obs_td(self._prepare(flat, True, self.policy.obs_shapes))
        if To > 1:
            td = td.reshape(B, To)
        if prefix is not None:
            prefix = self._network_actions(np.asarray(prefix, dtype=np.float32), batched_ob, B)
        with torch.no_grad():
            a = self._env_actions(self.acting_path.predict(td, prefix).detach().cpu().numpy())
        return a if batched_ob else a[0]

    def __repr__(self) -> str:
        return f"RolloutPolicy({self.policy.recipe_name})"


def checkpoint_action_config(ckpt: dict) -> dict:
    """The checkpoint's ``train.action_config`` (``{}`` when it has none: an older checkpoint acts as it did)."""
    train = (ckpt.get("config") or {}).get("train") or {}
    cfg = train.get("action_config") if isinstance(train, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def checkpoint_task_vocab(ckpt: dict):
    """A multi-task checkpoint's :class:`modmimic.tasks.TaskVocab`, else None."""
    if ckpt.get("task_vocab") is None:
        return None
    from modmimic.tasks import TaskVocab

    return TaskVocab.from_plain(ckpt["task_vocab"])


def policy_from_checkpoint(device="cpu", ckpt_path=None, ckpt_dict=None, verbose: bool = False,
                           trusted_modules=None):
    """``(RolloutPolicy, checkpoint dict)`` from a checkpoint path or dict (robomimic's signature).
    ``trusted_modules``: modules besides ``modmimic`` (and ``MODMIMIC_TRUSTED_MODULES``) whose callables the
    checkpoint's config may name (its own components); the default trusts none."""
    if ckpt_dict is None and ckpt_path is None:
        raise CheckpointError("policy_from_checkpoint needs ckpt_path or ckpt_dict")
    ckpt = load_checkpoint(ckpt_dict if ckpt_dict is not None else ckpt_path)
    algo = algo_from_checkpoint(ckpt, device, trusted_modules=trusted_modules,
                                source=str(ckpt_path) if ckpt_dict is None else None)
    algo.set_eval()
    try:
        policy = RolloutPolicy(algo, stats_from_lists(ckpt.get("obs_normalization_stats")),
                               stats_from_lists(ckpt.get("action_normalization_stats")),
                               ckpt["shape_metadata"].get("action_keys"), checkpoint_action_config(ckpt),
                               task_vocab=checkpoint_task_vocab(ckpt))
    except ConfigError as e:
        raise CheckpointError(f"{ckpt_path or 'checkpoint'}: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt_path or 'checkpoint'}: its action_normalization_stats do not fit "
                              f"shape_metadata.action_keys {ckpt['shape_metadata'].get('action_keys')}: "
                              f"{type(e).__name__}: {e}") from None
    if verbose:
        print(algo)
    return policy, ckpt


# --- torchrl: a policy as a TensorDict module ----------------------------------------------------------------------

def _tensordict_policy_class():
    """:class:`TensorDictPolicy` is defined on first use: importing torchrl takes seconds, and acting through
    :class:`RolloutPolicy` never needs it."""
    global TensorDictPolicy
    if "TensorDictPolicy" in globals():
        return TensorDictPolicy
    from tensordict.nn import TensorDictModuleBase
    from torchrl.envs.utils import ExplorationType, exploration_type

    from modmimic import keys as K

    class TensorDictPolicy(TensorDictModuleBase):
        """A :class:`RolloutPolicy` as a torchrl policy: reads the observation entries ``in_keys`` (by default
        ``("observation", <obs key>)``, the keys of modmimic's batch contract and of
        :class:`modmimic.online.TorchRLEnv`) of a TensorDict of any batch shape (``[]`` for one environment) and
        writes ``action`` (the environment's action: un-normalized, rot_6d converted), exactly the action
        :class:`RolloutPolicy` returns for the same observations.

        ``explore``: True samples the actor's distribution (the networks in training mode for the call), False acts
        as in evaluation (the recipe's acting path in eval mode, :class:`RolloutPolicy`'s action); None follows
        torchrl's ``set_exploration_type`` (``RANDOM`` samples; anything else, and no setting, evaluates). Per
        environment state (RNN hidden state, observation history) starts afresh when the batch size changes and,
        for the rows where the TensorDict's ``is_init`` entry (torchrl's ``InitTracker``) is True."""

        def __init__(self, policy: RolloutPolicy, in_keys: dict | None = None, out_key="action",
                     explore: bool | None = None):
            super().__init__()
            self.rollout_policy = policy.fork()
            self.nets = policy.policy.nets  # the parameters, for torchrl code that looks for them
            obs_keys = list(policy.policy.obs_shapes)
            unknown = [k for k in (in_keys or {}) if k not in obs_keys]
            if unknown:
                raise KeyError(f"in_keys names observation keys {unknown} that the policy does not read "
                               f"(it reads {obs_keys})")
            self.key_map = {k: (in_keys or {}).get(k, (K.OBS, k)) for k in obs_keys}
            self.in_keys = list(self.key_map.values())
            self.out_keys = [out_key]
            self.explore = explore
            self._num_envs = None

        def forward(self, tensordict):
            lead = tuple(tensordict.batch_size)
            n = int(np.prod(lead)) if lead else 1
            obs = {k: tensordict.get(key).reshape(n, *tensordict.get(key).shape[len(lead):]).detach().cpu().numpy()
                   for k, key in self.key_map.items()}
            algo = self.rollout_policy.policy
            training = algo.nets.training
            if self._num_envs != n:
                self.rollout_policy.start_episode(n)
                self._num_envs = n
            init = tensordict.get(K.IS_INIT, None)
            if init is not None:
                self.rollout_policy.reset_envs(init.reshape(n, -1).any(-1).cpu().numpy())
            explore = self.explore if self.explore is not None else exploration_type() == ExplorationType.RANDOM
            (algo.set_train if explore else algo.set_eval)()
            try:
                a = self.rollout_policy(obs, batched_ob=True)
            finally:
                (algo.set_train if training else algo.set_eval)()
            action = torch.as_tensor(np.asarray(a, dtype=np.float32), device=tensordict.device)
            tensordict.set(self.out_keys[0], action.reshape(*lead, action.shape[-1]))
            return tensordict

    globals()["TensorDictPolicy"] = TensorDictPolicy
    return TensorDictPolicy


def as_tensordict_module(ckpt_or_policy, in_keys: dict | None = None, explore: bool | None = None,
                         device="cpu", out_key="action"):
    """A policy that a torchrl environment can roll out (``env.rollout(max_steps, policy)``), a
    ``tensordict.nn.TensorDictModuleBase``. ``ckpt_or_policy``: a checkpoint (path or dict, loaded as
    :func:`policy_from_checkpoint` does, on ``device``) or a :class:`RolloutPolicy`. ``in_keys``:
    ``{observation key: TensorDict key}`` for keys the environment names otherwise (a gymnasium ``Dict`` space
    wrapped by torchrl's ``GymEnv`` puts them at the top level: ``{"pos": "pos"}``); the rest are read at
    ``("observation", <key>)``. ``explore``: see :class:`TensorDictPolicy`."""
    cls = _tensordict_policy_class()
    if isinstance(ckpt_or_policy, RolloutPolicy):
        policy = ckpt_or_policy
    elif isinstance(ckpt_or_policy, (str, os.PathLike, dict)):
        policy, _ = policy_from_checkpoint(device=device, ckpt_path=None if isinstance(ckpt_or_policy, dict)
                                           else ckpt_or_policy,
                                           ckpt_dict=ckpt_or_policy if isinstance(ckpt_or_policy, dict) else None)
    else:
        raise TypeError(f"as_tensordict_module takes a checkpoint (path or dict) or a RolloutPolicy, got "
                        f"{type(ckpt_or_policy).__name__}")
    return cls(policy, in_keys=in_keys, explore=explore, out_key=out_key)
