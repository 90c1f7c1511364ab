"""Scripted ALOHA transfer-cube expert (``modmimic.demos generate task=aloha_transfer_cube``).

gym-aloha ships no scripted policy. The ACT paper's scripted data came from a two-stage recipe, which this expert
follows with its own code: plan end-effector waypoints from the object's pose, drive gym-aloha's mocap version of
the scene (``bimanual_viperx_end_effector_*.xml``, where welds pull each gripper to a mocap target) through them,
record the arms' joint positions, and replay those as the joint-position actions of the real task.

Waypoints are for each gripper's tool point (the centre of its two fingers, measured in the gripper link's frame at
the start) at 50 Hz, with linear interpolation of position, quaternion and gripper opening between them; the
gripper command is replayed as given, the arm joints as the mocap run reached them:

* right arm: 6 cm over the cube, pitched 60 degrees down, open (step 90), down to the cube (130), close (160), lift
  to beside the meeting point ``(0, 0.5, 0.25)`` (220), hold, open once the left gripper has closed (330-350), away
  along +x;
* left arm: pitched 30 degrees, open, 12 cm left of and 4 cm below the meeting point (100); at step 240 its grasp is
  planned from where the cube then hangs in the planning run: 8 cm in front of it along -x (270), around it (300),
  close (330), pull away along -x holding it (380).

With MuJoCo 3.3.7 each weld holds a 13 cm position offset (computed from the reference pose qpos0) that the scene's
mocap start poses (the gripper links' own positions) do not expect; the planner drops that offset (the link follows
its target's position, the weld keeps its orientation offset) and steers tool points instead. The left
gripper cannot pitch as far as the ACT script's 90 degrees there (~50 reached), hence 30.

Measured (``modmimic.demos expert``): 26/50 transferred cubes on seeds 0-49; ``generate`` keeps only the successful
episodes. The failures are mostly handovers: the cube hangs from the right fingertips and sways.
"""
from __future__ import annotations

import math

import numpy as np

MEET = np.array([0.0, 0.5, 0.25])


