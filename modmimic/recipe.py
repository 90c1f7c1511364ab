"""``python -m modmimic.recipe list | explain <recipe or path.yaml> [dataset=<hdf5>] [key=value ...] |
export <recipe> --robomimic [-o <file.json>] [key=value ...]``.

``list`` prints every recipe (shipped, and those in ``$MODMIMIC_RECIPE_PATH``) with its one-line description, then
the presets (``preset=<name>``). With ``preset=``, ``explain`` first lists what the preset changes.
``explain`` compiles a recipe (with any overrides) into its program and prints it on one screen: the networks and
their parameter counts, optimizers and LR schedules, the steps of one training step in order with the keys each
reads and writes, which loss moves which network, how often and in which epochs, the targets and their tau, and the
acting path. Shapes come from ``dataset=`` (default: the embedded dataset); nothing is trained.
``export --robomimic`` writes the composed config in robomimic's JSON layout (:mod:`modmimic.robomimic_config`),
to stdout or ``-o <file.json>`` (never replacing a file); modmimic's own keys robomimic cannot hold are named on
stderr.
"""
from __future__ import annotations

import sys

from modmimic.config import ConfigError, find_recipe, list_recipes, recipe_description

PROG = "modmimic.recipe"


def list_text() -> str:
    from modmimic.config import list_presets, preset_description

    names = list_recipes()
    width = max(len(n) for n in names + list_presets())
    return "\n".join([*(f"{n.ljust(width)}  {recipe_description(n)}" for n in names), "", "presets (preset=<name>):",
                      *(f"{p.ljust(width)}  {preset_description(p)}" for p in list_presets())])


def preset_text(recipe: str, overrides: list[str], cfg) -> str:
    """What ``cfg``'s preset changed: every key whose value differs from the same composition without the preset
    (the default preset), as ``key: without -> with``; keys set on the command line are not the preset's."""
    from omegaconf import OmegaConf

    from modmimic.config import DEFAULT_PRESET, _flatten, compose, preset_family

    if cfg.preset == DEFAULT_PRESET:
        return ""
    plain = compose(recipe, [o for o in overrides if not o.startswith("preset=")])
    before = dict(_flatten(OmegaConf.to_container(plain, resolve=True)))
    after = dict(_flatten(OmegaConf.to_container(cfg, resolve=True)))
    changed = [f"  {k}: {before.get(k)!r} -> {v!r}" for k, v in after.items() if k != "preset" and before.get(k) != v]
    family = preset_family(cfg.preset, recipe)
    head = f"preset {cfg.preset} (" + (f"its {family!r} entry" if family else "its values for every recipe") + ")"
    return "\n".join([head + (":" if changed else ": changes nothing here"), *changed]) + "\n"



def _key(k) -> str:
    return ".".join(k) if isinstance(k, tuple) else str(k)


def _call_text(call) -> str:
    nets = ", ".join(f"{a}={p}" for a, p in call.net_paths.items())
    off = [a for a, m in call.nets.items() if m is None]
    nets += "".join(f", {a}=None (disabled)" for a in off)
    fn = getattr(call.fn, "__name__", str(call.fn))
    return f"{fn}({nets})"


def _io(call) -> str:
    r = ", ".join(_key(k) for k in call.reads) or "-"
    w = ", ".join(_key(k) for k in call.writes)
    return f"reads {r}" + (f" -> writes {w}" if w else "")


def _lr_text(op: dict) -> str:
    lr = op["learning_rate"]
    kind = lr.get("scheduler_type", "multistep")
    sched = "constant"
    if kind == "cosine":
        sched = f"cosine, {lr.get('warmup_steps', 0)} warm-up steps, per batch"
    elif lr.get("epoch_schedule"):
        sched = f"{kind} x{lr['decay_factor']} at epochs {list(lr['epoch_schedule'])}"
        if lr.get("step_every_batch"):
            sched += " (per batch)"
    l2 = (op.get("regularization") or {}).get("L2", 0.0)
    return f"{op.get('optimizer_type', 'adam')} lr {lr['initial']:g} ({sched})" + (f", L2 {l2:g}" if l2 else "")


