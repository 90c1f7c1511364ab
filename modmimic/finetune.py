"""``python -m modmimic.finetune checkpoint=<offline RL checkpoint> [online.env_steps=N] [online.ratio=0.5] [key=value
...]`` — offline-to-online fine-tuning: continue training an offline-RL policy (IQL, Cal-QL, CQL) with interaction
in its dataset's environment.

The run is an ordinary training run (:func:`modmimic.trainer.train`: epochs, evaluation rollouts, logging,
checkpoints, resume) whose configuration is the checkpoint's, started from its weights (``experiment.ckpt_path``;
optimizers start afresh), with an ``online`` section that makes each gradient step's batch mix offline windows
and online transitions (:mod:`modmimic.online`):

    online.env_steps             the budget of environment steps (transitions), all environments together (10 000)
    online.ratio                 share of each batch drawn from the online replay buffer (0.5: RLPD's symmetric mix)
    online.env_steps_per_update  transitions collected per gradient step (1.0)
    online.num_envs              environments stepped together (1; more run in worker processes)
    online.buffer_size           replay buffer capacity (null: online.env_steps, i.e. keep everything)
    online.warmup_steps          transitions collected before the first update that uses online rows (0: the first
                                 finished episode)
    online.horizon               steps before an episode is cut (null: experiment.rollout.horizon)
    online.explore_std           null: explore with a sample of the actor's distribution; a number: with the actor's
                                 evaluation action plus Gaussian noise of this std (action units), so exploration
                                 does not follow the actor's learned std
    online.offline_rows          updates of the recipe that train on each batch's offline rows only ([]: none;
                                 [actor]: IQL's actor fits the data while its critic and value learn from both)
    online.online_rows           updates that train on each batch's online rows only ([]: none; [actor]: IQL's actor
                                 weighs its own transitions by their advantage, not the data's worse modes)

IQL's actor weighs rows by ``exp((Q - V) / beta)``; with ``+batch.mc_return_key=mc_return
+losses.actor.q_key=mc_return`` by ``exp((G - V) / beta)``, ``G`` the Monte-Carlo return-to-go of the row's demo or
online episode (the setting that reached 0.95 on mixed-quality Lift, docs/learning.md).

``train.num_epochs`` defaults to what spends the budget: ``ceil(env_steps / env_steps_per_update /
experiment.epoch_every_n_steps)``. Any other key of the checkpoint's config can be overridden (``train.seed=1``,
``experiment.rollout.rate=5``, ``dataset=<path>`` when the dataset has moved). The run directory is
``<train.output_dir>/<experiment.name>_finetune/<timestamp>``; ``python -m modmimic.train resume_dir=<run dir>`` (or
``python -m modmimic.finetune resume_dir=<run dir>``) continues it bit for bit, the replay buffer included.

Exit status: 0 done, 2 bad input (arguments, a checkpoint that is not an offline-RL policy, unknown keys, a missing
dataset), 1 failure while training, 130 interrupted. ``MODMIMIC_DEBUG=1`` prints tracebacks.
"""
from __future__ import annotations

import copy
import math
import os
import sys

from modmimic.cli import ArgumentError

PROG = "modmimic.finetune"


def usage() -> str:
    return (f"usage: python -m {PROG} checkpoint=<offline RL checkpoint.pth> [online.env_steps=N] [online.ratio=0.5] "
            "[key=value ...]\n"
            f"       python -m {PROG} resume_dir=<fine-tuning run dir> [key=value ...]\n\n"
            + __doc__.split("\n\n", 1)[1].rsplit("\n\nExit status", 1)[0]
            + "\n\nExit status: 0 done, 1 failure while training, 2 bad input, 130 interrupted.")


def check_recipe(ckpt: dict, source: str) -> None:
    """Only offline-RL recipes (a critic trained on rewards, a stochastic actor to explore with) fine-tune."""
    from modmimic.policy import CheckpointError

    cfg = ckpt["config"]
    requires = list(cfg.get("requires") or [])
    if "rewards" not in requires or not cfg.get("value_fns"):
        raise CheckpointError(f"{source} holds a {ckpt['recipe_name']!r} policy, not an offline-RL one: fine-tuning "
                              "continues a recipe that learns a critic from rewards (iql, cal_ql, cql)")