def quat_mul(a, b) -> np.ndarray:
    """Hamilton product of MuJoCo quaternions ``[w, x, y, z]``."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def about_y(degrees: float) -> np.ndarray:
    h = math.radians(degrees) / 2
    return np.array([math.cos(h), 0.0, math.sin(h), 0.0])


def interpolate(waypoints: list, t: int) -> np.ndarray:
    """``[xyz, quat, gripper]`` (8) at step ``t`` of waypoints ``(step, xyz, quat, gripper)``."""
    for (t0, p0, q0, g0), (t1, p1, q1, g1) in zip(waypoints, waypoints[1:]):
        if t0 <= t <= t1:
            f = (t - t0) / (t1 - t0)
            q = (1 - f) * np.asarray(q0) + f * np.asarray(q1)
            return np.concatenate([(1 - f) * np.asarray(p0) + f * np.asarray(p1), q / np.linalg.norm(q),
                                   [(1 - f) * g0 + f * g1]])
    _, p, q, g = waypoints[-1]
    return np.concatenate([p, q, [g]])


def quat_to_mat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def transfer_cube_waypoints(box_xyz, left0, right0) -> tuple[list, list]:
    """Waypoints of both arms' finger centres (tool points) from the cube's position and the tool points' start
    poses (``[xyz, quat]``); the left arm's grasp is planned later, from where the cube hangs
    (:func:`handover_waypoints`)."""
    left_q, right_q = left0[3:7], right0[3:7]
    pick_q = quat_mul(right_q, about_y(-60))
    meet_q = quat_mul(left_q, about_y(LEFT_PITCH))
    lp, rp = np.asarray(left0[:3]), np.asarray(right0[:3])
    left = [(0, lp, left_q, 0.0), (100, MEET + [-0.12, 0, -0.04], meet_q, 1.0), (HANDOVER, MEET + [-0.12, 0, -0.04],
                                                                                  meet_q, 1.0)]
    right = [(0, rp, right_q, 0.0), (90, box_xyz + [0, 0, 0.06], pick_q, 1.0),
             (130, box_xyz + [0, 0, 0.0], pick_q, 1.0), (160, box_xyz + [0, 0, 0.0], pick_q, 0.0),
             (220, MEET + [0.03, 0, 0.0], pick_q, 0.0), (330, MEET + [0.03, 0, 0.0], pick_q, 0.0),
             (350, MEET + [0.03, 0, 0.0], pick_q, 1.0), (390, MEET + [0.15, 0, 0.03], pick_q, 1.0),
             (400, MEET + [0.15, 0, 0.03], pick_q, 1.0)]
    return left, right


HANDOVER = 240  # the step the left arm's grasp is planned at, from where the cube hangs then
LEFT_PITCH = 30.0  # degrees; the welds cannot pitch the left gripper much further there (90 is asked, ~50 reached)
GRASP_OFFSET = np.array([0.0, 0.0, 0.0])  # the left arm's tool point relative to the cube when it closes


def handover_waypoints(left: list, box_xyz) -> list:
    """The left arm's waypoints from :data:`HANDOVER` on: in front of the held cube along -x, around it, close, pull
    away holding it."""
    _, p, q, _ = left[-1]
    box = np.asarray(box_xyz, dtype=np.float64)
    grasp = box + GRASP_OFFSET
    return left[:-1] + [(HANDOVER, p, q, 1.0), (270, grasp + [-0.08, 0, 0], q, 1.0), (300, grasp, q, 1.0),
                        (330, grasp, q, 0.0), (380, box + [-0.12, 0, 0.02], q, 0.0),
                        (400, box + [-0.12, 0, 0.02], q, 0.0)]


def joint_trajectory(env, object_poses: np.ndarray, steps: int) -> np.ndarray:
    """``[steps, 14]`` joint-position actions: the mocap scene driven through the waypoints, its arm joints after
    each step and the gripper commands."""
    from dm_control import mujoco
    from dm_control.rl import control
    from gym_aloha import constants
    from gym_aloha.tasks import sim_end_effector as ee

    physics = mujoco.Physics.from_xml_path(str(constants.ASSETS_DIR / "bimanual_viperx_end_effector_transfer_cube.xml"))
    # the welds pull each gripper link onto its mocap target: MuJoCo 3 stores, from the reference pose qpos0, a 13 cm
    # offset between the two that the scene's mocap start poses (the links' own positions) do not expect; without
    # it the link follows its target's position (the welds keep their orientation offset, rel_q)
    physics.model.eq_data[:, 3:6] = 0.0
    rel_q = [physics.model.eq_data[i, 6:10].copy() for i in range(2)]
    task = ee.TransferCubeEndEffectorTask()
    with physics.reset_context():
        task.initialize_robots(physics)
        start = physics.model.name2id("red_box_joint", "joint")
        physics.data.qpos[16 + (start - 16) * 7: 16 + (start - 16) * 7 + 7] = object_poses[:7]
    n_sub = control.compute_n_steps(constants.DT, physics.timestep())
    links = ["vx300s_left/gripper_link", "vx300s_right/gripper_link"]
    fingers = [[physics.model.name2id(f"vx300s_{arm}/10_{side}_gripper_finger", "geom") for side in ("left", "right")]
               for arm in ("left", "right")]
    tool = []  # each finger centre in its gripper link's frame (fingers closed, as they start)
    for k in range(2):
        mid = physics.data.geom_xpos[fingers[k]].mean(axis=0)
        tool.append(physics.named.data.xmat[links[k]].reshape(3, 3).T @ (mid - physics.named.data.xpos[links[k]]))
    starts = [np.concatenate([physics.data.mocap_pos[k] + quat_to_mat(quat_mul(physics.data.mocap_quat[k], rel_q[k]))
                              @ tool[k], physics.data.mocap_quat[k]]) for k in range(2)]
    left, right = transfer_cube_waypoints(np.asarray(object_poses[:3], dtype=np.float64), *starts)
    out, planned_stage = np.zeros((steps, 14)), 0
    for t in range(steps):
        if t == HANDOVER:
            left = handover_waypoints(left, physics.data.qpos[16:19].copy())
        a = [interpolate(left, t), interpolate(right, t)]
        for k in range(2):  # tool point -> the gripper link's target
            a[k][:3] = a[k][:3] - quat_to_mat(quat_mul(a[k][3:7], rel_q[k])) @ tool[k]
        task.before_step(np.concatenate(a), physics)
        for _ in range(n_sub):
            physics.step()
        planned_stage = max(planned_stage, task.get_reward(physics))
        q = physics.data.qpos
        out[t] = np.concatenate([q[:6], [a[0][7]], q[8:14], [a[1][7]]])
    physics.free()
    joint_trajectory.planned_stage = planned_stage  # the mocap run's highest reward stage (diagnostics)
    return out


class AlohaTransferCubeExpert:
    """``reset(env, obs)`` plans the episode's joint trajectory from the cube's pose; ``act`` replays it."""

    def reset(self, env, obs: dict) -> None:
        self.plan = joint_trajectory(env, np.asarray(obs["env_state"], dtype=np.float64),
                                     env.serialize()["env_kwargs"]["max_episode_steps"])
        self.t = 0

    def act(self, obs: dict) -> np.ndarray:
        a = self.plan[min(self.t, len(self.plan) - 1)]
        self.t += 1
        return a.copy()