def explain_text(algo) -> str:
    """The compiled program of ``algo`` (an :class:`~modmimic.algo.Algo`) as text."""
    from modmimic.config import to_plain
    from modmimic.program import Prepare

    p, cfg = algo.program, algo.config
    lines = [f"recipe {cfg.recipe_name} (robomimic algo {cfg.algo_name}): {recipe_description(str(cfg.recipe_name))}"]
    lines.append("")
    lines.append("batch (windows -> training batch):")
    for scope, call in p.batch:
        kw = ", ".join(f"{k}={v}" for k, v in call.kwargs.items() if not isinstance(v, (dict, list)))
        w = ", ".join(_key(k) for k in call.writes)
        lines.append(f"  {'.'.join(scope) or '-':14} {getattr(call.fn, '__name__', call.fn)}({kw})"
                     + (f" adds {w}" if w else ""))
    lines.append("")
    lines.append("networks (trainable parameters):")
    flat = {}
    for scope in ["", *p.components]:
        for name, m in (p.nets if not scope else p.net(scope)).items():
            if not isinstance(m, type(p.nets)):
                flat[f"{scope}.{name}" if scope else name] = m
    for path, m in flat.items():
        if path in p.targets:
            src, tau = p.targets[path]
            lines.append(f"  {path:28} target of {src}, " + (_ema_text(p.ema[path]) if path in p.ema
                                                                     else f"polyak tau {tau:g}"))
            continue
        n = sum(x.numel() for x in m.parameters() if x.requires_grad)
        lines.append(f"  {path:28} {type(m).__name__:18} {n:>10,}")
    for d in sorted(p.disabled):
        lines.append(f"  {d:28} disabled")
    lines.append("")
    lines.append("optimizers:")
    for path in p.optimizers:
        scope, _, net = path.rpartition(".")
        sub = algo.config if not scope else algo._builder.configs[tuple(scope.split("."))]
        lines.append(f"  {path:28} {_lr_text(to_plain(sub.algo.optim_params[net]))}")
    lines.append("")
    lines.append("one training step, in order:")
    i = 0
    for s in p.steps:
        where = f"[{'.'.join(s.scope)}] " if s.scope else ""
        if isinstance(s, Prepare):
            for c in s.calls:
                i += 1
                lines.append(f"  {i:>2}. {where}prepare (no grad)  {_call_text(c)}  {_io(c)}")
            continue
        i += 1
        when = []
        if s.every > 1:
            when.append(f"every {s.every} steps")
        if s.start_epoch >= 0 or s.end_epoch >= 0:
            when.append(f"epochs [{max(s.start_epoch, 0)}, {s.end_epoch if s.end_epoch >= 0 else 'end'})")
        if s.start_step >= 0 or s.end_step >= 0:
            when.append(f"steps [{max(s.start_step, 0)}, {s.end_step if s.end_step >= 0 else 'end'})")
        if s.rows != "all":
            when.append(f"{s.rows} rows only")
        lines.append(f"  {i:>2}. {where}update {s.name!r}" + (f" ({', '.join(when)})" if when else ""))
        for lname, c, w in s.losses:
            lines.append(f"        loss {lname} x{w:g} = {_call_text(c)}  {_io(c)}")
        moves = ", ".join(s.optimizers) or "nothing (no optimizer)"
        clip = f"; clip grad norm {s.max_grad_norm:g}" + (" per member" if s.clip_per_member else "") \
            if s.max_grad_norm is not None else ""
        lines.append(f"        -> steps {moves}{clip}")
        for t in s.targets:
            lines.append(f"        -> polyak {t} <- {p.targets[t][0]} (" + (_ema_text(p.ema[t]) if t in p.ema
                                                                               else f"tau {p.targets[t][1]:g}") + ")")
    lines.append("")
    act = to_plain(cfg.act)
    lines.append(f"acting: {_spec_text(act)}")
    for k, v in (to_plain(cfg.get("value_fns")) or {}).items():
        if v is not None:
            lines.append(f"value query {k}: {_spec_text(v)}")
    return "\n".join(lines)


def _ema_text(ema: dict) -> str:
    if ema.get("max_decay", 0.9999) == 0.0:
        return "EMA off (copy every step)"
    return (f"EMA, decay 1 - (1 + k)^-{ema.get('power', 0.75):g} clamped to <= {ema.get('max_decay', 0.9999):g}, "
            "k = step - 1")


