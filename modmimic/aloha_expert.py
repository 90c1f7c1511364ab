"""Scripted ALOHA experts: transfer cube and insertion (``modmimic.demos generate task=aloha_transfer_cube`` /
``task=aloha_insertion``).

gym-aloha ships no scripted policy. The ACT paper's scripted data came from a two-stage recipe, which these experts
follow with their own code: plan end-effector waypoints from the objects' poses, drive gym-aloha's mocap version of
the scene (``bimanual_viperx_end_effector_*.xml``, where welds pull each gripper to a mocap target) through them
(:func:`mocap_scene`, :func:`drive`), record the arms' joint positions, and replay those as the joint-position
actions of the real task (:class:`AlohaExpert`).

Waypoints are for each gripper's tool point (the centre of its two fingers, measured in the gripper link's frame at
the start) and its link's orientation at 50 Hz, with linear interpolation of position, quaternion and gripper opening
between them; the gripper command is replayed as given, the arm joints as the mocap run reached them.

With MuJoCo 3.3.7 each weld holds a 13 cm position offset (computed from the reference pose qpos0) that the scene's
mocap start poses (the gripper links' own positions) do not expect; the planner drops that offset (the link follows
its target's position, the weld keeps its orientation offset) and steers tool points instead. The scene's soft welds
(solimp 0.25) leave the grippers centimetres and tens of degrees away from their targets (the left gripper reached ~50
of 90 degrees of pitch); the planning run stiffens them (:data:`WELD_SOLIMP`) and adds each tool point's integrated
remaining error to its target (a few mm remain).

Transfer cube
-------------
* right arm: pitched 30 degrees down, open, 8 cm over its grasp (step 70), down (100) so that the cube's centre is
  4 cm ahead of the tool point along the fingers (centred between the finger pads; the fingertips clear the table),
  close (115), lift 5 cm (135), to where the cube is at the meeting point ``(0, 0.5, 0.25)`` (185), hold, open once
  the left gripper has closed (275-290), back along its fingers (320);
* left arm: rolled 90 degrees about its fingers (they close on the cube's top and bottom faces while the right
  fingers hold its sides), open, 23 cm short of the meeting point along -x (100); from step 200 its grasp follows
  where the cube is in the planning run (within 5 cm of the meeting point): 6 cm short of its grasp (230), the cube's
  centre 3 cm ahead of the tool point (250), close (262), pull away along -x holding the cube (290-320).

gym-aloha samples the cube's centre at z = 0.05; it drops to 0.02 on the table, where the right arm picks it (planned
from 0.05, the cube hung from the fingertips).

Measured (``modmimic.demos expert``, 2026-12-07): 50/50 transferred cubes on seeds 0-49 and on 1000-1049, 300/300 on
2000-2299, every planning run and every replay succeeding; the cube changes hands at step ~261 (episodes end 5 steps
later), within gym-aloha's registered 300-step episodes. The earlier version of this expert (right gripper pitched
60 degrees, left fingers opening sideways, soft welds) transferred 26/50 on seeds 0-49.

Insertion
---------
gym-aloha's peg (a 12 x 2 x 2 cm bar, centre at z = 0.01 on the table) lies along x on the right, its socket (a 12 cm
tube, 3.6 cm inside, around a 2 x 2 cm pin whose face is 2 cm inside its +x mouth) on the left; success is the peg
touching the pin (stage 4). The grippers' fingers are open triangles: only their tips and the plates at their bases
(in front of the gripper bar) close on anything.

* both arms (:func:`insertion_waypoints`): pitched :data:`INS_PITCH` (20) degrees down, where the fingertips and the
  plates reach equally low, so that each object is held at two places on either side of its centre of mass (a grasp
  at the fingertips alone let it swing about the closing axis by ~20 degrees); the tool point 2 cm in from the
  object's near end (:data:`GRIP_BACK`; the peg's +x end, the socket's -x end: the gripper bar stays clear) and
  3 mm of finger over the table: open 8 cm over it (80), down (110), close (130), lift 8 cm (155);
* then (:class:`InsertionTargets`, from where the objects are in the planning run) the left arm brings the socket's
  centre to :data:`INS_SOCKET` ``(-0.1, 0.5, 0.2)`` (205) and holds it, the right arm the peg's end 5 cm in front of
  the socket's mouth (205), then in along the socket's axis to 5 mm past the pin's face (215-250). On the way the
  right gripper turns the peg parallel to the socket and steers its end onto its path by the integrated remaining
  errors (bounded, 0.35 rad and 1.5 cm: nothing chases a dropped peg).

The planning run's arm joints have no friction loss (``mocap_scene(arm_friction=False)``): against gym-aloha's
30-60 Nm the welds turned the wrists slowly (a gripper pitched 20 degrees over 80 steps reached 28, and 20 again only
200 steps later; without it within 0.4 degrees). The replay is closed-loop (``AlohaExpert.replay_gain``): each arm
joint's integrated lag behind the plan is added to its command (gym-aloha's servos stop up to friction / stiffness
from their targets, ~0.03 rad at the shoulders, ~1 cm at the gripper against a clearance of 8 mm); and at step 205
(:data:`ALIGNED`) the rest of the plan is made again from the real task's state (:func:`insertion_replan`; the peg
turns in its grasp by a few degrees differently in the replay). The peg touches the pin at step ~260 (episodes end
5 steps later), within gym-aloha's registered 300-step episodes.

Measured (``modmimic.demos expert task=aloha_insertion``, 2026-12-07): 50/50 on seeds 0-49 and 50/50 on 1000-1049
(mean episode 265.9 and 266.0 steps); 299/300 on 2000-2299, the pin touched at steps 258-262 (one 283). The one
failure (seed 2193) stopped at stage 3: its peg lies at x = 0.200, the edge of gym-aloha's range, where the right
forearm meets its shoulder on the way down and the fingers stop on the table (the planning run grasps nothing; the
re-planned replay grasps the peg but puts its end on the socket's rim). Pegs that near (x >= 0.196, 4 % of
gym-aloha's placements; the first 30 such seeds from 3000 on): 27/30 (two at stage 3 on the rim, one peg dropped on
the way, stage 2); sockets as near the left arm (x <= -0.196): 30/30. Without the re-plan at step 205, 46/50 on
seeds 0-49 (4 stop at stage 3, the peg on the rim); without the closed-loop replay, 37/50 (13 at stage 3); with the
arms' friction in the planning run, 10/50 (the grippers pitch ~30 degrees instead of 20; 38 stop at stage 2,
lifted).
"""
from __future__ import annotations

