"""``python -m modmimic.train recipe=<name> dataset=<path.hdf5> [key=value ...]`` — the training application.

The command line is hydra's: ``recipe=`` picks a config group entry (``recipes/<name>.yaml``), every other argument
overrides a key with robomimic's section names (``train.num_epochs=50``, ``algo.rnn.hidden_dim=100``), ``-m`` runs
a sweep (``-m train.seed=0,1,2``), ``--cfg job`` prints the composed config. ``dataset=<path>`` is short for
``train.data=<path>``; without it the embedded default dataset is used. ``resume=true`` / ``resume_dir=<run dir>``
continue a run. The working directory is never changed, so relative paths mean what they say.

Every configuration is composed and validated before anything runs (unknown keys and wrong types are errors
that name the closest valid key). Any failure ends with a one-paragraph message on stderr and a non-zero exit
status: 2 for bad input (configuration, dataset, checkpoint), 1 for failures while training, 130 when interrupted.
``MODMIMIC_DEBUG=1`` prints the traceback as well.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

from modmimic.config import ConfigError, base_config_path, compose, list_recipes, recipe_description
from modmimic.package import check_package  # noqa: F401  (re-exported)

PROG = "modmimic.train"
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
# hydra flags that take a value (the value is the next argument)
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_FAILURES: list = []


# --- help -------------------------------------------------------------------------------------------------------

def recipe_summary(name: str) -> str:
    """A recipe's one-line description (its header comment)."""
    return recipe_description(name)


def usage() -> str:
    import shutil
    import textwrap

    width = max(len(r) for r in list_recipes())
    cols = max(80, shutil.get_terminal_size((120, 20)).columns)
    recipes = "\n".join(textwrap.fill(recipe_summary(r), cols, initial_indent=f"  {r.ljust(width)}  ",
                                       subsequent_indent=" " * (width + 4)) for r in list_recipes())
    from modmimic.config import list_presets, preset_description

    pw = max(len(p) for p in list_presets())
    presets = "\n".join(textwrap.fill(preset_description(p), cols, initial_indent=f"  {p.ljust(pw)}  ",
                                       subsequent_indent=" " * (pw + 4)) for p in list_presets())
    return f"""usage: python -m {PROG} [recipe=<name> | config=<robomimic.json>] [preset=<name>] [dataset=<path.hdf5>] [key=value ...] [-m] [--cfg job]

Train a robot-learning policy on a robomimic-format HDF5 dataset (without dataset=, on the small dataset
embedded in modmimic). Arguments are hydra overrides with robomimic's config section names.

recipes (recipe=<name>, default bc; or recipe=<path/to/recipe.yaml>; $MODMIMIC_RECIPE_PATH adds folders;
`python -m modmimic.recipe explain <recipe>` prints one compiled):
{recipes}

presets (preset=<name>, default robomimic: the recipe's own settings; laid over the recipe, under your overrides;
`python -m modmimic.recipe explain <recipe> preset=<name>` shows what one changes):
{presets}

common overrides:
  dataset=<path>                          the HDF5 file (short for train.data=<path>)
  config=<experiment.json>                a robomimic JSON config (0.3/0.5): its recipe and settings
  train.num_epochs=<n>                    epochs of experiment.epoch_every_n_steps gradient steps each
  train.batch_size=<n>  train.seq_length=<n>  train.seed=<n>
  train.output_dir=<dir>                  runs go to <dir>/<experiment.name>/<timestamp>/ (default runs/)
  train.hdf5_filter_key=train  train.hdf5_validation_filter_key=valid  experiment.validate=true
  experiment.epoch_every_n_steps=<n>      experiment.validation_epoch_every_n_steps=<n>
  experiment.save.every_n_epochs=<n>      experiment.rollout.enabled=false
  algo.<key>=<value>                      recipe hyperparameters, e.g. algo.rnn.hidden_dim=100
  device=cpu|cuda                         where to train
  resume=true [resume_dir=<run dir>]      continue a run (default: the newest under train.output_dir/experiment.name)
  train.stop_after_epoch=<n>              end this invocation after epoch n; resume later
  train.idle_steps.drop=true              leave the demos' still stretches out of training (demos that pause)

hydra: -m/--multirun sweeps (-m train.seed=0,1,2), --cfg job prints the composed config, --hydra-help.
Exit status: 0 success, 1 training failure, 2 bad input (config, dataset, checkpoint), 130 interrupted.
MODMIMIC_DEBUG=1 prints tracebacks. Dataset tools: python -m modmimic.dataset --help."""


