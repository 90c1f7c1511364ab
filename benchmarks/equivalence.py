"""Parameters and losses of every recipe (and robomimic flag variant) after 12 training steps, saved to a file,
and the comparison of two such files bit for bit. Written for refactors that must not change what trains:

    python benchmarks/equivalence.py run before.pt       # on the tree before the change
    python benchmarks/equivalence.py run after.pt        # after it
    python benchmarks/equivalence.py compare before.pt after.pt

Tiny networks (tests/conftest.py's ``tiny_overrides``) on a generated point-reach dataset; one thread."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

# robomimic flag variants: (recipe composed, extra overrides)
VARIANTS = [
    ("bc", ["algo.rnn.enabled=true", "algo.rnn.horizon=10", "train.seq_length=10"]),
    ("bc", ["algo.gmm.enabled=true"]),
    ("bc", ["algo.vae.enabled=true"]),
    ("bc", ["algo.gaussian.enabled=true"]),
    ("bc", ["algo.transformer.enabled=true", "train.frame_stack=10", "algo.transformer.context_length=10"]),
    ("bc", ["algo.gmm.enabled=true", "algo.rnn.enabled=true", "algo.rnn.horizon=10", "train.seq_length=10"]),
    ("bcq", ["algo.action_sampler.gmm.enabled=true", "algo.action_sampler.vae.enabled=false"]),
    ("bcq", ["algo.critic.distributional.enabled=true", "algo.critic.value_bounds=[0.0,1.0]"]),
    ("hbc", ["algo.planner.vae.enabled=false"]),
    ("hbc", ["algo.actor.gmm.enabled=true"]),
    ("gl", ["algo.vae.enabled=false"]),
]


def cases():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from modmimic.config import list_recipes

    shipped = [r for r in list_recipes() if os.path.isfile(os.path.join(ROOT, "recipes", f"{r}.yaml"))]
    return [(r, []) for r in shipped] + VARIANTS


def run_case(recipe, extra, data_path):
    from conftest import tiny_overrides

    from modmimic.algo import algo_factory
    from modmimic.config import compose
    from modmimic.trainer import build_data, seed_everything, with_data

    cfg = with_data(compose(recipe, [f"train.data={data_path}", "train.batch_size=8",
                                     "experiment.logging.log_tb=false", *tiny_overrides(recipe), *extra]))
    seed_everything(0)
    data = build_data(cfg)
    algo = algo_factory(cfg.algo_name, cfg, data.obs_shapes, data.ac_dim)
    algo.set_train()
    losses = []
    for _ in range(STEPS):
        batch = algo.postprocess_batch_for_training(algo.process_batch_for_training(data.train_sampler.sample()))
        info = algo.train_on_batch(batch, 1)
        losses.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in info.items()
                       if torch.is_tensor(v) or isinstance(v, (int, float))})
    return {"recipe": str(algo.recipe_name), "params": {k: v.detach().clone() for k, v in algo.nets.state_dict().items()},
            "losses": losses}


def run(out):
    torch.set_num_threads(1)
    from modmimic.data.synthetic import make_reach_dataset

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "reach.hdf5")
    make_reach_dataset(path, n_demos=12, dim=2, seed=0, max_len=20, valid_fraction=0.25, noise=0.05)
    results = {}
    for recipe, extra in cases():
        key = " ".join([recipe, *extra])
        try:
            results[key] = run_case(recipe, extra, path)
        except Exception as e:  # noqa: BLE001 - recorded: a case that fails must fail the same way after
            results[key] = {"error": f"{type(e).__name__}: {e}"}
        print(key, "->", results[key].get("recipe", results[key].get("error")), flush=True)
    torch.save(results, out)


def same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def compare(before, after) -> int:
    a, b = torch.load(before, weights_only=True), torch.load(after, weights_only=True)  # results are plain data
    bad = [k for k in a if k not in b or not same(a[k], b[k])]
    for k in a:
        print(f"{'same' if k not in bad else 'DIFFERENT'}  {k}  ({a[k].get('recipe', a[k].get('error'))})")
    for k in b:
        if k not in a:
            print(f"new   {k}  (not in {before})")
    print(f"{len(a) - len(bad)}/{len(a)} cases bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "compare"])
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    sys.exit(run(args.files[0]) or 0 if args.mode == "run" else compare(*args.files[:2]))
