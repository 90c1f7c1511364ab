"""``python -m modmimic.eval checkpoint=<path> [episodes=50] [num_envs=K] [key=value ...]`` — roll a trained policy
out in the environment its dataset came from (robomimic ``run_trained_agent.py``).

Works with any recipe: the policy is rebuilt by ``policy_from_checkpoint`` and the environment from the checkpoint's
env metadata. Prints the success rate with a 95 % (Wilson) confidence interval, the mean return and episode length,
and episodes per second. ``num_envs=K`` plays K episodes at a time in K worker processes with one batched policy
call per step; episode ``i`` always starts from ``seed + i``, so the results do not depend on K.
Under ``torchrun --nproc-per-node N -m modmimic.eval ...`` the episodes are split over the processes (episode ``i``
on process ``i mod N``, still from ``seed + i``) and gathered on rank 0, which prints and writes the results (and
renders the video of its own episodes): the same episodes, hence the same success rate, as one process.
``video=<out.mp4>`` writes an MP4 (offscreen EGL rendering), ``write_dataset=<out.hdf5>`` the rollouts as a
robomimic dataset (actions, rewards, dones, states, model_file, obs, next_obs), ``json=<out.json>`` the summary and
every episode. ``server=<host:port>`` acts through a policy server (``python -m modmimic.serve``) instead of loading
the policy here: the checkpoint still gives the environment and must be the one served (same sha256); with the same
``seed`` the episodes equal the in-process ones.

Exit status: 0 done, 2 bad input (arguments, checkpoint, an environment or observations that do not fit the
policy), 1 failure while running (e.g. a crashed simulator), 130 interrupted. ``MODMIMIC_DEBUG=1`` prints
tracebacks.
"""
from __future__ import annotations

import json
import os
import sys
import time

from modmimic.cli import ArgumentError, convert, parse_kv, report as cli_report, run_main  # noqa: F401  (re-exported)
from modmimic.cli import usage_text

PROG = "modmimic.eval"
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_SEED = 100_000  # episode i starts from seed + i; demo generation uses 0, 1, ..., training rollouts 200000+

# argument -> (type, default, help)
ARGS = {
    "checkpoint": (str, None, "the checkpoint (.pth) to evaluate (required)"),
    "episodes": (int, 50, "number of episodes"),
    "num_envs": (int, 1, "environments played at once, each in its own worker process when > 1"),
    "horizon": (int, None, "maximum steps per episode (default: the checkpoint's experiment.rollout.horizon)"),
    "seed": (int, DEFAULT_SEED, "episode i starts from seed + i; also seeds the policy's sampling"),
    "terminate_on_success": (bool, True, "end an episode at its first success"),
    "env": (str, None, "evaluate in this environment instead of the dataset's (same simulator; default: the one "
                       "training rollouts used, experiment.env, else the dataset's)"),
    "device": (str, "cpu", "where the policy runs (cpu, cuda)"),
    "video": (str, None, "write an MP4 of the episodes here"),
    "video_skip": (int, 5, "render every n-th step"),
    "video_size": (int, 512, "video frame height and width in pixels"),
    "video_episodes": (int, None, "render only the first n episodes (default all)"),
    "camera": (str, None, "camera to render (robosuite default agentview)"),
    "write_dataset": (str, None, "write the rollouts to this robomimic HDF5 file"),
    "overwrite": (bool, False, "let write_dataset=, video= and json= replace existing files"),
    "json": (str, None, "write the summary and every episode as JSON here"),
    "task": (str, None, "multi-task policies: the task of every episode (a task name or an instruction; default: "
                        "the task the environment plays, e.g. Meta-World MT10's task seed mod 10)"),
    "instruction": (str, None, "language-conditioned policies: the instruction of every episode (may be new: it is "
                               "embedded with the checkpoint's local text encoder)"),
    "timeout": (float, 120.0, "seconds an environment worker may take to answer before it counts as hung"),
    "quiet": (bool, False, "print only the summary"),
    "server": (str, None, "act through a policy server (python -m modmimic.serve) at host:port or ws://host:port; "
                          "the checkpoint gives the environment and must be the one served"),
    "token_file": (str, None, "file holding the server's token (or $MODMIMIC_SERVE_TOKEN)"),
    "latency_ms": (float, None, "inject this inference delay: the environment keeps stepping at its control rate "
                                "with the queued chunk or the last action while the policy computes"),
    "execution": (str, "async", "with latency_ms: sync (wait for each chunk, holding the last action) or async "
                                "(execute the queue while the next chunk is computed, merge the overlap)"),
    "merge": (str, None, "with latency_ms: how overlapping chunks merge, latest or ensemble (default: ensemble "
                         "for temporal-ensembling policies, else latest)"),
    "refill_at": (int, None, "with latency_ms, async: ask for the next chunk when this many queued actions remain "
                             "(default max(delay, H - chunk_size))"),
    "inpaint": (bool, False, "with latency_ms, async: sampling policies (Diffusion, flow) inpaint the actions "
                             "executed while their chunk is computed, so chunks continue the motion"),
    "in_flight": (int, None, "with latency_ms, async: chunk requests an environment may have outstanding (default 1)"),
    "control_hz": (float, None, "with latency_ms: the environment's control rate (default its control_freq)"),
}