# --- arguments ----------------------------------------------------------------------------------------------

def rewrite_dataset(args: list[str]) -> list[str]:
    """``dataset=X`` -> ``train.data=X`` (also inside sweeps: ``dataset=a.hdf5,b.hdf5``)."""
    return ["train.data=" + a.split("=", 1)[1] if a.startswith("dataset=") else a for a in args]


PATH_KEYS = ("train.data", "train.output_dir", "train.hdf5_memmap_dir", "resume_dir", "experiment.ckpt_path")
QUOTING = ("hydra's override grammar needs quotes around values with non-ASCII letters or any of ()[]{}=,'\" "
           "and the like: write key='value' (in a shell: \"key='my données (1).hdf5'\")")


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([override])
        return True
    except HydraException:
        return False


def quote_paths(args: list[str]) -> list[str]:
    """Paths (``train.data=``, ``train.output_dir=``, ...) that hydra's lexer rejects as they are (non-ASCII
    letters, parentheses, ``=``) are single-quoted for it, so any file name works unquoted on the command line.
    Values that already parse (including sweeps ``a.hdf5,b.hdf5``) or contain a quote are left alone."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if (sep and key.lstrip("+") in PATH_KEYS and value and "'" not in value and '"' not in value
                and not _parses(a)):
            a = f"{key}='{value}'"
        out.append(a)
    return out


def split_args(args: list[str]) -> tuple[list[str], list[str], bool]:
    """``(hydra flags, overrides, multirun)``."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            flags.append(a)
            if a in _VALUE_FLAGS and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
            elif a == "--info" and i + 1 < len(args) and args[i + 1] in _INFO_CHOICES:
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides, any(f in ("-m", "--multirun") for f in flags)


