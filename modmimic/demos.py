"""Scripted demonstrations: state-based controllers (no learning) for robosuite's Lift, Can and Square, and
Meta-World's own scripted policies for its v3 tasks, written as robomimic datasets.

    python -m modmimic.demos generate task=Lift n=200 out=lift.hdf5 seed=0
    python -m modmimic.demos expert task=Can episodes=50 seed=1000        # the expert's own success rate
    python -m modmimic.demos generate task=push-v3 n=100 out=push.hdf5    # Meta-World (metaworld.policies)
    python -m modmimic.demos generate task=MT10 n=500 out=mt10.hdf5       # 50 demos of each MT10 task

Meta-World (:mod:`modmimic.envs.metaworld_env`): any v3 task (``reach-v3``, ``push-v3``, ``pick-place-v3``, ...) or
task set (``MT10``, ``MT50``; episode ``i`` plays task ``(seed + i) mod T``); the expert is
``metaworld.policies.ENV_POLICY_MAP[task]`` acting on the 39-d observation (``flat``). ``goals=random`` (default)
draws each demo's goal and object placement from its seed with Meta-World's own seeded generator, so demos do not
repeat the benchmark's 50 placements per task; ``goals=benchmark`` uses those. Either way the dataset's ``env_args``
name the benchmark's goals (``env_kwargs.goals = "benchmark"``, benchmark seed ``benchmark_seed``), so training
rollouts and ``modmimic.eval`` evaluate on the benchmark; every demo keeps its ``states`` (which hold the
placement) and its seed (``seed`` attribute; ``ep_meta`` names task, goal and seed).

The experts read privileged object poses (``cube_pos``/``Can_pos``/``SquareNut_pos`` ...) and command robosuite's
OSC_POSE controller (7-D action: position delta x 0.05 m, world-frame axis-angle delta x 0.5 rad, gripper -1 open /
+1 close) with a proportional law on the position and orientation errors, through a fixed sequence of phases:

* Lift: turn the gripper about the vertical so its fingers face the cube's sides (the cube is 4-fold symmetric,
  so at most 45 degrees), hover 8 cm above the cube, descend to its centre, close for 8 steps, lift 20 cm.
  ``style=look`` turns only once it hovers above the cube (where the wrist camera sees the turn left to make).
* Can: hover 10 cm above the can (a cylinder: no turning), descend, close, lift to z = 1.05, carry to the can's
  quadrant of the target bin, lower to 10 cm above the bin floor, open for 6 steps, move up.
* Square (``NutAssemblySquare``): turn the gripper along the nut's handle, hover 8 cm above the handle (6 cm out
  from the nut's centre), descend, close for 10 steps, lift to z = 1.02, turn the nut square to the peg (its hole
  is 4-fold symmetric; the handle ends toward the robot or sideways, never away, and the wrist turns little,
  least of all clockwise: :func:`square_plan`), carry the nut's centre over the peg and lower it down the peg (both
  closed loop on the nut's observed position), open, move up. robosuite counts the nut seated once it is low on
  the peg and the gripper 4 cm from its centre, which holding the handle is: demos end while lowering.
  ``style=alt`` is a second Square demonstrator that differs on purpose (:data:`SQUARE_STYLES`): it grasps the
  handle nearer its outer end (6.8 cm out), hovers 10 cm above it, approaches at a slower pace (gain 10 instead of
  12, the descent at half speed), holds still for 30 steps while closing (1.5 s: a slow, careful grip), turns the
  nut while lifting it to z = 1.07, stops the nut's centre just above the peg's top (z = 0.99) to centre it there,
  then seats it at a lower speed.

Episode ``i`` (counting failed tries) starts from ``seed + i``. Only successful episodes are kept; each ends
``extra_steps`` (5) steps after the first success. Datasets hold ``env_args`` (robosuite 1.5 composite controller
config), per demo ``model_file``, ``states``, ``actions``, sparse ``rewards`` (1 while the task is done), ``dones``
(1 at the last step), ``obs``/``next_obs`` (robomimic's low-dim keys; ``float32`` by default) and a seeded
``mask/train`` / ``mask/valid`` split. ``compress_model=true`` stores each demo's MJCF XML as a gzip-compressed dataset
instead of robomimic's ``model_file`` attribute (8x smaller; read it with :func:`modmimic.data.hdf5.read_model_file`).

``quality=mixed`` (like robomimic's machine-generated / multi-human sets: offline RL should beat BC on it) writes
``n`` episodes of mixed quality, every one kept, in the same layout: 20 % ``expert``, 10 % ``noisy`` (the expert with
Gaussian noise of std 0.3 on the arm's six action dimensions; most still succeed), and 70 % failing variants of the
expert: 50 % ``let_go`` (the expert until it has closed its fingers on the object, then it opens them and wanders
off: in Lift before lifting, in Can 8 steps into the carry), 10 % ``beside`` (aims 5 cm beside the object) and 10 %
``short`` (stops 4 cm above it). ``let_go`` episodes visit the expert's states up to the grasp and outnumber the
expert's there, so BC on everything is pulled toward letting go; only the reward tells them apart. Filter keys:
each kind, ``failed`` (the failing kinds), ``success`` (episodes that did the task) and ``train``/``valid``;
``data.attrs["mix"]`` (JSON, shown by ``python -m modmimic.dataset info``) holds each kind's fraction, demos and
successes. ``mix=hard`` (Lift) is a second mix with fewer experts and decoys closer to them: 10 % ``expert``, 10 %
``noisy``, 40 % ``let_go``, 30 % ``near`` (aims 3.5 cm beside the cube: a finger lands on its edge, it closes beside
the cube and lifts nothing) and 10 % ``short``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from modmimic.cli import ArgumentError

PROG = "modmimic.demos"
TASKS = {"Lift": "Lift", "Can": "PickPlaceCan", "PickPlaceCan": "PickPlaceCan", "Square": "NutAssemblySquare",
         "NutAssemblySquare": "NutAssemblySquare"}
ALIASES = {"PickPlaceCan", "NutAssemblySquare"}  # robosuite's names, accepted but not listed
# robomimic's low-dim observation keys (its datasets also have eef velocities, which robosuite 1.5 does not offer)
OBS_KEYS = ["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_gripper_qvel",
            "robot0_joint_pos", "robot0_joint_pos_cos", "robot0_joint_pos_sin", "robot0_joint_vel"]
MAX_STEPS = {"Lift": 150, "PickPlaceCan": 300, "NutAssemblySquare": 400}  # Square: robomimic's rollout horizon
QUALITIES = ("expert", "mixed")


# --- rotations (quaternions are x, y, z, w as robosuite gives them) -------------------------------------------

def quat_to_mat(q) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def mat_to_rotvec(R) -> np.ndarray:
    """Axis * angle of a rotation matrix (angle in [0, pi])."""
    cos = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if math.pi - angle < 1e-4:  # near pi the antisymmetric part vanishes: take the axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(R) + 1) / 2, 0))
        axis *= np.sign(v + (v == 0))
        return axis / np.linalg.norm(axis) * angle
    return v / (2 * math.sin(angle)) * angle


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_of(R) -> float:
    return math.atan2(R[1, 0], R[0, 0])


def wrap(a: float, period: float) -> float:
    """``a`` moved into ``[-period/2, period/2)``."""
    return (a + period / 2) % period - period / 2


# --- experts --------------------------------------------------------------------------------------------------

class PoseServo:
    """Proportional OSC commands toward a target position and orientation."""

    def __init__(self, pos_gain: float = 12.0, rot_gain: float = 1.0, pos_scale: float = 0.05,
                 rot_scale: float = 0.5):
        self.pos_gain, self.rot_gain, self.pos_scale, self.rot_scale = pos_gain, rot_gain, pos_scale, rot_scale

    def action(self, eef_pos, eef_quat, target_pos, target_rot, gripper: float, max_pos: float = 1.0) -> np.ndarray:
        dp = np.clip(self.pos_gain * (np.asarray(target_pos) - eef_pos), -max_pos, max_pos)
        err = mat_to_rotvec(target_rot @ quat_to_mat(eef_quat).T)
        dr = np.clip(self.rot_gain * err / self.rot_scale, -1.0, 1.0)
        return np.concatenate([dp, dr, [gripper]])


class Expert:
    """Phase machine: ``reset(env, obs)`` at the start of an episode, then ``act(obs)`` every step."""

    def __init__(self):
        self.servo = PoseServo()
        self.phase, self.t = None, 0

    def goto(self, phase: str) -> None:
        self.phase, self.t = phase, 0


class LiftExpert(Expert):
    """Hover above the cube, descend, close, lift. The gripper turns onto the cube's nearest pair of faces (a turn of
    up to +-45 degrees): in style ``default`` from the first step, on the way to the cube; in style ``look`` only
    once it hovers above the cube, holding still until the turn is done, so the turn left is what the wrist camera
    sees (the cube's edges against the fingers) rather than the cube's yaw read off the first frame."""
    HOVER, GRASP_DEPTH, LIFT = 0.08, -0.005, 0.20
    TURN_RATE = 0.25  # style look: the largest rotation action while turning above the cube

    def __init__(self, style: str = "default"):
        super().__init__()
        if style not in LIFT_STYLES:
            raise ValueError(f"unknown Lift expert style {style!r}; styles: {', '.join(LIFT_STYLES)}")
        self.style = style

    def reset(self, env, obs: dict) -> None:
        R0 = quat_to_mat(obs["robot0_eef_quat"])
        cube_yaw = yaw_of(quat_to_mat(obs["cube_quat"]))
        turn = wrap(cube_yaw - yaw_of(R0), math.pi / 2)  # fingers onto the nearest pair of cube faces
        self.rot = rot_z(turn) @ R0
        self.hover_rot = R0 if self.style == "look" else self.rot
        self.grasp_pos = None
        self.goto("hover")

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        eef, q, cube = obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["cube_pos"]
        if self.phase in ("hover", "turn"):
            target = cube + [0, 0, self.HOVER]
            err = target - eef
            rot = self.hover_rot if self.phase == "hover" else self.rot
            rot_err = np.linalg.norm(mat_to_rotvec(rot @ quat_to_mat(q).T))
            if (np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02 and rot_err < 0.05) or self.t > 60:
                self.goto("turn" if self.phase == "hover" and self.style == "look" else "descend")
            a = self.servo.action(eef, q, target, rot, -1.0)
            if self.phase == "turn":  # slowly: a fast turn of the wrist drags the gripper off the cube
                a[3:6] = np.clip(a[3:6], -self.TURN_RATE, self.TURN_RATE)
            return a
        if self.phase == "descend":
            target = cube + [0, 0, self.GRASP_DEPTH]
            if np.linalg.norm(target - eef) < 0.008 or self.t > 40:
                self.grasp_pos = eef.copy()
                self.goto("close")
            return self.servo.action(eef, q, target, self.rot, -1.0)
        if self.phase == "close":
            if self.t >= 8:
                self.goto("lift")
            return self.servo.action(eef, q, self.grasp_pos, self.rot, 1.0)
        return self.servo.action(eef, q, self.grasp_pos + [0, 0, self.LIFT], self.rot, 1.0)


LIFT_STYLES = ("default", "look")


class CanExpert(Expert):
    HOVER, CARRY_Z, ABOVE_FLOOR = 0.10, 1.05, 0.10

    def reset(self, env, obs: dict) -> None:
        base = env.base_env
        self.rot = quat_to_mat(obs["robot0_eef_quat"])
        self.bin_xy = np.asarray(base.target_bin_placements[base.object_to_id["can"]][:2], dtype=np.float64)
        self.floor_z = float(base.bin2_pos[2])
        self.hold = None
        self.goto("hover")

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        eef, q, can = obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["Can_pos"]
        act = self.servo.action
        if self.phase == "hover":
            target = can + [0, 0, self.HOVER]
            err = target - eef
            if (np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02) or self.t > 80:
                self.goto("descend")
            return act(eef, q, target, self.rot, -1.0)
        if self.phase == "descend":
            target = can.copy()
            if np.linalg.norm(target - eef) < 0.01 or self.t > 40:
                self.hold = eef.copy()
                self.goto("close")
            return act(eef, q, target, self.rot, -1.0)
        if self.phase == "close":
            if self.t >= 8:
                self.goto("lift")
            return act(eef, q, self.hold, self.rot, 1.0)
        if self.phase == "lift":
            target = np.array([self.hold[0], self.hold[1], self.CARRY_Z + 0.02])
            if eef[2] >= self.CARRY_Z or self.t > 60:
                self.goto("carry")
            return act(eef, q, target, self.rot, 1.0)
        if self.phase == "carry":
            target = np.array([*self.bin_xy, self.CARRY_Z])
            if np.linalg.norm(target[:2] - eef[:2]) < 0.03 or self.t > 100:
                self.goto("lower")
            return act(eef, q, target, self.rot, 1.0)
        if self.phase == "lower":
            target = np.array([*self.bin_xy, self.floor_z + self.ABOVE_FLOOR])
            if eef[2] < target[2] + 0.01 or self.t > 60:
                self.goto("open")
            return act(eef, q, target, self.rot, 1.0)
        if self.phase == "open":
            if self.t >= 6:
                self.goto("retreat")
            return act(eef, q, np.array([*self.bin_xy, self.floor_z + self.ABOVE_FLOOR]), self.rot, -1.0)
        return act(eef, q, np.array([*self.bin_xy, self.CARRY_Z]), self.rot, -1.0)


# --- Square: geometry of robosuite's square nut (handle along the nut's local +x, 4-fold symmetric hole) ---------

HANDLE_REACH = 0.06  # m from the nut's centre along its +x to the grasp point (handle: 0.029-0.079, ring ends 0.044)


def handle_grasp_point(nut_pos, nut_yaw: float, reach: float = HANDLE_REACH) -> np.ndarray:
    """World position ``reach`` along the nut's handle (its local +x) from its centre, at the centre's height."""
    return np.asarray(nut_pos, dtype=np.float64) + reach * np.array([math.cos(nut_yaw), math.sin(nut_yaw), 0.0])


# the nut's yaw when seated (its hole square to the axis-aligned peg) and a cost in radians of wrist turn: with the
# handle toward the robot (-x) the gripper is in easy reach; along +-y a little farther; along +x out of reach
SEAT_YAWS = ((math.pi, 0.0), (math.pi / 2, 0.3), (-math.pi / 2, 0.3))
CLOCKWISE_COST = 2.0  # robosuite's Panda starts with joint 7 at ~0.8 of +-2.9: turning clockwise runs out first


def square_plan(nut_yaw: float, home_yaw: float) -> tuple[float, float]:
    """``(gripper yaw for the grasp, nut yaw when seated)``. The gripper's x axis goes along the handle (the
    fingers close along its y, across the handle's width), pointing out of the nut or into it (the gripper is
    2-fold symmetric); the held nut then turns with the gripper to its seated yaw. Of these choices, the one with
    the least wrist turning: the farthest the gripper gets from ``home_yaw`` (clockwise counting double), plus half
    the turn with the nut in hand, plus the seat's cost (robosuite's Panda starts with its wrist near a
    singularity, and big turns drive it into joint limits). For any nut yaw and a home yaw of 0 the gripper stays
    within 1.06 rad clockwise and 3/4 pi anticlockwise of home and turns at most 3/4 pi with the nut in hand."""
    def away(g: float) -> float:  # the wrist has ~1.4 rad of yaw clockwise from home, ~3 anticlockwise
        return g if g >= 0 else -CLOCKWISE_COST * g

    def plan(rel: float, seat: float, cost: float):
        grasp = wrap(nut_yaw - rel - home_yaw, 2 * math.pi)
        turn = wrap(seat - nut_yaw, 2 * math.pi)
        return max(away(grasp), away(grasp + turn)) + 0.5 * abs(turn) + cost, home_yaw + grasp, seat

    _, grasp, seat = min(plan(rel, seat, cost) for rel in (0.0, math.pi) for seat, cost in SEAT_YAWS)
    return grasp, seat


@dataclass(frozen=True)
class SquareStyle:
    """How a Square expert moves (:class:`SquareExpert`); :data:`SQUARE_STYLES` names two that differ on purpose."""
    reach: float = HANDLE_REACH    # m along the handle from the nut's centre to the grasp point
    hover: float = 0.08            # m above the grasp point before descending
    gain: float = 12.0             # proportional gain on the position error (pace of every approach)
    descend_speed: float = 1.0     # cap on the commanded position delta while descending onto the handle
    close_steps: int = 10          # steps holding still while the fingers close
    carry_z: float = 1.02          # height of the gripper while carrying the nut
    turn_in_place: bool = True     # turn the nut square to the peg after lifting it (else while lifting)
    pre_insert: float | None = None  # lower the nut's centre to this height first, centre it over the peg, then seat
    lower_speed: float = 0.4       # cap on the commanded position delta while lowering onto the peg


SQUARE_STYLES = {
    # hover 8 cm over a grasp point 6 cm out along the handle, close 10 steps, lift to 1.02, turn the nut in place,
    # carry it over the peg and lower it straight down the peg
    "default": SquareStyle(),
    # another hand: nearer the handle's outer end (6.8 cm out), a higher and slower approach (10 cm, gain 10, the
    # descent at half speed), a long close (30 steps, 1.5 s), lifted higher (1.07) while turning, then lowered until
    # the nut's centre is just above the peg's top (z = 0.99), centred there and seated slowly
    "alt": SquareStyle(reach=0.068, hover=0.10, gain=10.0, descend_speed=0.5, close_steps=30, carry_z=1.07,
                       turn_in_place=False, pre_insert=0.99, lower_speed=0.25),
}


class SquareExpert(Expert):
    """Hover over the nut's handle with the gripper along it, descend, close, lift the nut above the peg, turn it
    square to the peg and carry its centre over the peg (closed loop on the nut's observed position), lower it
    down the peg, open, retreat; distances, heights, pace and the order of the motions come from ``style``
    (:class:`SquareStyle`, or a name in :data:`SQUARE_STYLES`)."""
    SEATED_Z = 0.845

    def __init__(self, style: SquareStyle | str = "default"):
        super().__init__()
        self.style = SQUARE_STYLES[style] if isinstance(style, str) else style
        self.servo = PoseServo(pos_gain=self.style.gain)

    def reset(self, env, obs: dict) -> None:
        base = env.base_env
        self.peg_xy = np.array(base.sim.data.body_xpos[base.peg1_body_id][:2], dtype=np.float64)
        R0 = quat_to_mat(obs["robot0_eef_quat"])
        grasp_yaw, self.seat_yaw = square_plan(yaw_of(quat_to_mat(obs["SquareNut_quat"])), yaw_of(R0))
        self.rot = rot_z(grasp_yaw - yaw_of(R0)) @ R0
        self.hold = None
        self.goto("hover")

    def nut_to_peg(self, obs: dict, eef) -> np.ndarray:
        """The gripper xy that puts the nut's centre over the peg (the held nut moves with the gripper)."""
        return eef[:2] + self.peg_xy - obs["SquareNut_pos"][:2]

    def turned(self, obs: dict) -> np.ndarray:
        """The gripper orientation that turns the held nut to its seated yaw."""
        turn = wrap(self.seat_yaw - yaw_of(quat_to_mat(obs["SquareNut_quat"])), 2 * math.pi)
        return rot_z(turn) @ quat_to_mat(obs["robot0_eef_quat"])

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        st = self.style
        eef, q, nut = obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["SquareNut_pos"]
        act = self.servo.action
        rot_err = np.linalg.norm(mat_to_rotvec(self.rot @ quat_to_mat(q).T))
        if self.phase in ("hover", "descend"):
            grasp = handle_grasp_point(nut, yaw_of(quat_to_mat(obs["SquareNut_quat"])), st.reach)
            if self.phase == "hover":
                target = grasp + [0, 0, st.hover]
                err = target - eef
                if (np.linalg.norm(err[:2]) < 0.005 and abs(err[2]) < 0.02 and rot_err < 0.05) or self.t > 80:
                    self.goto("descend")
                return act(eef, q, target, self.rot, -1.0)
            if np.linalg.norm(grasp - eef) < 0.006 or self.t > 50:
                self.hold = eef.copy()
                self.goto("close")
            return act(eef, q, grasp, self.rot, -1.0, max_pos=st.descend_speed)
        if self.phase == "close":
            if self.t >= st.close_steps:
                if not st.turn_in_place:
                    self.rot = self.turned(obs)
                self.goto("lift")
            return act(eef, q, self.hold, self.rot, 1.0)
        if self.phase == "lift":
            lifted = eef[2] >= st.carry_z - 0.01
            if st.turn_in_place and (lifted or self.t > 60):
                self.rot = self.turned(obs)  # the held nut turns square to the peg
                self.goto("turn")
            elif not st.turn_in_place and ((lifted and rot_err < 0.05) or self.t > 80):
                self.goto("carry")
            return act(eef, q, np.array([*self.hold[:2], st.carry_z]), self.rot, 1.0, max_pos=0.5)
        if self.phase == "turn":  # in place: turning while carrying swings the arm off course
            if rot_err < 0.05 or self.t > 40:
                self.goto("carry")
            return act(eef, q, np.array([*self.hold[:2], st.carry_z]), self.rot, 1.0)
        if self.phase == "carry":
            target = np.array([*self.nut_to_peg(obs, eef), st.carry_z])
            if (np.linalg.norm(self.peg_xy - nut[:2]) < 0.004 and rot_err < 0.05) or self.t > 150:
                self.goto("lower" if st.pre_insert is None else "pre_insert")
            return act(eef, q, target, self.rot, 1.0, max_pos=0.6)
        if self.phase == "pre_insert":  # the nut's centre just above the peg's top, centred over it
            target = np.array([*self.nut_to_peg(obs, eef), eef[2] + st.pre_insert - nut[2]])
            if (np.linalg.norm(self.peg_xy - nut[:2]) < 0.004 and abs(nut[2] - st.pre_insert) < 0.015) \
                    or self.t > 50:
                self.goto("lower")
            return act(eef, q, target, self.rot, 1.0, max_pos=0.5)
        if self.phase == "lower":
            target = np.array([*self.nut_to_peg(obs, eef), eef[2] + self.SEATED_Z - nut[2]])
            if nut[2] < self.SEATED_Z + 0.005 or self.t > 100:
                self.goto("open")
            return act(eef, q, target, self.rot, 1.0, max_pos=st.lower_speed)
        if self.phase == "open":
            if self.t >= 6:
                self.goto("retreat")
            return act(eef, q, eef, self.rot, -1.0)
        return act(eef, q, eef + [0, 0, 0.05], self.rot, -1.0)


EXPERTS = {"Lift": LiftExpert, "PickPlaceCan": CanExpert, "NutAssemblySquare": SquareExpert}
EXPERT_STYLES = {"Lift": LIFT_STYLES, "NutAssemblySquare": tuple(SQUARE_STYLES)}  # experts that take style=


# --- suboptimal variants (quality=mixed): the expert with one thing wrong -----------------------------------------

OBJECT_POS = {"Lift": "cube_pos", "PickPlaceCan": "Can_pos"}


class Variant:
    """An expert behind a wrapper; ``finished`` ends the episode early (the variant has nothing more to do)."""

    def __init__(self, expert):
        self.expert, self.finished = expert, False

    def reset(self, env, obs: dict) -> None:
        self.finished = False
        self.expert.reset(env, obs)

    def act(self, obs: dict) -> np.ndarray:
        return self.expert.act(obs)


class NoisyActions(Variant):
    """Gaussian noise (``std``, in action units) on the six arm dimensions; the gripper command is the expert's."""

    def __init__(self, expert, std: float, rng: np.random.Generator):
        super().__init__(expert)
        self.std, self.rng = std, rng

    def act(self, obs: dict) -> np.ndarray:
        a = self.expert.act(obs).copy()
        a[:6] = np.clip(a[:6] + self.rng.normal(0.0, self.std, 6), -1.0, 1.0)
        return a


class Misplaced(Variant):
    """The expert aiming at the object's position plus ``offset`` (it grasps beside, or stops short above, the
    object); done after ``steps`` steps."""

    def __init__(self, expert, key: str, offset, steps: int):
        super().__init__(expert)
        self.key, self.offset, self.steps, self.t = key, np.asarray(offset, dtype=np.float64), steps, 0

    def reset(self, env, obs: dict) -> None:
        self.t = 0
        super().reset(env, self.believed(obs))

    def believed(self, obs: dict) -> dict:
        return {**obs, self.key: obs[self.key] + self.offset}

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        self.finished = self.t >= self.steps
        return self.expert.act(self.believed(obs))


class LetGo(Variant):
    """The expert until ``when(expert, obs)``; then it opens the gripper where it is (``release`` steps) and wanders
    with the gripper open to ``wander`` random targets within ``reach`` m (``wander_steps`` each), then is done."""

    def __init__(self, expert, when, rng: np.random.Generator, release: int = 6, wander: int = 2,
                 wander_steps: int = 12, reach: float = 0.12):
        super().__init__(expert)
        self.when, self.rng = when, rng
        self.release, self.wander, self.wander_steps, self.reach = release, wander, wander_steps, reach

    def reset(self, env, obs: dict) -> None:
        super().reset(env, obs)
        self.let_go_at, self.t, self.target = None, 0, None

    def act(self, obs: dict) -> np.ndarray:
        e = self.expert
        if self.let_go_at is None:
            if not self.when(e, obs):
                return e.act(obs)
            self.let_go_at, self.target = obs["robot0_eef_pos"].copy(), obs["robot0_eef_pos"].copy()
        self.t += 1
        k = self.t - self.release  # steps into the wandering
        if k > 0 and k % self.wander_steps == 1:
            self.target = self.let_go_at + self.rng.uniform([-1, -1, 0], [1, 1, 1]) * self.reach
        self.finished = k >= self.wander * self.wander_steps
        return e.servo.action(obs["robot0_eef_pos"], obs["robot0_eef_quat"], self.target, e.rot, -1.0)


def lift_let_go_when(expert: LiftExpert, obs: dict) -> bool:
    """Lift: when the expert, its fingers closed on the cube, would start lifting."""
    return expert.phase == "lift"


def can_let_go_when(expert: CanExpert, obs: dict) -> bool:
    """Can: 8 steps into the carry toward the bin (above the table, far from the bin)."""
    return expert.phase == "carry" and expert.t >= 8


LET_GO_WHEN = {"Lift": lift_let_go_when, "PickPlaceCan": can_let_go_when}
# how long a variant that misaims runs (its expert would have succeeded by then)
MISPLACED_STEPS = {"Lift": 70, "PickPlaceCan": 200}
NOISE_STD = 0.3
BESIDE, SHORT = 0.05, 0.04  # m: grasp beside the object (horizontal offset) / stop this far above it
# m: the `near` decoy aims this far beside the object: a finger lands on its edge, the descent times out, and it
# closes 3-4.5 cm from the object's centre and lifts without it (100 steps). Measured on Lift (12 starts each):
# 2.5 cm beside lifts the cube 9/12, 3 cm 1/12, 3.5 and 4 cm 0/12. Defined for Lift only.
NEAR, NEAR_STEPS = {"Lift": 0.035}, {"Lift": 100}
# quality=mixed: the kinds of episodes and their fractions. Half the episodes let go of the object right after
# grasping it: up to that step they are the expert (the same states), so plain BC on everything learns to let go
# there, and only the reward tells the two apart.
MIX = {"expert": 0.2, "noisy": 0.1, "let_go": 0.5, "beside": 0.1, "short": 0.1}
# mix=hard, a second mix: half the expert episodes, and the decoys that aim 5 cm beside replaced by three times as
# many that close their fingers just beside the cube and lift, nearer the expert's states.
MIXES = {"default": MIX, "hard": {"expert": 0.1, "noisy": 0.1, "let_go": 0.4, "near": 0.3, "short": 0.1}}
FAILED = ("let_go", "beside", "near", "short")


def variant_expert(name: str, kind: str, rng: np.random.Generator):
    """The expert of task ``name`` as episode kind ``kind`` (a key of :data:`MIX`)."""
    expert = EXPERTS[name]()
    if kind == "expert":
        return expert
    if kind == "noisy":
        return NoisyActions(expert, NOISE_STD, rng)
    if kind == "let_go":
        return LetGo(expert, LET_GO_WHEN[name], rng)
    if kind == "beside":
        return Misplaced(expert, OBJECT_POS[name], [0.0, BESIDE, 0.0], MISPLACED_STEPS[name])
    if kind == "near" and name in NEAR:
        return Misplaced(expert, OBJECT_POS[name], [0.0, NEAR[name], 0.0], NEAR_STEPS[name])
    if kind == "short":
        return Misplaced(expert, OBJECT_POS[name], [0.0, 0.0, SHORT], MISPLACED_STEPS[name])
    kinds = dict.fromkeys(k for m in MIXES.values() for k in m)
    raise ValueError(f"unknown episode kind {kind!r} for {name}; kinds: {', '.join(kinds)}")


def check_mix(task: str, quality: str, mix: str) -> None:
    """``mix=`` names one of :data:`MIXES`, goes with ``quality=mixed``, and every kind of it is defined for
    ``task``; else an :class:`ArgumentError`."""
    if mix not in MIXES:
        raise ArgumentError(f"mix must be one of {', '.join(MIXES)}, got {mix!r}")
    if mix != "default" and quality != "mixed":
        raise ArgumentError(f"mix={mix} is for quality=mixed")
    if quality == "mixed" and "near" in MIXES[mix] and env_name_of(task) not in NEAR:
        raise ArgumentError(f"mix={mix} is defined for {', '.join(NEAR)}, not {task} (its 'near' decoy's offset "
                            f"is measured per task)")


def mix_counts(n: int, mix: dict) -> dict:
    """Episodes per kind: ``n * fraction`` rounded down, the remainder to the largest fractional parts (ties: the
    kind listed first)."""
    total = sum(mix.values())
    exact = {k: n * f / total for k, f in mix.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    order = sorted(mix, key=lambda k: (-(exact[k] - counts[k]), list(mix).index(k)))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def episode_kinds(n: int, mix: dict, seed: int) -> list[str]:
    """The kind of each of ``n`` episodes: exactly :func:`mix_counts` of each, in a seeded random order."""
    kinds = [k for k, c in mix_counts(n, mix).items() for _ in range(c)]
    return [kinds[i] for i in np.random.default_rng(seed).permutation(n)]


def mixed_masks(names: list[str], kinds: list[str], successes: list[bool]) -> dict:
    """Filter keys of a mixed dataset: one per kind, ``failed`` (the failing variants together) and ``success``
    (the episodes that did the task, whatever their kind)."""
    masks = {k: [n for n, kind in zip(names, kinds) if kind == k] for k in dict.fromkeys(kinds)}
    masks["failed"] = [n for n, kind in zip(names, kinds) if kind in FAILED]
    masks["success"] = [n for n, ok in zip(names, successes) if ok]
    return masks


# --- environments and episodes ----------------------------------------------------------------------------

def is_metaworld(task: str) -> bool:
    """``task`` names a Meta-World v3 task or task set (``push-v3``, ``MT10``, ``Meta-World/push-v3``)."""
    return str(task).startswith("Meta-World/") or str(task).endswith("-v3") or str(task) in ("MT10", "MT50")


PUSHT_NAMES = ("pusht", "PushT", "gym_pusht/PushT-v0")  # task names of PushT
PUSHT_OBS_KEYS = ["state", "agent_pos", "keypoints"]


def is_pusht(task: str) -> bool:
    return str(task) in PUSHT_NAMES


ALOHA_TASKS = {"aloha_transfer_cube": "AlohaTransferCube-v0", "aloha_insertion": "AlohaInsertion-v0"}
ALOHA_EXPERTS = {"aloha_transfer_cube": "AlohaTransferCubeExpert",  # scripted experts (modmimic.aloha_expert)
                 "aloha_insertion": "AlohaInsertionExpert"}
ALOHA_OBS_KEYS = ["agent_pos", "qvel", "env_state"]


def is_aloha(task: str) -> bool:
    return str(task) in ALOHA_TASKS


def metaworld_task(task: str) -> str:
    return str(task).split("/", 1)[1] if str(task).startswith("Meta-World/") else str(task)


class MetaWorldExpert:
    """Meta-World's own scripted policy for the current task (``metaworld.policies.ENV_POLICY_MAP``) on the 39-d
    observation, clipped to [-1, 1] as the environment clips them (the policies' raw outputs reach ~3; a dataset holds
    what was executed); its "constants may be too high" warnings are silenced."""

    def reset(self, env, obs: dict) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self.policy = ENV_POLICY_MAP[env.names[env.index]]()

    def act(self, obs: dict) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.clip(np.asarray(self.policy.get_action(obs["flat"]), dtype=np.float64), -1.0, 1.0)


def env_name_of(task: str) -> str:
    if is_pusht(task):
        return "PushT"
    if is_aloha(task):
        if task not in ALOHA_EXPERTS:
            raise ValueError(f"no scripted expert for {task} yet (ALOHA experts: {', '.join(ALOHA_EXPERTS)}); its "
                             "environment is there: gym_aloha/" + ALOHA_TASKS[task])
        return ALOHA_TASKS[task]
    if is_metaworld(task):
        from modmimic.envs.metaworld_env import task_names

        task_names(metaworld_task(task))  # raises naming the task when Meta-World has no such task
        return metaworld_task(task)
    if task not in TASKS:
        import difflib

        close = difflib.get_close_matches(task, list(TASKS), n=1)
        raise ValueError(f"no scripted expert for task {task!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; tasks: {', '.join(sorted(set(TASKS) - ALIASES))}, pusht, Meta-World v3 tasks "
                         "(push-v3, ...), MT10, MT50")
    return TASKS[task]


def task_env_meta(task: str) -> dict:
    """robomimic-style env metadata of a task: Panda, OSC_POSE (robosuite 1.5 composite config), 20 Hz, sparse
    reward, low-dim observations."""
    from modmimic.envs import ROBOSUITE_TYPE
    from modmimic.envs.robosuite_env import default_controller_config, import_robosuite

    suite = import_robosuite()
    return {"env_name": env_name_of(task), "type": ROBOSUITE_TYPE, "env_version": suite.__version__,
            "env_kwargs": {"robots": ["Panda"], "controller_configs": default_controller_config("Panda"),
                           "has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True,
                           "use_object_obs": True, "use_camera_obs": False, "control_freq": 20, "horizon": 500,
                           "reward_shaping": False, "camera_names": ["agentview", "robot0_eye_in_hand"],
                           "camera_heights": 84, "camera_widths": 84, "camera_depths": False}}


def expert_episode(env, expert, seed: int, max_steps: int, extra_steps: int = 5, record: bool = True):
    """One scripted episode from ``seed``: ``(trajectory or None, success, length)``. The trajectory is in the
    layout of :func:`modmimic.rollout.write_episodes`."""
    obs = env.reset(seed=seed)
    expert.reset(env, obs)
    start = env.get_state(include_model=True) if record else None
    obs_list, states, actions, rewards = [obs], [], [], []
    first_success = None
    for t in range(max_steps):
        a = expert.act(obs)
        if record:
            states.append(env.get_state(include_model=False)["states"])
        obs, r, _, _ = env.step(a)
        actions.append(a)
        rewards.append(r)
        obs_list.append(obs)
        if first_success is None and env.is_success()["task"]:
            first_success = t
        if first_success is not None and t - first_success >= extra_steps:
            break
        if getattr(expert, "finished", False):
            break
    success = first_success is not None
    if not record:
        return None, success, len(actions)
    T = len(actions)
    dones = np.zeros(T, dtype=np.int64)
    dones[-1] = 1
    keys = list(obs_list[0])
    traj = {"obs": {k: np.stack([o[k] for o in obs_list[:-1]]) for k in keys},
            "next_obs": {k: np.stack([o[k] for o in obs_list[1:]]) for k in keys},
            "actions": np.asarray(actions), "rewards": np.asarray(rewards, dtype=np.float64), "dones": dones,
            "states": np.stack(states), "attrs": {"ep_meta": start.get("ep_meta") or "{}"}}
    if start["model"] is not None:
        traj["attrs"]["model_file"] = start["model"]
    return traj, success, T


def make_env(task: str, camera_names=(), camera_height: int = 84, camera_width: int = 84, depth: bool = False,
             goals: str = "benchmark", benchmark_seed: int = 0):
    """The task's environment; with ``camera_names``, camera observations (``<camera>_image``, and ``<camera>_depth``
    with ``depth``) at ``camera_height`` x ``camera_width``. ``goals``, ``benchmark_seed``: Meta-World only."""
    if is_pusht(task):
        from modmimic.envs.pusht_env import PushTEnv, env_meta

        if depth:
            raise ArgumentError("depth=true: PushT is a 2-d task; it renders RGB images only")
        meta = env_meta(camera_names=list(camera_names), camera_heights=camera_height, camera_widths=camera_width)
        return PushTEnv(meta, use_image_obs=bool(camera_names))
    if is_aloha(task):
        from modmimic.envs.aloha_env import AlohaEnv, env_meta

        if depth:
            raise ArgumentError("depth=true: the ALOHA adapter renders RGB images only")
        meta = env_meta(ALOHA_TASKS[task], camera_names=list(camera_names) or ["top"], camera_heights=camera_height,
                        camera_widths=camera_width)
        return AlohaEnv(meta, use_image_obs=bool(camera_names))
    if is_metaworld(task):
        from modmimic.envs.metaworld_env import MetaWorldEnv, env_meta

        if depth:
            raise ArgumentError("depth=true: the Meta-World adapter renders RGB images only")
        meta = env_meta(metaworld_task(task), seed=benchmark_seed, goals=goals, camera_names=list(camera_names),
                        camera_heights=camera_height, camera_widths=camera_width)
        return MetaWorldEnv(meta, use_image_obs=bool(camera_names))
    from modmimic.envs import with_cameras
    from modmimic.envs.robosuite_env import RobosuiteEnv

    if not camera_names:
        return RobosuiteEnv(task_env_meta(task))
    meta = with_cameras(task_env_meta(task), camera_names, camera_height, camera_width, depth)
    return RobosuiteEnv(meta, use_image_obs=True, use_depth_obs=depth)


def named_task_env(name: str):
    """``(environment, box observation?)`` of a task this module knows (robosuite's Lift/Can/Square, Meta-World,
    PushT), or None: what ``record`` uses for ``env=<task>``."""
    if is_pusht(name) or name in ALOHA_EXPERTS:
        return make_env(name), False
    return (make_env(name), is_metaworld(name)) if is_metaworld(name) or name in TASKS else None


def expert_style(task: str, style: str | None) -> str | None:
    """``style`` checked against the task: Square's scripted expert has the styles of :data:`SQUARE_STYLES`, Lift's
    those of :data:`LIFT_STYLES` (``None`` = ``default``); other tasks have one expert and take no style."""
    if style is None:
        return None
    styles = EXPERT_STYLES.get(env_name_of(task))
    if styles is None:
        raise ArgumentError(f"style= is for the Lift and Square experts, not {task}")
    if style not in styles:
        raise ArgumentError(f"unknown {task} expert style {style!r}; styles: {', '.join(styles)}")
    return style


def task_setup(task: str, camera_names=(), camera_height: int = 84, camera_width: int = 84, depth: bool = False,
               goals: str = "benchmark", benchmark_seed: int = 0, style: str | None = None):
    """``(environment, expert, default max steps, observation keys)`` of a task; ``style``: the Square or Lift expert's
    style (:data:`SQUARE_STYLES`, :data:`LIFT_STYLES`)."""
    name = env_name_of(task)
    style = expert_style(task, style)
    env = make_env(task, camera_names, camera_height, camera_width, depth, goals, benchmark_seed)
    if is_pusht(task):
        from modmimic.pusht_expert import PushTExpert

        return env, PushTExpert(), env.serialize()["env_kwargs"]["max_episode_steps"], list(PUSHT_OBS_KEYS)
    if is_aloha(task):
        from modmimic import aloha_expert

        expert = getattr(aloha_expert, ALOHA_EXPERTS[task])()
        return env, expert, env.serialize()["env_kwargs"]["max_episode_steps"], list(ALOHA_OBS_KEYS)
    if is_metaworld(task):
        return env, MetaWorldExpert(), env.env.max_path_length, ["flat"] + (["task_id"] if len(env.names) > 1 else [])
    expert = EXPERTS[name]() if style is None else EXPERTS[name](style)
    return env, expert, MAX_STEPS[name], list(OBS_KEYS)


def generate(task: str, n: int, out: str, seed: int = 0, max_tries: int | None = None, obs_dtype: str = "float32",
             valid_fraction: float = 0.1, compress: bool = True, next_obs: bool = True, obs_keys=None,
             max_steps: int | None = None, compress_model: bool = False, camera_names=(), camera_height: int = 84,
             camera_width: int = 84, depth: bool = False, quality: str = "expert", goals: str = "random",
             benchmark_seed: int = 0, style: str | None = None, mix: str = "default", progress=print) -> dict:
    """Write ``n`` successful scripted demos of ``task`` to ``out``; returns generation statistics. ``camera_names``:
    also record ``<camera>_image`` (uint8 ``[T, H, W, 3]``, upright) and with ``depth`` ``<camera>_depth``.
    ``quality="mixed"``: ``n`` episodes of the kinds of ``MIXES[mix]`` instead, every one kept (see
    :func:`generate_mixed`). ``goals``, ``benchmark_seed``: Meta-World's placements (see the module's docstring).
    ``style``: the Square or Lift expert's style (kept in ``data.attrs["expert_style"]``)."""
    from modmimic.rollout import DatasetWriter, split_masks
    from modmimic.states_to_obs import camera_keys

    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    name = env_name_of(task)
    if expert_style(task, style) is not None and quality == "mixed":
        raise ArgumentError("style= is for quality=expert (the mixed variants wrap the default expert)")
    if quality == "mixed" and name not in LET_GO_WHEN:
        raise ArgumentError(f"quality=mixed is defined for {', '.join(t for t, n in TASKS.items() if n in LET_GO_WHEN and t not in ALIASES)}, "
                         f"not {task} (its failing variants are task-specific)")
    check_mix(task, quality, mix)
    camera_names = [c for c in ([camera_names] if isinstance(camera_names, str) else list(camera_names or [])) if c]
    env, expert, default_steps, default_keys = task_setup(task, camera_names, camera_height, camera_width, depth,
                                                          goals, benchmark_seed, style)
    max_steps = max_steps or default_steps
    max_tries = max_tries or max(2 * n, n + 20)
    keys = list(default_keys if obs_keys is None else obs_keys) + camera_keys(camera_names, depth)
    env_args = env.serialize()
    if is_metaworld(task):  # demos from any placements; rollouts and evaluation on the benchmark's
        env_args["env_kwargs"]["goals"] = "benchmark"
    writer = DatasetWriter(out, env_args, obs_keys=keys, obs_dtype=None if obs_dtype == "float64" else
                           np.dtype(obs_dtype), compression="gzip" if compress else None, next_obs=next_obs,
                           model_file="gzip" if compress_model else "attr")
    if style is not None:
        writer.data.attrs["expert_style"] = style
    if quality == "mixed":
        try:
            return generate_mixed(env, writer, name, n, seed, max_steps, valid_fraction, progress, MIXES[mix])
        except BaseException:
            writer.abort()
            raise
        finally:
            env.close()
    t0 = time.perf_counter()
    tries, lengths = 0, []
    try:
        while len(writer.names) < n and tries < max_tries:
            traj, ok, T = expert_episode(env, expert, seed + tries, max_steps)
            traj["attrs"]["seed"] = seed + tries
            tries += 1
            if ok:
                missing = [k for k in keys if k not in traj["obs"]]
                if missing:
                    raise ValueError(f"observation keys {missing} are not observations of {name} "
                                     f"(it has {sorted(traj['obs'])})")
                writer.add(traj)
                lengths.append(T)
            if progress is not None and (tries % 10 == 0 or len(writer.names) == n):
                progress(f"  {len(writer.names)}/{n} demos from {tries} tries ({time.perf_counter() - t0:.0f} s)")
        if len(writer.names) < n:
            raise RuntimeError(f"only {len(writer.names)} of {n} demos succeeded in {tries} tries")
        writer.close(split_masks(writer.names, valid_fraction, seed))
    except BaseException:
        writer.abort()
        raise
    finally:
        env.close()
    return {"task": name, "demos": n, "tries": tries, "expert_success_rate": n / tries,
            "samples": int(sum(lengths)), "mean_length": float(np.mean(lengths)), "wall_seconds":
            time.perf_counter() - t0, "path": os.path.abspath(out), "bytes": os.path.getsize(out)}


def generate_mixed(env, writer, name: str, n: int, seed: int, max_steps: int, valid_fraction: float,
                   progress=print, mix: dict | None = None) -> dict:
    """``n`` episodes of the kinds of ``mix`` (:data:`MIX`; kinds in a seeded order, :func:`episode_kinds`), episode
    ``i`` from ``seed + i`` with its own noise ``default_rng([seed, i])``, all kept, success or not: sparse
    ``rewards`` (1 while the task is done), ``dones`` 1 at each episode's last step. Filter keys: ``train`` /
    ``valid`` and :func:`mixed_masks`; ``data.attrs["mix"]`` (JSON) holds per kind the fraction, demos and
    successes."""
    import json

    from modmimic.rollout import split_masks

    mix = dict(MIX if mix is None else mix)
    kinds = episode_kinds(n, mix, seed)
    t0 = time.perf_counter()
    successes, lengths = [], []
    for i, kind in enumerate(kinds):
        expert = variant_expert(name, kind, np.random.default_rng([seed, i]))
        traj, ok, T = expert_episode(env, expert, seed + i, max_steps)
        writer.add(traj)
        successes.append(bool(ok))
        lengths.append(T)
        if progress is not None and ((i + 1) % 10 == 0 or i + 1 == n):
            progress(f"  {i + 1}/{n} episodes, {sum(successes)} successful ({time.perf_counter() - t0:.0f} s)")
    counts = mix_counts(n, mix)
    summary = {k: {"fraction": mix[k], "demos": counts[k],
                   "successes": sum(ok for kind, ok in zip(kinds, successes) if kind == k)} for k in mix}
    writer.data.attrs["quality"] = "mixed"
    writer.data.attrs["mix"] = json.dumps(summary)
    writer.close({**split_masks(writer.names, valid_fraction, seed), **mixed_masks(writer.names, kinds, successes)})
    return {"task": name, "demos": n, "tries": n, "success_rate": sum(successes) / n, "mix": summary,
            "samples": int(sum(lengths)), "mean_length": float(np.mean(lengths)), "wall_seconds":
            time.perf_counter() - t0, "path": os.path.abspath(writer.path), "bytes": os.path.getsize(writer.path)}


def expert_success(task: str, episodes: int = 50, seed: int = 1000, max_steps: int | None = None,
                   goals: str = "benchmark", benchmark_seed: int = 0, style: str | None = None) -> dict:
    """The scripted expert's own success rate over ``episodes`` fresh initial states (Meta-World: by default the
    benchmark's placements, every one of the 50 per task once in 50 T episodes); ``style``: the expert's style.
    Also the length of every successful episode (``lengths``)."""
    from modmimic.rollout import wilson_interval

    name = env_name_of(task)
    env, expert, default_steps, _ = task_setup(task, goals=goals, benchmark_seed=benchmark_seed, style=style)
    t0 = time.perf_counter()
    results = [expert_episode(env, expert, seed + i, max_steps or default_steps, record=False)[1:]
               for i in range(episodes)]
    env.close()
    k = sum(ok for ok, _ in results)
    lo, hi = wilson_interval(k, episodes)
    return {"task": name, "episodes": episodes, "successes": k, "success_rate": k / episodes, "ci95": [lo, hi],
            "mean_length": float(np.mean([T for ok, T in results if ok])) if k else float("nan"),
            "lengths": [T for ok, T in results if ok], "wall_seconds": time.perf_counter() - t0}


# --- command line -----------------------------------------------------------------------------------------------

USAGE = f"""usage:
  python -m {PROG} generate task=Lift|Can|Square|<Meta-World task>|MT10|MT50|pusht|aloha_transfer_cube|aloha_insertion
                   n=<demos> out=<path.hdf5> [seed=0]
                   [max_tries=2n] [obs_dtype=float32] [valid_fraction=0.1] [compress=true] [next_obs=true]
                   [max_steps=<task default>] [compress_model=false] [camera_names=agentview,robot0_eye_in_hand]
                   [camera_height=84] [camera_width=84] [depth=false] [quality=expert|mixed] [mix=default|hard]
                   [goals=random|benchmark] [benchmark_seed=0] [style=<Square: default|alt; Lift: default|look>]
  python -m {PROG} expert task=<task> [episodes=50] [seed=1000] [goals=benchmark|random] [benchmark_seed=0]
                   [style=<Square: default|alt; Lift: default|look>]
  python -m {PROG} record env=<gymnasium id | robosuite task | Meta-World task> policy=<module:callable>
                   episodes=<n> out=<path.hdf5> [only_success=false] [seed=0] [max_steps=1000]
                   [max_tries=2n+20] [valid_fraction=0.1] [trusted_modules=<module>,...]

generate: write n successful scripted demonstrations as a robomimic HDF5 dataset (episode i starts from seed + i).
          quality=mixed: n episodes, every one kept: 20 % expert, 10 % noisy expert, 50 % let go of the object
          right after grasping it, 10 % grasp beside it, 10 % stop short above it (filter keys expert, noisy,
          let_go, beside, short, failed, success, train, valid). mix=hard (Lift): 10 % expert, 10 % noisy,
          40 % let go, 30 % near (closes its fingers 3-4.5 cm beside the cube, lifts nothing), 10 % short.
          next_obs=false leaves out the next_obs groups: half the size of an image dataset (200 Can demos with two
          84x84 cameras: 813 MB with them); recipes that bootstrap from the next state (offline RL) need them.
expert:   the scripted expert's own success rate.
style:    Square's expert has two styles that differ on purpose (a second demonstrator): default grasps the handle
          6 cm out from the nut's centre after hovering 8 cm above it, closes 10 steps, lifts to 1.02 m, turns the
          nut in place and lowers it straight down the peg; alt grasps it 6.8 cm out, approaches from 10 cm at a
          slower pace, holds still 30 steps while closing, turns the nut while lifting it to 1.07 m, stops it just
          above the peg to centre it and seats it slowly. Lift's expert: default turns the gripper onto the cube's
          faces on its way to the cube; look hovers above the cube first, then turns there, in the wrist camera's
          view, before descending (for policies from images).
record:   roll any policy out (a callable taking one observation, returning one action) and write its episodes as
          a robomimic HDF5 dataset (obs/next_obs by key, actions, rewards, dones, states when the env gives them,
          env_args, per-demo seeds, mask/train, mask/valid, mask/success). The policy's module is imported only
          when trusted: trusted_modules=<module> or MODMIMIC_TRUSTED_MODULES=<module>.
Meta-World tasks (reach-v3, push-v3, pick-place-v3, ... or the task sets MT10, MT50) use Meta-World's scripted
policies; goals= chooses the placements (random: drawn from each episode's seed; benchmark: the benchmark's 50 per
task, benchmark_seed= picks them); the dataset's env_args evaluate on the benchmark's.
pusht: gym-pusht's PushT with modmimic's push-planning expert (modmimic.pusht_expert); camera_names=top records
its image (camera_height=96 camera_width=96 as gym-pusht's pixels observation). aloha_transfer_cube,
aloha_insertion: gym-aloha's transfer cube and insertion with modmimic's scripted experts (modmimic.aloha_expert;
camera_names=top, 480 x 640 in LeRobot's data).
Needs the simulator extra: pip install 'modmimic[sim]' (Meta-World: pip install 'modmimic[metaworld]' &&
pip install --no-deps metaworld==3.1.1; PushT: pip install 'modmimic[pusht]'; ALOHA: 'modmimic[aloha]').
Exit status 0 done, 1 failure, 2 bad input."""

ARGS = {"generate": {"task": str, "n": int, "out": str, "seed": int, "max_tries": int, "obs_dtype": str,
                     "valid_fraction": float, "compress": bool, "next_obs": bool, "max_steps": int,
                     "compress_model": bool, "camera_names": lambda v: [c for c in v.split(",") if c],
                     "camera_height": int, "camera_width": int, "depth": bool, "quality": str, "goals": str,
                     "benchmark_seed": int, "style": str, "mix": str},
        "expert": {"task": str, "episodes": int, "seed": int, "max_steps": int, "goals": str, "benchmark_seed": int,
                   "style": str},
        "record": {"env": str, "policy": str, "episodes": int, "out": str, "only_success": bool, "seed": int,
                   "max_steps": int, "max_tries": int, "valid_fraction": float,
                   "trusted_modules": lambda v: [m for m in v.split(",") if m]}}
REQUIRED = {"generate": ("task", "n", "out"), "expert": ("task",), "record": ("env", "policy", "episodes", "out")}




def parse(argv: list[str]) -> tuple[str, dict]:
    import difflib

    if not argv or argv[0] not in ARGS:
        raise ArgumentError(f"the first argument must be a command ({' or '.join(ARGS)}), got "
                            f"{argv[0] if argv else 'nothing'!r}")
    cmd, spec, out = argv[0], ARGS[argv[0]], {}
    for a in argv[1:]:
        if "=" not in a:
            raise ArgumentError(f"arguments are key=value, got {a!r}")
        k, v = a.split("=", 1)
        if k not in spec:
            close = difflib.get_close_matches(k, list(spec), n=1)
            raise ArgumentError(f"unknown argument {k!r} for {cmd}" + (f" (did you mean {close[0]!r}?)" if close
                                                                        else "") + f"; known: {', '.join(spec)}")
        typ = spec[k]
        if typ is bool:
            if v.lower() not in ("true", "false", "1", "0"):
                raise ArgumentError(f"{k} must be true or false, got {v!r}")
            out[k] = v.lower() in ("true", "1")
        else:
            try:
                out[k] = typ(v)
            except ValueError:
                raise ArgumentError(f"{k} must be {getattr(typ, '__name__', 'a list')}, got {v!r}") from None
    for k in REQUIRED[cmd]:
        if k not in out:
            raise ArgumentError(f"{cmd} needs {k}=...")
    if out.get("goals", "benchmark") not in ("benchmark", "random"):
        raise ArgumentError(f"goals must be benchmark or random, got {out['goals']!r}")
    if "goals" in out and not is_metaworld(out["task"]):
        raise ArgumentError(f"goals= is for Meta-World tasks, not {out['task']}")
    if out.get("quality", "expert") not in QUALITIES:
        raise ArgumentError(f"quality must be {' or '.join(QUALITIES)}, got {out['quality']!r}")
    if out.get("obs_dtype", "float32") not in ("float32", "float64"):
        raise ArgumentError(f"obs_dtype must be float32 or float64, got {out['obs_dtype']!r}")
    for k in ("n", "episodes"):
        if k in out and out[k] < 1:
            raise ArgumentError(f"{k} must be >= 1, got {out[k]}")
    if "task" in out:
        try:
            env_name_of(out["task"])
        except ValueError as e:
            raise ArgumentError(str(e)) from None
        expert_style(out["task"], out.get("style"))
        if cmd == "generate":
            check_mix(out["task"], out.get("quality", "expert"), out.get("mix", "default"))
    return cmd, out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    try:
        cmd, a = parse(argv)
        if cmd == "generate":
            print(f"{PROG}: generating {a['n']} scripted {a['task']} demos -> {a['out']}", flush=True)
            s = generate(**a)
            ok = ("mix " + ", ".join(f"{k} {m['demos']} ({m['successes']} successful)" for k, m in s["mix"].items())
                  if "mix" in s else f"expert success {s['demos']}/{s['tries']} = {s['expert_success_rate']:.3f}")
            print(f"{PROG}: wrote {s['demos']} demos ({s['samples']} samples, mean length {s['mean_length']:.1f}) "
                  f"to {s['path']} ({s['bytes'] / 1e6:.1f} MB) in {s['wall_seconds']:.0f} s; {ok}")
        elif cmd == "record":
            from modmimic.record import record

            print(f"{PROG}: recording {a['episodes']} episodes of {a['policy']} in {a['env']} -> {a['out']}", flush=True)
            s = record(**a, task_env=named_task_env)
            print(f"{PROG}: wrote {s['episodes']} episodes ({s['successes']} successful, from {s['tries']} tries) to "
                  f"{s['path']} in {s['wall_seconds']:.0f} s")
        else:
            s = expert_success(**a)
            print(f"{PROG}: {s['task']} scripted expert: {s['successes']}/{s['episodes']} = {s['success_rate']:.3f} "
                  f"(95% CI [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]), mean successful length {s['mean_length']:.1f}"
                  f" steps, {s['wall_seconds']:.0f} s")
        return 0
    except BaseException as e:  # noqa: BLE001 - one paragraph and an exit status
        if isinstance(e, SystemExit):
            raise
        from modmimic.envs import EnvError
        from modmimic.record import RecordError

        if os.environ.get("MODMIMIC_DEBUG", "0") not in ("0", ""):
            import traceback

            traceback.print_exc()
        if isinstance(e, KeyboardInterrupt):
            print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
            return 130
        code = 2 if isinstance(e, (ArgumentError, EnvError, RecordError)) else 1
        print(f"{PROG}: {'' if code == 2 else f'failed with {type(e).__name__}: '}{e}"
              + (f" (python -m {PROG} --help)" if isinstance(e, ArgumentError) else ""), file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
