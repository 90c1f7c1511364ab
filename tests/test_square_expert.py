"""The scripted expert for robosuite's NutAssemblySquare (robomimic's Square): its geometry against hand values and
the simulator, the task's wiring (env_meta, CLI), and (slow) that it seats the nut by robosuite's own check."""
import json
import math

import h5py
import numpy as np
import pytest

from modmimic.demos import (HANDLE_REACH, MAX_STEPS, SEAT_YAWS, env_name_of, handle_grasp_point, parse,
                            square_plan, wrap)

YAWS = np.linspace(-math.pi, math.pi, 721)


def test_handle_grasp_point_hand_values():
    nut = np.array([0.1, 0.2, 0.83])
    np.testing.assert_allclose(handle_grasp_point(nut, 0.0), [0.1 + HANDLE_REACH, 0.2, 0.83], atol=1e-15)
    np.testing.assert_allclose(handle_grasp_point(nut, math.pi / 2, reach=0.05), [0.1, 0.25, 0.83], atol=1e-15)
    np.testing.assert_allclose(handle_grasp_point(nut, math.pi, reach=0.05), [0.05, 0.2, 0.83], atol=1e-15)
    np.testing.assert_allclose(handle_grasp_point(nut, -math.pi / 4, reach=math.sqrt(2) * 0.01),
                               [0.11, 0.19, 0.83], atol=1e-15)


def test_square_plan_hand_values():
    # handle toward the robot (-x): grasp without turning (gripper x pointing into the nut), seat as it is
    grasp, seat = square_plan(math.pi, 0.0)
    assert abs(wrap(grasp, 2 * math.pi)) < 1e-12 and seat == math.pi
    # handle away from the robot (+x, out of reach when seated): grasp without turning, then turn the nut a quarter
    # anticlockwise (the wrist has less room clockwise)
    assert square_plan(0.0, 0.0) == (0.0, pytest.approx(math.pi / 2))
    # handle along +y: a quarter turn at the grasp, seat it as it is (no turn in hand)
    assert square_plan(math.pi / 2, 0.0) == (pytest.approx(math.pi / 2), pytest.approx(math.pi / 2))
    # handle along -y: the anticlockwise quarter turn (gripper x pointing into the nut), seat it as it is
    assert square_plan(-math.pi / 2, 0.0) == (pytest.approx(math.pi / 2), pytest.approx(-math.pi / 2))
    # the plan is relative to the gripper's home yaw
    grasp, seat = square_plan(math.pi + 0.3, 0.3)
    assert wrap(grasp - 0.3, 2 * math.pi) == pytest.approx(0.0, abs=1e-12) and seat == math.pi


@pytest.mark.parametrize("home", [0.0, 0.05, -0.1])  # robosuite's Panda starts at yaw ~0 (joint noise)
def test_square_plan_for_every_nut_yaw(home):
    seats = {s for s, _ in SEAT_YAWS}
    for yaw in YAWS:
        grasp, seat = square_plan(yaw, home)
        assert abs(wrap(grasp - yaw, math.pi)) < 1e-9  # the gripper's x axis along the handle
        assert seat in seats and abs(wrap(seat, math.pi / 2)) < 1e-12  # seated square to the peg, handle not +x
        turn = wrap(seat - yaw, 2 * math.pi)
        assert abs(turn) <= 3 * math.pi / 4 + 1e-9  # with the nut in hand
        for g in (grasp, grasp + turn):  # the wrist's yaw from home at the grasp and seated: little clockwise
            assert -1.1 <= wrap(g - home, 2 * math.pi) <= 3 * math.pi / 4 + abs(home) + 1e-9


def test_square_task_wiring():
    assert env_name_of("Square") == env_name_of("NutAssemblySquare") == "NutAssemblySquare"
    assert MAX_STEPS["NutAssemblySquare"] == 400
    assert parse(["expert", "task=Square", "episodes=3"]) == ("expert", {"task": "Square", "episodes": 3})
    with pytest.raises(ValueError, match="Square"):
        env_name_of("Squre")


def test_handle_geometry_matches_the_simulator():
    """The nut's yaw from its observed quaternion and the handle offset give robosuite's own handle site."""
    pytest.importorskip("robosuite")
    from modmimic.demos import quat_to_mat, task_env_meta, yaw_of
    from modmimic.envs import env_from_metadata

    meta = task_env_meta("Square")
    assert meta["env_name"] == "NutAssemblySquare" and meta["env_kwargs"]["robots"] == ["Panda"]
    env = env_from_metadata(json.loads(json.dumps(meta)))  # as a dataset's env_args or a checkpoint's env_metadata
    try:
        for seed in (0, 1):
            obs = env.reset(seed=seed)
            base = env.base_env
            handle = base.sim.data.site_xpos[base.object_site_ids[0]]
            yaw = yaw_of(quat_to_mat(obs["SquareNut_quat"]))
            np.testing.assert_allclose(handle_grasp_point(obs["SquareNut_pos"], yaw, reach=0.054), handle, atol=1e-6)
            assert obs["object"].shape == (14,)
    finally:
        env.close()