def _parse(overrides: list[str]) -> dict:
    """``{key: python value}`` of plain ``key=value`` overrides (hydra's grammar)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line ({QUOTING}): {str(e).splitlines()[0]}") from None
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}


def build_config(overrides: list[str]):
    """The validated config of one run from its overrides (``recipe=`` included). With ``resume``, the config
    the run was trained with plus these overrides."""
    from omegaconf import OmegaConf

    from modmimic.data.check import path_problem
    from modmimic.dataset import DatasetNotFound, dataset_entries, with_data
    from modmimic.logger import check_dir_creatable, find_run_dir, unfinished_run

    from modmimic.robomimic_config import expand_args

    overrides = expand_args(list(overrides))  # config=<robomimic.json> (main has expanded it already)
    values = _parse(overrides)
    recipe = values.get("recipe")
    rest = [o for o in overrides if not o.startswith("recipe=")]
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"recipe must be a name, got {recipe!r}; available recipes: {', '.join(list_recipes())}")
    resume_dir = values.get("resume_dir")
    if values.get("resume") not in (None, True, False):
        raise ConfigError(f"config key 'resume' must be bool, got {values['resume']!r}")
    if values.get("resume") or resume_dir:
        base = OmegaConf.load(base_config_path())
        where = (values.get("train.output_dir", base.train.output_dir),
                 values.get("experiment.name", base.experiment.name), resume_dir)
        try:
            run_dir, unfinished = find_run_dir(*where), None
        except ConfigError:
            unfinished = unfinished_run(*where)
            if unfinished is None:
                raise
        if unfinished is None:
            from modmimic.resume import resume_config

            cfg = resume_config(run_dir, [o for o in rest if not o.startswith("preset=")])
        else:  # killed before its first checkpoint: nothing to continue, so start it again
            from modmimic.rundir import RunLock
            from modmimic.resume import restart_config

            RunLock(unfinished).acquire().release()  # not while its process is still starting up

            cfg = restart_config(unfinished, [o for o in rest if not o.startswith("preset=")])
            run_dir = unfinished
            print(f"{PROG}: {unfinished} has no checkpoint (the run ended before its first epoch did): starting it "
                  "from scratch with its config.yaml, in a new run directory", file=sys.stderr, flush=True)
        if recipe is not None and recipe != cfg.recipe_name:
            raise ConfigError(f"recipe={recipe} but the run in {run_dir} was trained with recipe "
                              f"{cfg.recipe_name!r}; drop recipe= when resuming")
        preset = values.get("preset")
        if preset is not None and preset != cfg.get("preset", "robomimic"):
            raise ConfigError(f"preset={preset} but the run in {run_dir} was trained with preset "
                              f"{cfg.get('preset', 'robomimic')!r}; drop preset= when resuming")
    else:
        cfg = compose(recipe or "bc", rest)  # keys checked first, against the recipe file, before hydra runs
    for given, entry in zip(dataset_entries(cfg), dataset_entries(with_data(cfg))):
        problem = path_problem(entry["path"])
        if problem:
            raise DatasetNotFound(problem + ("" if os.path.isabs(str(given["path"]))
                                             else f" (relative to {os.getcwd()})"))
    check_dir_creatable(cfg.train.output_dir, "train.output_dir")
    if cfg.train.hdf5_memmap_dir:
        check_dir_creatable(cfg.train.hdf5_memmap_dir, "train.hdf5_memmap_dir")
    return cfg


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides of a hydra multirun (the basic sweeper's cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise ConfigError(f"cannot parse the sweep ({QUOTING}): {str(e).splitlines()[0]}") from None


# --- errors -----------------------------------------------------------------------------------------------------

_LABELS = {"ConfigError": ("configuration error", EXIT_BAD_INPUT), "DatasetError": ("dataset error", EXIT_BAD_INPUT),
           "DatasetNotFound": ("dataset error", EXIT_BAD_INPUT),
           "CheckpointError": ("checkpoint error", EXIT_BAD_INPUT),
           "NonFiniteLossError": ("training diverged", EXIT_FAILURE), "MemoryError": ("out of memory", EXIT_FAILURE),
           "RunStopped": ("stopped by", EXIT_INTERRUPTED), "KeyboardInterrupt": ("interrupted", EXIT_INTERRUPTED)}


def report(e: BaseException) -> int:
    """Print a one-paragraph message for ``e`` on stderr; return the exit status. modmimic's own errors (by class,
    without importing torch for them) get a label and no traceback; anything else is reported with the place it
    was raised. ``MODMIMIC_DEBUG=1`` prints the traceback first."""
    debug = os.environ.get("MODMIMIC_DEBUG", "0") not in ("0", "")
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    run_dir = getattr(e, "modmimic_run_dir", None)
    known = next((_LABELS[c.__name__] for c in type(e).__mro__ if c.__name__ in _LABELS), None)
    if known is not None:
        label, code = known
        code = getattr(e, "exit_code", code)  # a stop signal: 128 + its number
        msg = (f"{label} {e}" if label.endswith(" by") else f"{label}: {e}") if str(e) else label
        discarded = getattr(e, "modmimic_discarded_run_dir", None)
        if discarded and isinstance(e, KeyboardInterrupt):
            msg += (f" before the first epoch ended: no checkpoint was written, and the unfinished run directory "
                    f"{discarded} was removed")
        elif run_dir and getattr(e, "saved", None):
            msg += f"; continue with: python -m {PROG} resume_dir={run_dir}"
        elif run_dir and isinstance(e, KeyboardInterrupt):
            msg += interrupted_where(run_dir)
        elif run_dir and code == EXIT_FAILURE:
            msg += f". The full traceback is in {run_dir}/logs/error.txt"
    else:
        tb = traceback.extract_tb(e.__traceback__)
        at = f" (raised at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
        msg = f"training failed with {type(e).__name__}: {e}{at}"
        code = EXIT_FAILURE
        if run_dir:
            msg += f". The full traceback is in {run_dir}/logs/error.txt"
        if not debug:
            msg += ". Set MODMIMIC_DEBUG=1 to print the traceback"
    print(f"{PROG}: {msg.rstrip('.')}.", file=sys.stderr, flush=True)
    return code


def interrupted_where(run_dir: str) -> str:
    """What an interrupted run left: its last checkpoint and how to resume, or that there is none."""
    last = os.path.join(run_dir, "models", "last.pth")
    if os.path.isfile(last):
        return f"; the last checkpoint is {last}; continue with: python -m {PROG} resume_dir={run_dir}"
    return f"; no checkpoint was written in {run_dir}"


# --- warnings ---------------------------------------------------------------------------------------------------

_ANSI = None


def warning_source(filename: str) -> str | None:
    """The package a warning was raised in (``torch``, ``gymnasium``), or None for modmimic's own (and scripts)."""
    parts = os.path.normpath(str(filename)).split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        i = max(i for i, p in enumerate(parts) if p in ("site-packages", "dist-packages"))
        top = parts[i + 1] if i + 1 < len(parts) else "?"
        top = top.split(".")[0] if top.endswith(".py") else top
        return None if top in ("modmimic", "components", "recipes") else top
    if "modmimic" in parts or "components" in parts:
        return None
    return os.path.basename(str(filename)).removesuffix(".py") or None