def usage() -> str:
    return usage_text(PROG, "checkpoint=<path.pth> [key=value ...]",
                      "Roll a trained modmimic policy out in its dataset's environment and report the success rate "
                      "(95 % confidence interval), return and episode length.", ARGS,
                      "0 done, 1 failure while running, 2 bad input, 130 interrupted. MODMIMIC_DEBUG=1 prints "
                      "tracebacks.")


def parse_args(argv: list[str]) -> dict:
    out = parse_kv(argv, ARGS, PROG)
    if not out["checkpoint"]:
        raise ArgumentError("checkpoint=<path.pth> is required")
    for k in ("episodes", "num_envs", "video_skip", "video_size"):
        if out[k] is None or out[k] < 1:
            raise ArgumentError(f"{k} must be a positive integer, got {out[k]!r}")
    if out["horizon"] is not None and out["horizon"] < 1:
        raise ArgumentError(f"horizon must be a positive integer, got {out['horizon']!r}")
    check_latency_args(out)
    check_outputs(out["overwrite"], write_dataset=out["write_dataset"], video=out["video"], json=out["json"])
    if out["task"] is not None and out["instruction"] is not None:
        raise ArgumentError("give task= or instruction=, not both")
    out["task"] = out.pop("instruction") if out["instruction"] is not None else out["task"]
    out.pop("instruction", None)
    return out


def check_latency_args(a: dict) -> None:
    from modmimic.chunking import MERGES, MODES

    if a["latency_ms"] is None:
        given = [k for k in ("merge", "refill_at", "control_hz", "in_flight") if a[k] is not None] + (["inpaint"] if a["inpaint"]
                                                                                           else [])
        if given or a["execution"] != "async":
            raise ArgumentError(f"{', '.join(given) or 'execution'}= only applies with latency_ms=<n>")
        return
    if not a["latency_ms"] >= 0:
        raise ArgumentError(f"latency_ms must be >= 0, got {a['latency_ms']}")
    if a["execution"] not in MODES:
        raise ArgumentError(f"execution must be one of {', '.join(MODES)}, got {a['execution']!r}")
    if a["merge"] is not None and a["merge"] not in MERGES:
        raise ArgumentError(f"merge must be one of {', '.join(MERGES)}, got {a['merge']!r}")
    if a["refill_at"] is not None and a["refill_at"] < 0:
        raise ArgumentError(f"refill_at must be >= 0, got {a['refill_at']}")
    if a["in_flight"] is not None and a["in_flight"] < 1:
        raise ArgumentError(f"in_flight must be >= 1, got {a['in_flight']}")
    if a["control_hz"] is not None and not a["control_hz"] > 0:
        raise ArgumentError(f"control_hz must be positive, got {a['control_hz']}")