def finetune_config(argv: list[str]):
    """The validated config of a fine-tuning run from the command line."""
    from omegaconf import OmegaConf, open_dict

    from modmimic.config import ConfigError, finalize
    from modmimic.dataset import DatasetNotFound, with_data
    from modmimic.data.check import path_problem
    from modmimic.logger import check_dir_creatable
    from modmimic.online import ONLINE_DEFAULTS, mark_rows, online_settings
    from modmimic.policy import CheckpointError, load_checkpoint
    from modmimic.stored import StoredFileError, check_stored_config
    from modmimic.train import quote_paths, rewrite_dataset
    from modmimic.resume import with_overrides
    from modmimic.trust import stored_config_modules

    args = quote_paths(rewrite_dataset(list(argv)))
    if any(a.split("=", 1)[0] in ("resume", "resume_dir") for a in args):
        from modmimic.train import build_config

        if any(a.startswith("checkpoint=") for a in args):
            raise ArgumentError("give checkpoint= to start fine-tuning or resume_dir= to continue a run, not both")
        cfg = build_config(args)
        if cfg.get("online") is None:
            raise ConfigError(f"{cfg.resume_dir} is not a fine-tuning run (its config has no online section); "
                              "continue it with python -m modmimic.train")
        return cfg
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ArgumentError(f"arguments are key=value, got {bad[0]!r}")
    path = next((a.split("=", 1)[1] for a in args if a.startswith("checkpoint=")), None)
    if not path:
        raise ArgumentError("checkpoint=<path.pth> is required (an offline-RL checkpoint, e.g. runs/.../models/last.pth)")
    overrides = [a for a in args if not a.startswith("checkpoint=")]
    for a in overrides:
        if a.split("=", 1)[0].lstrip("+~") in ("recipe", "preset", "config"):
            raise ArgumentError(f"{a.split('=', 1)[0]}= cannot change: the recipe and its settings are the checkpoint's")
    path = os.path.abspath(os.path.expanduser(path))
    ckpt = load_checkpoint(path)
    check_recipe(ckpt, path)
    stored = (ckpt.get("trainer_state") or {}).get("config") or ckpt["config"]
    try:
        stored = copy.deepcopy(check_stored_config(stored, path, stored_config_modules()))
    except StoredFileError as e:
        raise CheckpointError(str(e)) from None
    del ckpt
    stored["online"] = dict(ONLINE_DEFAULTS)
    stored["experiment"]["ckpt_path"] = path
    stored["experiment"]["name"] = f"{stored['experiment']['name']}_finetune"
    stored["train"]["stop_after_epoch"] = None
    stored.pop("resume", None), stored.pop("resume_dir", None)
    output_dir = [a for a in overrides if a.split("=", 1)[0] == "train.output_dir"]
    cfg = with_overrides(OmegaConf.create(stored), overrides)
    with open_dict(cfg):
        cfg.resume, cfg.resume_dir = False, None
        if output_dir:
            cfg.train.output_dir = output_dir[-1].split("=", 1)[1]
        if not any(a.split("=", 1)[0] == "train.num_epochs" for a in overrides):
            o = online_settings(cfg)
            cfg.train.num_epochs = max(1, math.ceil(o["env_steps"] / float(o["env_steps_per_update"])
                                                    / int(cfg.experiment.epoch_every_n_steps or 1)))
    cfg = finalize(cfg)
    mark_rows(cfg)  # checks the online section too
    if not cfg.experiment.epoch_every_n_steps:
        raise ConfigError("fine-tuning needs experiment.epoch_every_n_steps (gradient steps per epoch), not null")
    data = with_data(cfg).train.data
    problem = path_problem(str(data)) if data else "the checkpoint names no dataset (train.data); give dataset=<path>"
    if problem:
        raise DatasetNotFound(f"{problem}: fine-tuning mixes the offline dataset into every batch; give dataset=<path>")
    check_dir_creatable(cfg.train.output_dir, "train.output_dir")
    return cfg


def main(argv: list[str] | None = None) -> int:
    from modmimic.cli import report as cli_report
    from modmimic.train import install_warning_format, report

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(usage())
        return 0
    install_warning_format(PROG)
    try:
        cfg = finetune_config(args)
        from modmimic.trainer import train

        train(cfg)
    except ArgumentError as e:
        return cli_report(e, PROG)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a message and an exit status
        if isinstance(e, SystemExit):
            raise
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