def install_warning_format(prog: str) -> None:
    """Warnings on stderr as one line each: modmimic's as ``<prog>: warning: ...``; another library's attributed
    to it (``<prog>: warning from torch: ...``, colour codes stripped, first line only) and shown once per
    message, however often and from wherever it is raised."""
    import re

    global _ANSI
    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        source = warning_source(filename)
        text = str(message)
        if source is not None:
            text = _ANSI.sub("", text).strip().splitlines()[0] if text.strip() else category.__name__
            if (source, text) in seen:
                return
            seen.add((source, text))
            out = f"{prog}: warning from {source}: {text}\n"
        else:
            out = f"{prog}: warning: {text}\n"
        try:
            (file or sys.stderr).write(out)
        except (OSError, ValueError):
            pass

    warnings.showwarning = show
    warnings.formatwarning = lambda message, category, *a, **k: f"{prog}: warning: {message}\n"


# --- hydra entry point --------------------------------------------------------------------------------------

def register() -> None:
    """``modmimic_train``: the base config with every recipe as group ``recipe`` and hydra set up to leave no
    trace (no output folder, no log files, no chdir); sweeps record ``multirun.yaml`` under
    ``<train.output_dir>/multirun/<timestamp>/``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from modmimic.config import base_defaults, register_configs

    register_configs()
    base = OmegaConf.load(base_config_path())
    node = OmegaConf.merge({
        "defaults": [*base_defaults(), {"override hydra/job_logging": "none"},
                     {"override hydra/hydra_logging": "none"}],
        "hydra": {"output_subdir": None, "run": {"dir": "."},
                  "sweep": {"dir": "${train.output_dir}/multirun/${now:%Y%m%d%H%M%S}", "subdir": "."},
                  "job": {"chdir": False}},
    }, base)
    ConfigStore.instance().store(name="modmimic_train", node=node)


def _task(overrides: list[str], multirun: bool, cfg=None):
    """One hydra job: build (unless given) and train its config; failures become a message and an exit status
    (single run) or a recorded failure (sweep: the other jobs still run)."""
    try:
        if cfg is None:
            cfg = build_config(overrides)
        from modmimic.trainer import train

        return train(cfg)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a message and an exit status
        if isinstance(e, SystemExit):
            raise
        code = report(e)
        if multirun and not isinstance(e, KeyboardInterrupt):
            _FAILURES.append((" ".join(overrides), code))
            return None
        sys.exit(code)


def without_hydra(overrides: list[str]) -> list[str]:
    """A job's overrides without hydra's own (``hydra/launcher=joblib``, ``hydra.launcher.n_jobs=4``): those
    configure the sweep, not the run."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def record_job(sweep_dir: str, num: int, overrides: list[str], result) -> None:
    """``<sweep dir>/jobs/<num>.json``: a sweep job's overrides and run directory (None when it failed), which
    ``python -m modmimic.report <sweep dir>`` tabulates."""
    from modmimic.io import atomic_write_text

    os.makedirs(os.path.join(sweep_dir, "jobs"), exist_ok=True)
    run_dir = None if not result else result.get("run_dir")
    atomic_write_text(os.path.join(sweep_dir, "jobs", f"{int(num)}.json"),
                      json.dumps({"num": int(num), "overrides": list(overrides), "run_dir": run_dir}))