def _spec_text(spec) -> str:
    if not isinstance(spec, dict):
        return str(spec)
    spec = dict(spec)
    fn = str(spec.pop("fn", "?")).rsplit(".", 1)[-1]
    return f"{fn}(" + ", ".join(f"{k}={_spec_text(v)}" for k, v in spec.items()) + ")"


def explain(recipe: str, overrides=()) -> str:
    """Compose ``recipe`` with ``overrides`` (``dataset=`` picks the shapes), build it and explain it."""
    import h5py

    from modmimic.algo import algo_factory
    from modmimic.config import all_obs_keys, compose
    from modmimic.data.default import default_dataset_path
    from modmimic.data.hdf5 import list_demos

    overrides = list(overrides)
    data = [o.split("=", 1)[1] for o in overrides if o.startswith(("dataset=", "train.data="))]
    overrides = [o for o in overrides if not o.startswith(("dataset=", "train.data="))]
    cfg = compose(recipe, overrides)
    path = data[-1] if data else default_dataset_path()
    shapes, ac_dim = {}, None
    with h5py.File(path, "r") as f:
        demo = f["data"][list_demos(f)[0]]
        for k in all_obs_keys(cfg):
            if k in demo["obs"]:
                shapes[k] = tuple(demo["obs"][k].shape[1:])
        ac_dim = int(demo["actions"].shape[-1])
    missing = [k for k in all_obs_keys(cfg) if k not in shapes]
    if missing:
        raise ConfigError(f"observation keys {missing} are not in {path}; name a dataset that has them (dataset=...) "
                          "or set observation.modalities.obs.low_dim")
    algo = algo_factory(cfg.algo_name, cfg, shapes, ac_dim)
    return f"file: {find_recipe(recipe)}\n" + preset_text(recipe, overrides, cfg) + explain_text(algo)


USAGE = f"""usage: python -m {PROG} list
       python -m {PROG} explain <recipe name or path.yaml> [preset=<name>] [dataset=<hdf5>] [key=value ...]
       python -m {PROG} export <recipe> --robomimic [-o <file.json>] [preset=<name>] [key=value ...]

list     every recipe (shipped, and those in $MODMIMIC_RECIPE_PATH) with its description, then the presets
explain  the recipe compiled into its program: networks, optimizers, each step of a training step in order
         with the keys it reads and writes, targets, the acting path; with preset=, first what the preset
         changes (key: without -> with)
export   the composed config as a robomimic JSON experiment config (robomimic's train.py --config takes it;
         python -m modmimic.train config=<file.json> reads it back)"""


def export(args: list[str]) -> int:
    """``export <recipe> --robomimic [-o file] [overrides]``: the robomimic JSON of a composed recipe."""
    import json
    import os

    from modmimic.config import compose
    from modmimic.io import atomic_write_text
    from modmimic.robomimic_config import to_robomimic

    recipe, rest = args[0], args[1:]
    if "--robomimic" not in rest:
        raise ConfigError("export writes robomimic's layout only: add --robomimic")
    rest = [a for a in rest if a != "--robomimic"]
    out = None
    if "-o" in rest:
        i = rest.index("-o")
        if i + 1 >= len(rest):
            raise ConfigError("-o needs a file name")
        out = rest[i + 1]
        del rest[i:i + 2]
    if out is not None and os.path.lexists(out):
        raise ConfigError(f"{out} exists; export never replaces a file (remove it or name another)")
    data, left_out = to_robomimic(compose(recipe, rest))
    text = json.dumps(data, indent=4) + "\n"
    if left_out:
        print(f"{PROG}: left out (robomimic has no such setting): "
              + ", ".join(f"{k}={v!r}" for k, v in left_out.items()), file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
    return 0


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    try:
        if args[0] == "list":
            print(list_text())
            return 0
        if args[0] == "export" and len(args) >= 2:
            return export(args[1:])
        if args[0] == "explain" and len(args) >= 2:
            print(explain(args[1], args[2:]))
            return 0
        print(USAGE, file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"{PROG}: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
