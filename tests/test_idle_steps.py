"""``train.idle_steps``: still stretches of demos (no low-dim observation moves) found and dropped exactly, the
store's rows, lengths, offsets and normalization statistics rebuilt from the kept rows, and the option wired through
the training config."""
import os

import numpy as np

from modmimic import keys as K
from modmimic.data.idle import kept_rows, still_steps, without_idle
from modmimic.data.synthetic import write_robomimic_hdf5


def test_still_steps_and_kept_rows_hand_values():
    # two demos (lengths 6 and 3): demo 0 stands still from step 1 to 4 (4 still steps), demo 1 at its first step
    x = np.array([[0.0], [1.0], [1.0], [1.0], [1.0], [1.0], [5.0], [5.0], [6.0]])
    still = still_steps(x, [6, 3], tolerance=0.01, scale=np.array([1.0]))
    # step 5 is demo 0's last (never still); step 6 -> 7 does not cross into another demo
    np.testing.assert_array_equal(still, [False, True, True, True, True, False, True, False, False])
    np.testing.assert_array_equal(kept_rows(still, [6, 3], keep=1), [0, 1, 5, 6, 7, 8])
    np.testing.assert_array_equal(kept_rows(still, [6, 3], keep=2), [0, 1, 2, 5, 6, 7, 8])
    np.testing.assert_array_equal(kept_rows(still, [6, 3], keep=0), [0, 5, 7, 8])
    # a move in any one dimension beyond tolerance x its scale is not still
    x2 = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.5]])
    np.testing.assert_array_equal(still_steps(x2, [3], 0.1, np.array([1.0, 1.0])), [False, True, False])
    np.testing.assert_array_equal(still_steps(x2, [3], 0.1, np.array([1.0, 10.0])), [True, True, False])


def pause_demos():
    """Two demos of a 1-d reach with a pause: the position stands still for 5 steps in the middle of each."""
    demos = []
    for d, (start, pause_at) in enumerate(((0.0, 3), (1.0, 2))):
        pos = [start]
        actions = []
        for t in range(10):
            a = 0.0 if pause_at <= t < pause_at + 5 else 0.1
            actions.append([a, float(d)])
            pos.append(pos[-1] + a)
        pos = np.array(pos[:-1])[:, None]
        demos.append({"obs": {"pos": pos, "grip": np.full((10, 1), 0.5)}, "actions": np.array(actions),
                      "rewards": np.zeros(10), "dones": np.r_[np.zeros(9), 1.0]})
    return demos


def test_without_idle_rebuilds_the_store_from_the_kept_rows(tmp_path):
    from modmimic.data.hdf5 import load_episode_store

    path = str(tmp_path / "pause.hdf5")
    write_robomimic_hdf5(path, pause_demos())
    store = load_episode_store(path, ["pos", "grip"], ["actions"], load_next_obs=False, load_rewards=None)
    out, dropped = without_idle(store, ["pos", "grip"], tolerance=0.01, keep=1)
    # each pause: 5 zero actions -> positions t..t+5 equal: 5 still steps, 4 dropped per demo
    assert dropped == 8 and out.lengths.tolist() == [6, 6] and out.offsets.tolist() == [0, 6]
    a, b, _ = out.columns[K.obs("pos")]
    pos0 = out.flat[:6, a:b].reshape(-1).tolist()
    np.testing.assert_allclose(pos0, [0.0, 0.1, 0.2, 0.3, 0.3, 0.4], atol=1e-6)  # the pause's first and last step
    aa, ab, _ = out.columns[K.ACTION]
    np.testing.assert_allclose(out.flat[:6, aa].tolist(), [0.1, 0.1, 0.1, 0.0, 0.1, 0.1], atol=1e-6)
    # statistics of the kept rows
    kept_pos = out.flat[:, a:b].double().numpy()
    m = out.obs_moments["pos"]
    assert m["n"] == 12
    np.testing.assert_allclose(np.asarray(m["mean"]).reshape(-1), kept_pos.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m["max"]).reshape(-1), [1.4], atol=1e-6)
    assert out.action_moments["actions"]["n"] == 12
    # nothing still: the same store back
    same, zero = without_idle(out, ["pos"], tolerance=1e-9, keep=1)
    assert zero == 0 and same is out


def test_idle_steps_config_is_checked_and_reaches_training(tmp_path, capsys):
    from modmimic.train import main

    path = str(tmp_path / "pause.hdf5")
    write_robomimic_hdf5(path, pause_demos())
    common = ["recipe=bc_rnn", f"dataset={path}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
              "experiment.epoch_every_n_steps=2", "train.batch_size=4", "train.seq_length=3", "algo.rnn.horizon=3",
              "algo.rnn.hidden_dim=8", "algo.actor_layer_dims=[]", "observation.modalities.obs.low_dim=[pos,grip]",
              "experiment.rollout.enabled=false", "experiment.render_video=false", "experiment.logging.log_tb=false"]
    assert main(common + ["train.idle_steps.tolerance=0"]) == 2
    assert "train.idle_steps.tolerance" in capsys.readouterr().err
    assert main(common + ["train.idle_steps.drop=true"]) == 0
    assert "train.idle_steps.drop: 8 of 20 steps" in capsys.readouterr().out


def test_idle_drop_is_refused_for_recipes_that_learn_from_rewards(tmp_path, capsys):
    from modmimic.train import main

    path = str(tmp_path / "pause.hdf5")
    write_robomimic_hdf5(path, pause_demos())
    assert main(["recipe=iql", f"dataset={path}", f"train.output_dir={tmp_path}", "train.idle_steps.drop=true",
                 "observation.modalities.obs.low_dim=[pos,grip]", "experiment.rollout.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "train.idle_steps.drop=true with recipe 'iql'" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["pause.hdf5"]  # no run directory