@pytest.fixture(scope="module")
def square_demos(tmp_path_factory):
    from modmimic.demos import generate

    path = str(tmp_path_factory.mktemp("square") / "square.hdf5")
    s = generate("Square", 3, path, seed=1000, max_tries=3, progress=None)
    assert s["tries"] == 3 and s["task"] == "NutAssemblySquare"
    return path


@pytest.mark.slow
def test_square_expert_seats_the_nut_and_its_demos_hold_it(square_demos):
    """Three generated demos (seeds 1000..): robosuite's own check finds the nut seated in each demo's last state,
    not in its first, and the stored states reproduce the stored observations. (Replaying the actions open loop
    from the first state is not asked: one step after ``reset_to`` the arm is already ~1e-3 off the recorded one
    (the simulator's state does not hold the controller's), and seating the nut is contact-rich.)"""
    from modmimic.demos import OBS_KEYS
    from modmimic.envs import env_from_metadata

    with h5py.File(square_demos) as f:
        meta = json.loads(f["data"].attrs["env_args"])
        assert meta["env_name"] == "NutAssemblySquare"
        env = env_from_metadata(meta)
        try:
            for name in ("demo_0", "demo_1", "demo_2"):
                d = f[f"data/{name}"]
                T = len(d["actions"])
                assert d["rewards"][-1] == 1 and d["rewards"][0] == 0 and T <= MAX_STEPS["NutAssemblySquare"]
                for t, seated in ((0, False), (T // 2, False), (T - 1, True)):
                    obs = env.reset_to({"model": d.attrs["model_file"], "states": d["states"][t]})
                    assert bool(env.base_env._check_success()) == seated, (name, t)
                    for k in OBS_KEYS:
                        np.testing.assert_allclose(obs[k], d[f"obs/{k}"][t], atol=2e-5, err_msg=f"{name} t={t} {k}")
        finally:
            env.close()


@pytest.mark.slow
def test_a_policy_trained_on_square_demos_is_evaluated_in_square(square_demos, tmp_path):
    """The rollout path knows Square: a BC trained for a few steps on the demos, then ``modmimic.eval``'s evaluate
    builds NutAssemblySquare from the checkpoint's env metadata and plays an episode."""
    import glob

    from modmimic.eval import evaluate
    from modmimic.train import main

    assert main(["recipe=bc", f"dataset={square_demos}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
                 "experiment.epoch_every_n_steps=3", "train.batch_size=8", "algo.actor_layer_dims=[16]",
                 "experiment.rollout.enabled=false", "experiment.render_video=false"]) == 0
    (ckpt,) = glob.glob(str(tmp_path / "**" / "models" / "last.pth"), recursive=True)
    s = evaluate(ckpt, episodes=1, horizon=3)
    assert s["env_name"] == "NutAssemblySquare" and s["horizon"] == 3
    assert [e["length"] for e in s["episodes"]] == [3]


# --- the second Square demonstrator (style=alt) ---------------------------------------------------------------------

def test_square_styles_are_selectable_and_differ_on_purpose():
    from modmimic.cli import ArgumentError
    from modmimic.demos import SQUARE_STYLES, SquareExpert, SquareStyle

    assert SquareExpert().style == SQUARE_STYLES["default"] == SquareStyle()
    alt = SquareExpert("alt").style
    assert alt == SQUARE_STYLES["alt"]
    d = SQUARE_STYLES["default"]
    # another grasp point along the handle, a higher approach, a longer close, other carry and insertion motions
    assert 0.029 < alt.reach < 0.079 and alt.reach != d.reach and alt.hover > d.hover and alt.gain < d.gain
    assert alt.close_steps > d.close_steps and alt.carry_z > d.carry_z
    assert d.turn_in_place and not alt.turn_in_place and d.pre_insert is None and alt.pre_insert is not None
    for cmd in (["expert", "task=Square", "style=alt"], ["generate", "task=Square", "n=2", "out=x.hdf5", "style=alt"]):
        assert parse(cmd)[1]["style"] == "alt"
    with pytest.raises(ArgumentError, match="styles: default, alt"):
        parse(["expert", "task=Square", "style=fancy"])
    with pytest.raises(ArgumentError, match="unknown Lift expert style 'alt'; styles: default, look"):
        parse(["generate", "task=Lift", "n=2", "out=x.hdf5", "style=alt"])
    with pytest.raises(ArgumentError, match="not Can"):
        parse(["generate", "task=Can", "n=2", "out=x.hdf5", "style=look"])
    assert parse(["generate", "task=Lift", "n=2", "out=x.hdf5", "style=look"])[1]["style"] == "look"


def test_lift_look_style_turns_only_above_the_cube():
    """Lift's ``look`` expert keeps the start orientation until it hovers above the cube, turns there (in the wrist
    camera's view) and only then descends; the default expert turns from its first step. Both lift the cube."""
    pytest.importorskip("robosuite")
    from modmimic.demos import LiftExpert, expert_episode, make_env, quat_to_mat, yaw_of

    env = make_env("Lift")
    try:
        seed = next(s for s in range(100, 200) if abs(turn_of(env, s)) > 0.4)  # a large turn to make
        phases, yaws = [], []
        expert = LiftExpert("look")
        obs = env.reset(seed=seed)
        expert.reset(env, obs)
        yaw0 = yaw_of(quat_to_mat(obs["robot0_eef_quat"]))
        while expert.phase != "close":
            a = expert.act(obs)
            phases.append(expert.phase)
            if expert.phase == "turn":
                assert np.linalg.norm(obs["robot0_eef_pos"][:2] - obs["cube_pos"][:2]) < 0.015  # over the cube (4 cm wide)
            obs = env.step(a)[0]
            yaws.append(yaw_of(quat_to_mat(obs["robot0_eef_quat"])) - yaw0)
        hover = [abs(y) for y, ph in zip(yaws, phases) if ph == "hover"]
        assert max(hover) < 0.05 and "turn" in phases and phases.index("turn") < phases.index("descend")
        turned = abs(yaws[phases.index("descend")])
        assert abs(turned - abs(turn_of(env, seed))) < 0.06
        _, ok_look, n_look = expert_episode(env, LiftExpert("look"), seed, 150, record=False)
        default = LiftExpert()
        obs = env.reset(seed=seed)
        default.reset(env, obs)
        assert abs(default.act(obs)[5]) > 0.3  # the default expert starts turning at once
        _, ok_default, n_default = expert_episode(env, LiftExpert(), seed, 150, record=False)
        assert ok_look and ok_default and n_look > n_default
    finally:
        env.close()


def turn_of(env, seed):
    """The turn (rad) from the start orientation onto the cube's nearest faces in the episode of ``seed``."""
    import math

    from modmimic.demos import quat_to_mat, wrap, yaw_of

    obs = env.reset(seed=seed)
    return wrap(yaw_of(quat_to_mat(obs["cube_quat"])) - yaw_of(quat_to_mat(obs["robot0_eef_quat"])), math.pi / 2)


def test_alt_square_expert_hovers_over_its_own_grasp_point_and_records_robomimic_layout(tmp_path):
    """From the same start, each style hovers over its own point of the handle (its reach out from the nut's
    centre, its hover height above it) before descending; the alt expert's first steps, written by the dataset
    writer, are a robomimic-layout demo that training's structural checks accept."""
    pytest.importorskip("robosuite")
    from modmimic.data.check import check_demos
    from modmimic.demos import OBS_KEYS, SquareExpert, expert_episode, make_env, quat_to_mat, yaw_of
    from modmimic.rollout import DatasetWriter

    env = make_env("Square")
    try:
        for style in ("default", "alt"):
            expert = SquareExpert(style)
            obs = env.reset(seed=1001)
            expert.reset(env, obs)
            for _ in range(80):
                a = expert.act(obs)
                if expert.phase == "descend":
                    break
                obs = env.step(a)[0]
            assert expert.phase == "descend", style
            st = expert.style
            nut, yaw = obs["SquareNut_pos"], yaw_of(quat_to_mat(obs["SquareNut_quat"]))
            target = handle_grasp_point(nut, yaw, st.reach) + [0, 0, st.hover]
            assert np.linalg.norm(obs["robot0_eef_pos"][:2] - target[:2]) < 0.006, style
            assert abs(obs["robot0_eef_pos"][2] - target[2]) < 0.02, style
        traj, ok, T = expert_episode(env, SquareExpert("alt"), seed=1001, max_steps=12)
        assert not ok and T == 12
        path = str(tmp_path / "alt.hdf5")
        w = DatasetWriter(path, env.serialize(), obs_keys=OBS_KEYS, obs_dtype=np.float32)
        w.add(traj)
        w.close({"train": ["demo_0"]})
    finally:
        env.close()
    with h5py.File(path) as f:
        d = f["data/demo_0"]
        assert d.attrs["num_samples"] == 12 and d["actions"].shape == (12, 7) and d["dones"][-1] == 1
        assert sorted(d["obs"]) == sorted(OBS_KEYS) and d["obs/object"].shape == (12, 14)
        np.testing.assert_array_equal(d["next_obs/object"][:-1], d["obs/object"][1:])
        assert d["states"].shape[0] == 12 and "model_file" in d.attrs
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "NutAssemblySquare"
        problems, _ = check_demos(f, ["demo_0"], path)
        assert problems == []


@pytest.mark.slow
def test_alt_square_expert_generates_seated_demos(tmp_path):
    """``generate(style="alt")``: two demos that robosuite finds seated at their last step, the style kept in the
    file."""
    from modmimic.demos import generate
    from modmimic.envs import env_from_metadata

    path = str(tmp_path / "alt.hdf5")
    s = generate("Square", 2, path, seed=1000, max_tries=3, style="alt", progress=None)
    assert s["demos"] == 2
    with h5py.File(path) as f:
        assert f["data"].attrs["expert_style"] == "alt"
        env = env_from_metadata(json.loads(f["data"].attrs["env_args"]))
        try:
            for name in ("demo_0", "demo_1"):
                d = f[f"data/{name}"]
                env.reset_to({"model": d.attrs["model_file"], "states": d["states"][-1]})
                assert env.base_env._check_success() and d["rewards"][-1] == 1
        finally:
            env.close()