import math

import numpy as np


def quat_mul(a, b) -> np.ndarray:
    """Hamilton product of MuJoCo quaternions ``[w, x, y, z]``."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def quat_conj(q) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def about(axis: int, degrees: float) -> np.ndarray:
    """The rotation of ``degrees`` about axis ``axis`` (0 x, 1 y, 2 z) as a quaternion."""
    h = math.radians(degrees) / 2
    q = np.array([math.cos(h), 0.0, 0.0, 0.0])
    q[1 + axis] = math.sin(h)
    return q


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


def quat_from_rotvec(v) -> np.ndarray:
    """The rotation of ``|v|`` radians about ``v`` as a quaternion."""
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], np.asarray(v, dtype=np.float64) / angle * math.sin(angle / 2)])


def rotvec_between(a, b) -> np.ndarray:
    """The shortest rotation (axis times angle) that turns direction ``a`` into direction ``b``."""
    axis = np.cross(a, b)
    s = float(np.linalg.norm(axis))
    return np.zeros(3) if s < 1e-12 else axis / s * math.atan2(s, float(np.dot(a, b)))


def clip_norm(v, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n <= limit else v * (limit / n)


def fingers_axis(q) -> np.ndarray:
    """The direction a gripper's fingers point in (its link's x axis) for tool orientation ``q``."""
    return quat_to_mat(q)[:, 0]


CUBE_REST_Z = 0.02  # the cube's centre on the table (gym-aloha places it 3 cm higher, and it drops)
MEET = np.array([0.0, 0.5, 0.25])  # where the right arm holds the cube for the handover
RIGHT_PITCH = 30.0  # degrees down, the right gripper (steeper, its fingertips would stop on the table above the cube)
RIGHT_DEPTH = 0.04  # the cube's centre ahead of the right tool point along its fingers (their tips clear the table)
LEFT_ROLL = 90.0  # degrees about its fingers: the left gripper closes on the cube's top and bottom faces
LEFT_DEPTH = 0.03  # the cube's centre ahead of the left tool point along its fingers when it grasps
HANDOVER = 200  # from this step on the left arm's grasp follows the cube (planning run) ...
LEFT_CLOSE = 262  # ... until its gripper has closed
RIGHT_OPEN = 275  # the right gripper starts opening
FOLLOW = 0.05  # m per axis: how far from the meeting point the left arm's grasp follows the cube
WELD_SOLIMP = (0.9, 0.95, 0.001)  # the scene's welds (0.25, 0.25) let the grippers sag and turn away from their targets
CORRECTION_GAIN = 0.1  # per step, of the tool point's remaining error added to its mocap target
MAX_CORRECTION = 0.05  # m per axis


def transfer_cube_waypoints(box_xyz, left0, right0) -> tuple[list, list]:
    """Waypoints of both arms' tool points (position, gripper link orientation, opening) from the cube's position
    and the tool points' start poses (``[xyz, quat]``); the left arm's end at its staging pose, its grasp follows the
    cube (:func:`handover_waypoints`)."""
    left_q, right_q = left0[3:7], right0[3:7]
    pick_q = quat_mul(right_q, about(1, RIGHT_PITCH))
    ax = fingers_axis(pick_q)
    grasp = np.array([box_xyz[0], box_xyz[1], CUBE_REST_Z]) - RIGHT_DEPTH * ax
    held = MEET - RIGHT_DEPTH * ax
    stage_q = quat_mul(left_q, about(0, LEFT_ROLL))
    staged = MEET - (LEFT_DEPTH + 0.2) * fingers_axis(stage_q)
    left = [(0, np.asarray(left0[:3]), left_q, 0.0), (100, staged, stage_q, 1.0), (HANDOVER, staged, stage_q, 1.0)]
    right = [(0, np.asarray(right0[:3]), right_q, 0.0), (70, grasp + [0, 0, 0.08], pick_q, 1.0),
             (100, grasp, pick_q, 1.0), (115, grasp, pick_q, 0.0), (135, grasp + [0, 0, 0.05], pick_q, 0.0),
             (185, held, pick_q, 0.0), (RIGHT_OPEN, held, pick_q, 0.0), (RIGHT_OPEN + 15, held, pick_q, 1.0),
             (RIGHT_OPEN + 45, held - 0.12 * ax + [0, 0, 0.03], pick_q, 1.0)]
    return left, right


def handover_waypoints(left: list, box_xyz) -> list:
    """The left arm's waypoints from :data:`HANDOVER` on for the cube at ``box_xyz``: 6 cm short of it along its
    fingers, around it, close, pull away holding it once the right gripper has opened."""
    _, p, q, _ = left[-1]
    ax = fingers_axis(q)
    grasp = np.asarray(box_xyz, dtype=np.float64) - LEFT_DEPTH * ax
    return left[:-1] + [(HANDOVER, p, q, 1.0), (HANDOVER + 30, grasp - 0.06 * ax, q, 1.0),
                        (LEFT_CLOSE - 12, grasp, q, 1.0), (LEFT_CLOSE, grasp, q, 0.0),
                        (RIGHT_OPEN + 15, grasp, q, 0.0), (RIGHT_OPEN + 45, grasp - 0.1 * ax, q, 0.0)]


def mocap_scene(scene: str, task, object_poses: np.ndarray, arm_friction: bool = True):
    """gym-aloha's mocap version of ``scene`` (``bimanual_viperx_end_effector_<scene>.xml``) at its start pose with the
    objects at ``object_poses`` (``env_state``), its welds fixed and stiffened; returns ``(physics, rel_q, tool,
    fingers, starts)``: each weld's orientation offset, each gripper's tool point in its link's frame, its two finger
    geoms, and the tool points and link orientations (``[xyz, quat]``) the mocap start poses ask for.
    ``arm_friction=False``: the arms' joints without their friction loss (30-60 Nm in gym-aloha's arms): the welds, not
    motors, move them, and against that friction they turn the wrists slowly (a gripper pitched 20 degrees down over
    80 steps reached 28, and 20 again only 200 steps later; without it, within 0.4 degrees all along)."""
    from dm_control import mujoco
    from gym_aloha import constants

    physics = mujoco.Physics.from_xml_path(str(constants.ASSETS_DIR / f"bimanual_viperx_end_effector_{scene}.xml"))
    # the welds pull each gripper link onto its mocap target: MuJoCo 3 stores, from the reference pose qpos0, a 13 cm
    # offset between the two that the scene's mocap start poses (the links' own positions) do not expect; without
    # it the link follows its target's position (the welds keep their orientation offset, rel_q)
    physics.model.eq_data[:, 3:6] = 0.0
    rel_q = [physics.model.eq_data[i, 6:10].copy() for i in range(2)]
    physics.model.eq_solimp[:, :3] = WELD_SOLIMP  # stiffer welds: the grippers reach their targets' poses
    if not arm_friction:
        m = physics.model
        arm = [i for i in range(16) if "finger" not in m.id2name(m.dof_jntid[i], "joint")]
        m.dof_frictionloss[arm] = 0.0
    with physics.reset_context():
        task.initialize_robots(physics)
        physics.data.qpos[16:] = object_poses  # the objects' free joints follow the arms' 16 joints
    fingers = [[physics.model.name2id(f"vx300s_{arm}/10_{side}_gripper_finger", "geom") for side in ("left", "right")]
               for arm in ("left", "right")]
    tool, starts = [], []  # each finger centre in its gripper link's frame (fingers closed, as they start)
    for k, arm in enumerate(("left", "right")):
        link = f"vx300s_{arm}/gripper_link"
        mid = physics.data.geom_xpos[fingers[k]].mean(axis=0)
        tool.append(physics.named.data.xmat[link].reshape(3, 3).T @ (mid - physics.named.data.xpos[link]))
        q = quat_mul(physics.data.mocap_quat[k], rel_q[k])
        starts.append(np.concatenate([physics.data.mocap_pos[k] + quat_to_mat(q) @ tool[k], q]))
    return physics, rel_q, tool, fingers, starts


def tool_points(physics, fingers) -> list:
    """Where each gripper's tool point (its fingers' centre) is now."""
    return [physics.data.geom_xpos[f].mean(axis=0) for f in fingers]


def drive(physics, task, rel_q, tool, fingers, targets, steps: int, start: int = 0) -> tuple[np.ndarray, int]:
    """``([steps, 14] joint-position actions, the run's highest reward stage)``: the mocap scene driven to the tool
    point targets ``targets(t, physics)`` (per arm ``[xyz, link quat, gripper]``), its arm joints after each step and
    the gripper commands; from step ``start`` on (the rows before it are zeros)."""
    from dm_control.rl import control
    from gym_aloha import constants

    n_sub = control.compute_n_steps(constants.DT, physics.timestep())
    correction = np.zeros((2, 3))
    out, stage = np.zeros((steps, 14)), 0
    for t in range(start, steps):
        a = [np.array(x, dtype=np.float64) for x in targets(t, physics)]
        wanted = [a[k][:3].copy() for k in range(2)]
        for k in range(2):  # tool point and link orientation -> the gripper link's mocap target
            a[k][:3] = a[k][:3] + correction[k] - quat_to_mat(a[k][3:7]) @ tool[k]
            a[k][3:7] = quat_mul(a[k][3:7], quat_conj(rel_q[k]))
        task.before_step(np.concatenate(a), physics)
        for _ in range(n_sub):
            physics.step()
        reached = tool_points(physics, fingers)
        for k in range(2):  # the welds still lag a little: steer the targets by the integrated tool point error
            correction[k] = np.clip(correction[k] + CORRECTION_GAIN * (wanted[k] - reached[k]), -MAX_CORRECTION,
                                    MAX_CORRECTION)
        stage = max(stage, int(task.get_reward(physics)))
        q = physics.data.qpos
        out[t] = np.concatenate([q[:6], [a[0][7]], q[8:14], [a[1][7]]])
    return out, stage


def transfer_cube_trajectory(object_poses: np.ndarray, steps: int) -> tuple[np.ndarray, int]:
    """The transfer cube's ``[steps, 14]`` joint-position plan for the cube at ``object_poses`` (7) and the planning
    run's highest stage."""
    from gym_aloha.tasks import sim_end_effector as ee

    task = ee.TransferCubeEndEffectorTask()
    physics, rel_q, tool, fingers, starts = mocap_scene("transfer_cube", task, object_poses)
    left, right = transfer_cube_waypoints(np.asarray(object_poses[:3], dtype=np.float64), *starts)
    plan = {"left": left}

    def targets(t, physics):
        if HANDOVER <= t <= LEFT_CLOSE:  # the left arm's grasp follows the cube (near the meeting point) until closed
            plan["left"] = handover_waypoints(left, MEET + np.clip(physics.data.qpos[16:19] - MEET, -FOLLOW, FOLLOW))
        return interpolate(plan["left"], t), interpolate(right, t)

    try:
        return drive(physics, task, rel_q, tool, fingers, targets, steps)
    finally:
        physics.free()



PEG_HALF, PIN_FACE = 0.06, 0.04  # the peg's half length; the pin's face ahead of the socket's centre along its axis
SOCKET_MOUTH = 0.06  # the socket's open end ahead of its centre (its walls are 12 cm long)
INS_PITCH = 20.0  # degrees down, both grippers: their fingertips and the finger plates behind them equally low
GRIP_BACK = 0.02  # the tool points this far in from the objects' near ends (the gripper bar stays clear of them)
PEG_TOOL_Z, SOCKET_TOOL_Z = 0.031, 0.043  # the tool points' heights when they close (the fingers 3 mm over the table)
INS_SOCKET = np.array([-0.1, 0.5, 0.2])  # where the left arm holds the socket's centre for the insertion
INS_GAP = 0.05  # the peg's end this far out of the socket's mouth before it goes in
INS_DEEP = 0.005  # the peg's end aimed this far past the pin's face
TURN_GAIN, MAX_TURN = 0.1, 0.35  # per step, of the angle between the peg's and the socket's axes; rad
STEER_GAIN, MAX_STEER = 0.1, 0.015  # per step, of the peg end's distance from its path; m
GRASPED, LIFTED, ALIGNED, INSERTING, INSERTED = 130, 155, 205, 215, 250  # steps


def insertion_waypoints(peg_xyz, socket_xyz, left0, right0) -> tuple[list, list]:
    """Tool point waypoints of both arms up to :data:`LIFTED`: the left gripper picks the socket by its side walls,
    the right one the peg by its sides, both pitched :data:`INS_PITCH` down, and lift them."""
    arms = []
    for start, obj, z, side in ((left0, socket_xyz, SOCKET_TOOL_Z, -1), (right0, peg_xyz, PEG_TOOL_Z, 1)):
        q = quat_mul(start[3:7], about(1, INS_PITCH))
        at = np.array([obj[0] + side * (PEG_HALF - GRIP_BACK), obj[1], z])
        arms.append([(0, np.asarray(start[:3]), start[3:7], 0.0), (80, at + [0, 0, 0.08], q, 1.0),
                     (110, at, q, 1.0), (GRASPED, at, q, 0.0), (LIFTED, at + [0, 0, 0.08], q, 0.0)])
    return arms[0], arms[1]


def object_axis(quat) -> np.ndarray:
    return quat_to_mat(quat)[:, 0]


class InsertionTargets:
    """Tool point targets ``(t, physics)`` from step :data:`LIFTED` (or a later step ``synced``, re-planning from the
    real task's state): from where the objects are at that step, the left arm brings the socket's centre to
    :data:`INS_SOCKET` (by :data:`ALIGNED`), the right arm the peg's end in front of the socket's mouth (by
    :data:`ALIGNED`, or 10 steps after ``synced``), then in along the socket's axis, where it is now, over 35 steps
    (10 steps later). On the way the right gripper turns the peg parallel to the socket and steers its end onto its
    path, both by the integrated remaining error (bounded: nothing chases a dropped peg)."""

    def __init__(self, physics, fingers, synced: int, orientations):
        q = physics.data.qpos
        socket, end = q[23:26].copy(), q[16:19] - PEG_HALF * object_axis(q[19:23])
        tools = tool_points(physics, fingers)
        self.held = [tools[0] - socket, tools[1] - end]  # where the grippers hold the objects
        self.q = orientations  # the grippers' orientations at ``synced``
        self.synced, self.socket, self.end = synced, socket, end
        self.aligned = max(ALIGNED, synced + 10)
        self.inserting = self.aligned + INSERTING - ALIGNED
        self.inserted = self.inserting + INSERTED - INSERTING
        self.turn, self.steer, self.wanted = np.zeros(3), np.zeros(3), end

    def __call__(self, t, physics):
        q = physics.data.qpos
        socket, socket_ax, peg_ax = q[23:26], object_axis(q[26:30]), object_axis(q[19:23])
        end = q[16:19] - PEG_HALF * peg_ax
        if t > self.synced:
            self.turn = clip_norm(self.turn + TURN_GAIN * rotvec_between(peg_ax, socket_ax), MAX_TURN)
            if t > self.aligned:
                self.steer = clip_norm(self.steer + STEER_GAIN * (self.wanted - end), MAX_STEER)
        g = min(1.0, (t - self.synced) / (self.aligned - self.synced))
        goal = INS_SOCKET if self.synced < ALIGNED else self.socket
        a_left = np.concatenate([(1 - g) * self.socket + g * goal + self.held[0], self.q[0], [0.0]])
        f = min(1.0, max(0.0, (t - self.inserting) / (self.inserted - self.inserting)))
        mouth = socket + ((1 - f) * (SOCKET_MOUTH + INS_GAP) + f * (PIN_FACE - INS_DEEP)) * socket_ax
        self.wanted = (1 - g) * self.end + g * mouth
        turn = quat_from_rotvec(self.turn)
        a_right = np.concatenate([self.wanted + self.steer + quat_to_mat(turn) @ self.held[1],
                                  quat_mul(turn, self.q[1]), [0.0]])
        return a_left, a_right


def insertion_trajectory(object_poses: np.ndarray, steps: int) -> tuple[np.ndarray, int]:
    """The insertion's ``[steps, 14]`` joint-position plan for the peg and socket at ``object_poses`` (14) and the
    planning run's highest stage."""
    from gym_aloha.tasks import sim_end_effector as ee

    task = ee.InsertionEndEffectorTask()
    physics, rel_q, tool, fingers, starts = mocap_scene("insertion", task, object_poses, arm_friction=False)
    poses = np.asarray(object_poses, dtype=np.float64)
    left, right = insertion_waypoints(poses[:3], poses[7:10], *starts)
    plan = {}

    def targets(t, physics):
        if t < LIFTED:
            return interpolate(left, t), interpolate(right, t)
        if t == LIFTED:
            plan["rest"] = InsertionTargets(physics, fingers, LIFTED, [left[-1][2], right[-1][2]])
        return plan["rest"](t, physics)

    try:
        return drive(physics, task, rel_q, tool, fingers, targets, steps)
    finally:
        physics.free()


def insertion_replan(state: np.ndarray, t: int, steps: int) -> tuple[np.ndarray, int]:
    """The insertion's joint-position plan from step ``t`` on (rows ``t`` to ``steps``; those before are zeros) for
    the real task at physics state ``state`` (dm_control's qpos and qvel, then anything: the states of
    :meth:`modmimic.envs.aloha_env.AlohaEnv.get_state`), both grippers holding their objects."""
    from gym_aloha.tasks import sim_end_effector as ee

    state = np.asarray(state, dtype=np.float64)
    task = ee.InsertionEndEffectorTask()
    physics, rel_q, tool, fingers, _ = mocap_scene("insertion", task, state[16:30], arm_friction=False)
    with physics.reset_context():  # the scenes share their joints: the arms' 16, then the peg's and the socket's
        physics.set_state(state[:physics.get_state().size])
    links = ["vx300s_left/gripper_link", "vx300s_right/gripper_link"]
    orientations = [physics.named.data.xquat[link].copy() for link in links]
    for k in range(2):  # the welds' targets where the grippers are
        physics.data.mocap_pos[k] = physics.named.data.xpos[links[k]]
        physics.data.mocap_quat[k] = quat_mul(orientations[k], quat_conj(rel_q[k]))
    physics.forward()  # dm_control's step starts from the kinematics of the last forward pass (the old targets)
    targets = InsertionTargets(physics, fingers, t, orientations)
    try:
        return drive(physics, task, rel_q, tool, fingers, targets, steps, start=t)
    finally:
        physics.free()


ARM_JOINTS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]  # of the 14 joint positions: the arms' (not the grippers)
REPLAY_GAIN = 0.2  # per step, of an arm joint's lag behind the plan added to its command (the insertion's replay)
MAX_REPLAY_CORRECTION = 0.1  # rad