def with_latency(policy, ckpt: dict, latency_ms: float, execution: str = "async", merge: str | None = None,
                 refill_at: int | None = None, control_hz: float | None = None, inpaint: bool = False,
                 in_flight: int | None = None):
    """``policy`` behind a :class:`modmimic.chunking.ChunkExecutor` whose chunks arrive ``latency_ms`` late, in
    control steps of the environment (its ``control_freq``, or ``control_hz``)."""
    from modmimic.chunking import executor_for, latency_to_steps
    from modmimic.export import control_rate

    rate = control_hz or control_rate(ckpt)
    if rate is None:
        raise ArgumentError("latency_ms= needs the environment's control rate and the checkpoint's env metadata has "
                            "no control_freq: pass control_hz=<Hz>")
    try:
        return executor_for(policy, latency_to_steps(latency_ms, rate), execution, merge, refill_at, inpaint=inpaint,
                            in_flight=in_flight or 1)
    except ValueError as e:
        raise ArgumentError(f"latency_ms={latency_ms:g}: {e}") from None


OUTPUTS = {"write_dataset": "a new robomimic HDF5 file", "video": "an MP4 of the episodes", "json": "the JSON summary"}


def check_outputs(overwrite: bool, **paths: str | None) -> None:
    """No output (``write_dataset=``, ``video=``, ``json=``) replaces an existing file unless ``overwrite=true``."""
    for key, path in paths.items():
        if path is None or overwrite or not os.path.lexists(path):
            continue
        what = "a directory" if os.path.isdir(path) else f"an existing file of {os.path.getsize(path)} bytes"
        raise ArgumentError(f"{key}={path} is {what}; writing the rollouts would replace it with {OUTPUTS[key]}. "
                            "Pass overwrite=true to replace it, or choose another path")