def recipe_keys(args: list[str]) -> list[str]:
    """``recipe=<path.yaml>`` (also in a sweep list) -> ``recipe=<registered key>``: hydra's config group holds the
    recipe file under a name (see :func:`modmimic.config.recipe_key`); names pass unchanged."""
    from modmimic.config import is_recipe_path, recipe_key

    out = []
    for a in args:
        if a.startswith("recipe="):
            values = a.split("=", 1)[1].split(",")
            a = "recipe=" + ",".join(recipe_key(v) if is_recipe_path(v) else v for v in values)
        out.append(a)
    return out


def _run_hydra(args: list[str], cfg=None) -> None:
    """Hand the command line to hydra. ``cfg``: the single run's config, already built and validated."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    register()
    args = recipe_keys(args)

    @hydra.main(config_path=None, config_name="modmimic_train", version_base="1.3")
    def hydra_main(_cfg):
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        result = _task(list(hc.overrides.task), multirun, None if multirun else cfg)
        if multirun:
            record_job(hc.sweep.dir, hc.job.num, list(hc.overrides.task), result)
        return None if result is None else result.get("best_valid_loss")

    argv0 = sys.argv[0]
    sys.argv = [argv0, *args]
    try:
        hydra_main()
    finally:
        sys.argv = [argv0]


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage())
        return 0
    install_warning_format(PROG)
    args = quote_paths(rewrite_dataset(args))
    try:  # config=<robomimic experiment.json> -> recipe=<its recipe> + one override per JSON key
        from modmimic.robomimic_config import expand_args

        args = expand_args(args)
    except BaseException as e:  # noqa: BLE001
        return report(e)
    flags, overrides, multirun = split_args(args)
    try:  # compose and validate every job before anything runs
        check_package()
        jobs = sweep_combinations(overrides) if multirun else [overrides]
        cfgs = [build_config(without_hydra(job)) for job in jobs]
    except BaseException as e:  # noqa: BLE001
        return report(e)
    _FAILURES.clear()
    try:
        if not multirun and not flags:  # one run, no hydra flag: its config is built; hydra would compose it again
            _task(overrides, False, cfgs[0])
        else:
            _run_hydra(args, None if multirun else cfgs[0])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_FAILURE)
    except BaseException as e:  # noqa: BLE001 - hydra itself failed
        return report(e)
    if _FAILURES:
        print(f"{PROG}: {len(_FAILURES)} of {len(jobs)} sweep jobs failed: "
              + "; ".join(f"[{o}] (exit {c})" for o, c in _FAILURES), file=sys.stderr)
        return max(c for _, c in _FAILURES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