class AlohaExpert:
    """``reset(env, obs)`` plans the episode's joint trajectory (``trajectory``) from the objects' poses; ``act``
    replays it. ``replay_gain``: each arm joint's integrated lag behind the plan (``agent_pos`` against the plan's
    previous step) is added to its command (gym-aloha's joint servos stop up to friction / stiffness away from their
    targets: 60 Nm / 1600 Nm/rad at the shoulders). ``replan = (step, planner)``: at that step the rest of the plan
    is made again from the real task's state (``env.get_state()``)."""

    trajectory = None
    replay_gain = 0.0
    replan = None

    def reset(self, env, obs: dict) -> None:
        self.env = env
        self.plan, self.planned_stage = self.trajectory(np.asarray(obs["env_state"], dtype=np.float64),
                                                        env.serialize()["env_kwargs"]["max_episode_steps"])
        self.t, self.correction = 0, np.zeros(len(ARM_JOINTS))

    def act(self, obs: dict) -> np.ndarray:
        t = min(self.t, len(self.plan) - 1)
        q = np.asarray(obs["agent_pos"], dtype=np.float64)[ARM_JOINTS]
        if self.replan is not None and self.t == self.replan[0]:
            self.plan[t:] = self.replan[1](self.env.get_state()["states"], t, len(self.plan))[0][t:]
            self.plan[t - 1, ARM_JOINTS] = q  # the new plan starts where the arms are
        a = self.plan[t].copy()
        if self.replay_gain and t > 0:
            self.correction = np.clip(self.correction + self.replay_gain * (self.plan[t - 1, ARM_JOINTS] - q),
                                      -MAX_REPLAY_CORRECTION, MAX_REPLAY_CORRECTION)
            a[ARM_JOINTS] += self.correction
        self.t += 1
        return a


class AlohaTransferCubeExpert(AlohaExpert):
    trajectory = staticmethod(transfer_cube_trajectory)


class AlohaInsertionExpert(AlohaExpert):
    trajectory = staticmethod(insertion_trajectory)
    replay_gain = REPLAY_GAIN
    replan = (ALIGNED, insertion_replan)