def evaluate(checkpoint, episodes: int = 50, num_envs: int = 1, horizon: int | None = None,
             seed: int = DEFAULT_SEED, terminate_on_success: bool = True, env: str | None = None,
             device: str = "cpu", video: str | None = None, video_skip: int = 5, video_size: int = 512,
             video_episodes: int | None = None, camera: str | None = None, write_dataset: str | None = None,
             timeout: float = 120.0, on_episode=None, json_path: str | None = None, overwrite: bool = False,
             trusted_modules=None, group=None, server: str | None = None, token: str | None = None,
             latency_ms: float | None = None, execution: str = "async", merge: str | None = None,
             refill_at: int | None = None, control_hz: float | None = None, inpaint: bool = False,
             in_flight: int | None = None, task: str | None = None) -> dict:
    """Evaluate a checkpoint (path or loaded dict). Returns the summary (:func:`modmimic.rollout.summarize` plus
    ``Episodes_per_Second``, ``Wall_Seconds``, ``env_name``, ``horizon``) with ``episodes``: one dict per episode.
    ``write_dataset``, ``video`` and ``json_path`` must not exist unless ``overwrite``; ``trusted_modules``: see
    :func:`modmimic.policy.policy_from_checkpoint`. ``group``: the processes that share the episodes (default: every
    process of a torchrun launch, see :mod:`modmimic.distributed`); every rank returns the whole summary, rank 0
    writes the files. ``server``: act through the policy server at that URL (``token``: its shared secret) instead of
    loading the policy here; the checkpoint must be the one it serves (same sha256). ``latency_ms``: chunks arrive
    that late, the environment stepping meanwhile (:func:`with_latency`; ``execution``, ``merge``, ``refill_at``,
    ``control_hz`` as there). ``task``: a multi-task policy's
    task (name or instruction) for every episode, instead of each environment's own; the summary then has
    ``Tasks`` (per-task summaries) and ``Mean_Task_Success_Rate``."""
    import torch

    from modmimic import distributed

    check_outputs(overwrite, write_dataset=write_dataset, video=video, json=json_path)
    if group is None:
        group = distributed.setup(torch.device(device))
        device = str(group.device)
    record = write_dataset is not None  # every rank records; rank 0 writes the gathered episodes
    if not group.is_main:
        video = json_path = write_dataset = None

    from modmimic.envs import EnvError
    from modmimic.policy import policy_from_checkpoint
    from modmimic.rollout import rollout, summarize, write_episodes

    if server is not None:
        policy, ckpt = remote_policy(checkpoint, server, token, seed)
    else:
        policy, ckpt = policy_from_checkpoint(device=device,
                                              ckpt_path=None if isinstance(checkpoint, dict) else checkpoint,
                                              ckpt_dict=checkpoint if isinstance(checkpoint, dict) else None,
                                              trusted_modules=trusted_modules)
    from modmimic.envs import update_env_meta

    experiment = (ckpt.get("config") or {}).get("experiment") or {}
    if env is None and experiment.get("env"):  # where training rolled out (e.g. Meta-World/MT10 for co-trained tasks)
        env = str(experiment["env"])
    env_meta = update_env_meta(ckpt.get("env_metadata") or {}, experiment.get("env_meta_update_dict"))
    if not env_meta:
        raise EnvError("the checkpoint has no env metadata (its training dataset had no data.attrs['env_args']), so "
                       "there is no environment to evaluate it in")
    if task is not None and not getattr(policy, "multi_task", False):
        from modmimic.config import ConfigError

        raise ConfigError(f"task={task!r}: the checkpoint's policy is not multi-task (trained without "
                          "task.conditioning)")
    served = policy
    if latency_ms is not None:
        policy = with_latency(served, ckpt, latency_ms, execution, merge, refill_at, control_hz, inpaint, in_flight)
    if horizon is None:
        horizon = int(((ckpt.get("config") or {}).get("experiment") or {}).get("rollout", {}).get("horizon") or 400)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of a few observations: one thread is fastest; the simulators use the rest
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            eps = rollout(policy, env_meta, episodes, horizon, seed=seed, num_envs=num_envs,
                          terminate_on_success=terminate_on_success, record=record,
                          video_path=video, video_skip=video_skip, video_size=(video_size, video_size),
                          camera_name=camera, video_episodes=video_episodes, on_episode=on_episode, timeout=timeout,
                          env_name=env, indices=distributed.episode_share(episodes, group) if group.active else None,
                          task=task)
    finally:
        torch.set_num_threads(threads)
        if server is not None:
            served.close()
    eps = distributed.gather_episodes(eps, group)
    group.close()  # a process group this call created (torchrun); one made by the caller stays
    wall = time.perf_counter() - t0
    from modmimic.rollout import summarize_tasks

    out = summarize(eps)
    out.update(summarize_tasks(eps))
    out.update(Wall_Seconds=wall, Episodes_per_Second=len(eps) / wall, env_name=env or env_meta.get("env_name"),
               horizon=horizon, num_envs=num_envs, seed=seed)
    if latency_ms is not None:
        out.update(latency_ms=latency_ms, latency_steps=policy.delay, execution=policy.mode, merge=policy.merge,
                   inpaint=policy.inpaint, in_flight=policy.in_flight,
                   stalled_steps=policy.stalls, chunk_requests=policy.requests)
    if write_dataset is not None:
        meta = dict(env_meta)
        if env is not None:
            meta["env_name"] = env
        write_episodes(write_dataset, eps, meta)
        out["dataset"] = os.path.abspath(write_dataset)
    if video is not None:
        out["video"] = os.path.abspath(video)
    out["episodes"] = [{"index": e.index, "seed": e.seed, "success": e.success, "return": e.ret, "length": e.length,
                        **({"task": e.task} if e.task is not None else {})} for e in eps]
    if json_path is not None:
        from modmimic.io import atomic_write_text

        atomic_write_text(json_path, json.dumps(out, indent=1))
    return out


def remote_policy(checkpoint, server: str, token: str | None, seed: int):
    """``(RemotePolicy, checkpoint dict)``: the served policy, checked to be ``checkpoint`` (its sha256), seeded as
    the in-process evaluation seeds torch."""
    from modmimic.client import RemoteError, RemotePolicy
    from modmimic.export import sha256_file
    from modmimic.policy import CheckpointError, load_checkpoint

    if isinstance(checkpoint, dict):
        raise ArgumentError("server= needs the checkpoint as a path (its sha256 is compared with the served one)")
    ckpt = load_checkpoint(checkpoint)
    try:
        policy = RemotePolicy(server, token=token, seed=seed)
    except (RemoteError, ValueError) as e:
        raise ArgumentError(f"server={server}: {e}") from None
    served, here = policy.metadata.get("checkpoint_sha256"), sha256_file(checkpoint)
    if served != here:
        policy.close()
        raise CheckpointError(f"server={server} serves another checkpoint (sha256 {str(served)[:12]}...) than "
                              f"{checkpoint} ({here[:12]}...): evaluate the checkpoint the server loaded")
    return policy, ckpt


