"""The step engine: recipes compile to a flat program with declared keys, checked before anything runs; recipes
load from anywhere; ``python -m modmimic.recipe explain`` shows the program."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.config import ConfigError, compose, list_recipes
from modmimic.program import Prepare, Update, run_step

SHAPES = {"pos": (2,), "goal_pos": (2,), "vel": (2,)}


def build(recipe, *overrides, tiny=None):
    cfg = compose(recipe, [*(tiny(recipe) if tiny else []), *overrides])
    return algo_factory(cfg.algo_name, cfg, SHAPES, 2)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


FAST_COMPILE = ("bc", "bc_rnn_gmm", "iql", "cql", "bcq_gmm", "hbc", "diffusion_policy", "act")


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[] if r in FAST_COMPILE else [pytest.mark.slow])
                                    for r in list_recipes()])
def test_every_shipped_recipe_compiles_with_its_keys_checked(recipe, tiny):
    algo = build(recipe, tiny=tiny)
    assert algo.program.steps, recipe
    for s in algo.program.steps:
        assert isinstance(s, (Prepare, Update))


def test_a_loss_reading_an_unproduced_key_fails_at_build_time(tmp_path, tiny):
    # IQL whose value loss no longer keeps V(s) for the actor (what used to crash at step 1 with a TypeError)
    r = write(tmp_path / "iql_no_value.yaml", """\
        defaults: [iql, _self_]
        recipe_name: iql_no_value
        losses:
          vf:
            keep_value: null
        """)
    with pytest.raises(ConfigError) as e:
        build(str(r), *tiny("iql"))
    msg = str(e.value)
    assert "iql_no_value" in msg and "losses.actor" in msg and "awr_actor" in msg and "'value_pred'" in msg
    assert "no step of the recipe produces it" in msg


def test_a_key_produced_too_late_names_its_producer(tmp_path, tiny):
    # the value prediction moved into the actor's own update: still read by nothing before, but a prepare of the
    # critic update reading it must run after it
    r = write(tmp_path / "late.yaml", """\
        defaults: [iql, _self_]
        recipe_name: late
        prepare:
          - fn: modmimic.components.losses.critic.value_target
            nets: {value: vf}
        losses:
          vf:
            keep_value: null
        updates:
          - name: critic
            losses: {critic: 1.0}
            optimizer: critic
            targets: [critic_target]
          - name: vf
            losses: {vf: 1.0}
            optimizer: vf
            prepare:
              - fn: modmimic.components.losses.iql.min_target_q
                nets: {critic: critic_target}
          - name: actor
            losses: {actor: 1.0}
            optimizer: actor
            prepare:
              - fn: modmimic.components.losses.iql.value_prediction
                nets: {value: vf}
        """)
    algo = build(str(r), *tiny("iql"))  # every read is produced before it: builds
    assert [type(s).__name__ for s in algo.program.steps] == ["Prepare", "Update", "Prepare", "Update", "Prepare",
                                                               "Update"]
    r2 = write(tmp_path / "late2.yaml", """\
        defaults: [iql, _self_]
        recipe_name: late2
        prepare:
          - fn: modmimic.components.losses.critic.value_target
            nets: {value: vf}
          - fn: modmimic.components.losses.iql.value_prediction
            nets: {value: vf}
        losses:
          vf:
            keep_value: null
        updates:
          - name: critic
            losses: {critic: 1.0}
            optimizer: critic
            targets: [critic_target]
          - name: vf
            losses: {vf: 1.0}
            optimizer: vf
          - name: actor
            losses: {actor: 1.0}
            optimizer: actor
            prepare:
              - fn: modmimic.components.losses.iql.min_target_q
                nets: {critic: critic_target}
        """)
    with pytest.raises(ConfigError, match=r"late2.*losses.vf \(expectile_value\) reads 'q_data_min'.*produced by "
                                          r"updates\[2\] \(actor\).prepare\[0\], which must run before it"):
        build(str(r2), *tiny("iql"))


def test_a_produced_key_nobody_reads_is_a_warning(tiny):
    with pytest.warns(UserWarning, match=r"recipe 'iql': losses.critic produces 'q_kept', which no later step reads"):
        build("iql", "+losses.critic.keep_pred=q_kept", tiny=tiny)


def test_unknown_and_null_arguments_are_errors(tiny):
    with pytest.raises(ConfigError, match=r"unknown argument 'use_hubr' \(did you mean 'use_huber'\?\)"):
        build("iql", "+losses.critic.use_hubr=true", tiny=tiny)


def test_losses_never_write_into_the_batch_the_engine_writes_declared_outputs(reach_hdf5, tiny):
    from modmimic.config import all_obs_keys
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    cfg = compose("cql", [*tiny("cql"), "observation.modalities.obs.low_dim=[pos,goal_pos,vel]"])
    store = load_episode_store(str(reach_hdf5), all_obs_keys(cfg), load_next_obs=True)
    algo = algo_factory("cql", cfg, store.obs_shapes(), store.ac_dim)
    b = algo.process_batch_for_training(WindowSampler(store, 8, seed=0).sample())
    before = set(b.keys(include_nested=True, leaves_only=True))
    algo.set_train()
    info = run_step(algo.program, b.clone(False), epoch=1, step=0)
    assert set(b.keys(include_nested=True, leaves_only=True)) == before
    # the declared outputs: the critic's predictions (for the penalty) and the actor's log-prob (for the temperature)
    writes = {c.where: c.writes for s in algo.program.steps if isinstance(s, Update) for _, c, _ in s.losses}
    assert writes["losses.critic"] == ["q_data"] and writes["losses.actor"] == ["actor_log_prob"]
    assert all(torch.is_tensor(v) for k, v in info.items() if k != "Loss")


def test_distribution_needs_are_checked_at_build_time(tiny):
    from modmimic.algo import bind_call

    class NoLogProb(torch.nn.Module):
        distribution_ops = frozenset({"sample", "mode"})

    with pytest.raises(ConfigError, match="needs log_prob from the distribution of network 'p'"):
        bind_call("losses.bc", {"fn": "modmimic.components.losses.bc.nll", "nets": {"policy": "p"}},
                  lambda n: (NoLogProb(), n))


def test_explain_lists_the_steps_in_update_order():
    from modmimic.recipe import explain

    text = explain("iql")
    order = [text.index(s) for s in ("value_target", "min_target_q", "update 'critic'", "update 'vf'",
                                     "update 'actor'", "polyak critic_target")]
    assert order[:5] == sorted(order[:5]) and text.index("update 'critic'") < order[5] < text.index("update 'vf'")
    assert "reads action, q_data_min, value_pred" in text and "acting: Direct(net=actor)" in text
    hbc = explain("hbc")
    assert hbc.index("[planner] update") < hbc.index("prepare (no grad)  actor_subgoals") < hbc.index("[actor] update")
    for rows in ("offline", "online"):  # fine-tuning's online.offline_rows / online_rows set an update's rows
        assert f"update 'actor' ({rows} rows only)" in explain("iql", [f"+updates.2.rows={rows}"])
    assert "rows only" not in text


MY_LOSS = """\
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def huber_bc(batch, policy, delta: float = 1.0) -> dict:
    loss = F.huber_loss(policy(batch), batch[K.ACTION], delta=delta)
    return {"loss": loss}
"""

MY_RECIPE = """\
# My BC: robomimic's BC with a Huber loss from my own module.
defaults: [bc, _self_]
recipe_name: my_bc
losses:
  bc:
    fn: my_losses.huber_bc
    nets: {policy: policy}
    delta: 0.5
"""


def test_a_recipe_from_outside_the_repo_trains(tmp_path, reach_hdf5):
    """recipe=<path> and $MODMIMIC_RECIPE_PATH, with a loss from the user's own importable module."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "my_losses.py").write_text(MY_LOSS)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "my_bc.yaml").write_text(MY_RECIPE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib"), "MODMIMIC_RECIPE_PATH": str(tmp_path / "recipes")}
    common = [f"dataset={reach_hdf5}", "train.num_epochs=1", "experiment.epoch_every_n_steps=3", "train.batch_size=8",
              "algo.actor_layer_dims=[16]", "observation.modalities.obs.low_dim=[pos,goal_pos,vel]",
              "experiment.rollout.enabled=false", "experiment.logging.log_tb=false", f"train.output_dir={tmp_path}/runs"]
    for recipe in ("recipes/my_bc.yaml", "my_bc"):
        p = subprocess.run([sys.executable, "-m", "modmimic.train", f"recipe={recipe}", *common], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    runs = list((tmp_path / "runs" / "test").iterdir())
    assert len(runs) == 2 and all((r / "models" / "last.pth").is_file() for r in runs)
    p = subprocess.run([sys.executable, "-m", "modmimic.recipe", "list"], env=env, capture_output=True, text=True,
                       timeout=120)
    import re

    assert re.search(r"^my_bc +My BC: robomimic's BC with a Huber loss from my own module\.$", p.stdout, re.M)
    p = subprocess.run([sys.executable, "-m", "modmimic.recipe", "explain", "my_bc", f"dataset={reach_hdf5}",
                        "observation.modalities.obs.low_dim=[pos,goal_pos,vel]"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "loss bc x1 = huber_bc(policy=policy)" in p.stdout, p.stderr


def test_variants_replace_entries_instead_of_nulling_keys():
    """bcq_gmm builds a GMM action sampler: its entry replaces bcq's VAE entry (no inherited VAE arguments)."""
    cfg = compose("bcq_gmm")
    assert set(cfg.nets.action_sampler) == {"_target_", "backbone", "head", "layer_dims", "head_kwargs"}
    assert set(cfg.losses.action_sampler) == {"fn", "nets"}
    assert "bc" not in compose("bc_gmm").losses  # `bc: null` removes the regression loss
    # a variant with the same builder merges: bc_rnn only changes the backbone of bc's policy
    assert compose("bc_rnn").nets.policy.head == "deterministic"
    # optimizer blocks start from the shared defaults
    assert compose("bc").algo.optim_params.policy.learning_rate.decay_factor == 0.1
    assert compose("iql").algo.optim_params.vf.learning_rate.decay_factor == 0.0


def test_sync_free_step_info_stays_on_device(reach_hdf5, tiny):
    from modmimic.config import all_obs_keys
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    cfg = compose("iql", [*tiny("iql"), "observation.modalities.obs.low_dim=[pos,goal_pos,vel]"])
    store = load_episode_store(str(reach_hdf5), all_obs_keys(cfg), load_next_obs=True)
    algo = algo_factory("iql", cfg, store.obs_shapes(), store.ac_dim)
    algo.set_train()
    info = algo.train_on_batch(algo.process_batch_for_training(WindowSampler(store, 8, seed=0).sample()), 1)
    assert all(torch.is_tensor(v) for v in info.values())
    logged = algo.log_info(info)
    assert isinstance(logged["Loss"], float) and logged["Loss"] == pytest.approx(float(info["Loss"]))
    assert {"critic/loss", "vf/loss", "actor/loss", "Optimizer/critic0_lr"} <= set(logged)


def test_an_update_does_not_differentiate_the_networks_it_does_not_step(reach_hdf5, tiny):
    """TD3-BC's actor loss runs through the critic; the actor update steps only the actor, so it builds its graph
    without the critic's parameters: the same parameters and losses as differentiating everything, and the critic's
    gradients stay those of its own update."""
    from modmimic.config import all_obs_keys
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    cfg = compose("td3_bc", [*tiny("td3_bc"), "observation.modalities.obs.low_dim=[pos,goal_pos,vel]"])
    store = load_episode_store(str(reach_hdf5), all_obs_keys(cfg), load_next_obs=True)
    runs = []
    for freeze in (True, False):
        torch.manual_seed(0)
        algo = algo_factory("td3_bc", cfg, store.obs_shapes(), store.ac_dim)
        algo.set_train()
        actor_update = next(s for s in algo.program.steps if isinstance(s, Update) and s.name == "actor")
        if not freeze:  # the reference: every parameter the losses reach gets its gradient
            algo.program._frozen = {id(s): [] for s in algo.program.steps}
        sampler, infos = WindowSampler(store, 8, seed=0), []
        for _ in range(4):
            infos.append(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), 1))
        critic = algo.program.net("critic")
        runs.append((algo, infos, [p.grad.clone() for p in critic.parameters()]))
        if freeze:
            assert {id(p) for p in algo.program._frozen[id(actor_update)]} == {id(p) for p in critic.parameters()}
    (a, infos_a, grads_a), (b, infos_b, grads_b) = runs
    for (k, p), q in zip(a.nets.state_dict().items(), b.nets.state_dict().values()):
        assert torch.equal(p, q), k
    for x, y in zip(infos_a, infos_b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # step 4 ran the actor update after the critic's: with everything differentiated, it added to the critic's grads
    assert not all(torch.equal(g, h) for g, h in zip(grads_a, grads_b))
    assert all(p.requires_grad for p in a.program.net("critic").parameters())  # unfrozen after the update


def test_an_update_on_offline_rows_ignores_the_online_rows(reach_hdf5, tiny):
    """``rows: offline`` (``online.offline_rows=[actor]`` in fine-tuning): IQL's actor, stepped on a batch of 8 offline
    rows plus 8 online rows (negative ``index``), ends with exactly the parameters of an actor stepped on the 8
    offline rows alone; its inputs (Q' and V before their updates) are per row. Without it the online rows change
    the actor, and the critic learns from all 16 rows either way. ``rows: online`` is the mirror image: the actor
    stepped on the mixed batch equals one stepped on the 8 online rows alone."""
    from modmimic.config import all_obs_keys
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    cfg = compose("iql", [*tiny("iql"), "observation.modalities.obs.low_dim=[pos,goal_pos,vel]"])
    store = load_episode_store(str(reach_hdf5), all_obs_keys(cfg), load_next_obs=True)
    off = WindowSampler(store, 8, seed=0).sample()
    on = WindowSampler(store, 8, seed=1).sample()
    on.set(K.INDEX, -1 - torch.arange(8).reshape(on.get(K.INDEX).shape[0], -1).expand_as(on.get(K.INDEX)))
    assert (off.get(K.INDEX) >= 0).all()

    def step(windows, rows):
        torch.manual_seed(0)
        algo = algo_factory("iql", cfg, store.obs_shapes(), store.ac_dim)
        algo.set_train()
        next(s for s in algo.program.steps if isinstance(s, Update) and s.name == "actor").rows = rows
        algo.train_on_batch(algo.process_batch_for_training(windows.clone()), 1)
        return {n: algo.program.net(n).state_dict() for n in ("actor", "critic")}

    alone, masked, mixed = step(off, "all"), step(torch.cat([off, on]), "offline"), step(torch.cat([off, on]), "all")
    for k, v in alone["actor"].items():
        assert torch.equal(v, masked["actor"][k]), k
    on_alone, on_masked = step(on, "all"), step(torch.cat([off, on]), "online")
    for k, v in on_alone["actor"].items():
        assert torch.equal(v, on_masked["actor"][k]), k
    assert any(not torch.equal(v, on_masked["actor"][k]) for k, v in alone["actor"].items())
    assert any(not torch.equal(v, mixed["actor"][k]) for k, v in alone["actor"].items())
    assert any(not torch.equal(v, masked["critic"][k]) for k, v in alone["critic"].items())


def test_update_rows_are_checked_at_build_time(tiny):
    with pytest.raises(ConfigError, match="rows='online_only'"):
        build("iql", "+updates.2.rows=online_only", tiny=tiny)
    with pytest.raises(ConfigError, match="writes into the batch"):
        build("cql", "+updates.0.rows=offline", tiny=tiny)