def format_summary(s: dict) -> str:
    lo, hi = s["Success_Rate_CI95_Low"], s["Success_Rate_CI95_High"]
    lines = [f"success rate {s['Success_Rate']:.3f} ({s['Num_Success']}/{s['Num_Episodes']}), "
             f"95% CI [{lo:.3f}, {hi:.3f}] (Wilson)",
             f"return {s['Return']:.3f} +- {s['Return_Std']:.3f}   episode length {s['Horizon']:.1f} steps",
             f"{s['Episodes_per_Second']:.2f} episodes/s ({s['Wall_Seconds']:.1f} s, {s['num_envs']} env"
             f"{'s' if s['num_envs'] > 1 else ''})"]
    extra = [f"{k[4:].lower()} (episode max) {v:.3f}" for k, v in s.items() if k.startswith("Max_")]
    if extra:
        lines.insert(2, "mean " + ", ".join(extra))
    if s.get("latency_ms") is not None:
        how = s["merge"] + (", inpainting" if s.get("inpaint") else "") + (
            f", {s['in_flight']} requests in flight" if s.get("in_flight", 1) > 1 else "")
        lines.append(f"latency {s['latency_ms']:g} ms = {s['latency_steps']} control steps, {s['execution']} "
                     f"execution ({how}): {s['chunk_requests']} requests, {s['stalled_steps']} steps held")
    if s.get("Tasks"):
        width = max(len(t) for t in s["Tasks"])
        for t, m in s["Tasks"].items():
            lines.append(f"  {t.ljust(width)}  success rate {m['Success_Rate']:.3f} ({m['Num_Success']}/"
                         f"{m['Num_Episodes']})")
        lines.append(f"mean success rate over {len(s['Tasks'])} tasks {s['Mean_Task_Success_Rate']:.3f}")
    if s.get("video"):
        lines.append(f"video: {s['video']}")
    if s.get("dataset"):
        lines.append(f"rollout dataset: {s['dataset']}")
    return "\n".join(lines)


def report(e: BaseException) -> int:
    from modmimic.config import ConfigError
    from modmimic.data.hdf5 import DatasetError
    from modmimic.envs import EnvError
    from modmimic.policy import CheckpointError
    from modmimic.rollout import RolloutError

    return cli_report(e, PROG, [(CheckpointError, "checkpoint error"),
                                (RolloutError, "the policy does not fit the environment"),
                                (EnvError, "environment error"), ((ConfigError, DatasetError), "bad input")],
                      failure="evaluation failed")


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, usage, run, report)


def run(argv: list[str]) -> int:
    from modmimic.package import check_package

    check_package()
    a = parse_args(argv)
    quiet = a.pop("quiet") or int(os.environ.get("RANK", "0") or 0) > 0  # torchrun: rank 0 prints

    def on_episode(e):
        if not quiet:
            print(f"  episode {e.index:4d} (seed {e.seed}{f', {e.task}' if e.task else ''}): "
                  f"{'success' if e.success else 'failure'}  "
                  f"length {e.length:4d}  return {e.ret:.3f}", flush=True)

    if not quiet:
        print(f"{PROG}: {a['checkpoint']}: {a['episodes']} episodes, {a['num_envs']} env"
              f"{'s' if a['num_envs'] > 1 else ''}, seeds {a['seed']}..{a['seed'] + a['episodes'] - 1}",
              flush=True)
    if a["server"] is not None or a["token_file"] is not None:
        from modmimic.serve import read_token

        a["token"] = read_token(a["token_file"])
    a.pop("token_file")
    s = evaluate(a.pop("checkpoint"), json_path=a.pop("json"), on_episode=on_episode, **a)
    if int(os.environ.get("RANK", "0") or 0) > 0:
        return 0
    print(f"{s['env_name']}, horizon {s['horizon']}:\n{format_summary(s)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
