"""A scripted PushT expert (``modmimic.demos generate task=pusht``): push planning on gym-pusht's own simulator.

gym-pusht's block has no inertia (pymunk with full damping): it moves only while the pusher pushes it, so a push is
a short, deterministic motion that a copy of the simulator predicts. The expert repeats:

1. **Plan a push.** Candidate contacts: points along the T's edges (its local geometry), each pushed along the
   edge's inward normal or 30 degrees to either side, at two speeds. From the pusher resting 2 px off the contact,
   each candidate is simulated for up to :data:`PUSH_STEPS` steps in a second gym-pusht instance set to the current
   state; the push (contact, direction, speed, number of steps) whose end pose is closest to the goal (mean distance
   of the T's 8 corners to the goal's) wins.
2. **Go there around the block.** A shortest path from the pusher to the push's start point over a visibility graph
   (points on a circle around the block and a point behind the start, joined where the straight segment keeps the
   pusher clear of the block), followed with a look-ahead target.
3. **Push** with the planned actions, then plan again from wherever the block ended.

The plan is closed loop (each push starts from the block's real pose), so the simulator copy's small differences
(contact history) do not add up. Nothing is learnt; the expert reads the state (pusher, block pose).
"""
from __future__ import annotations

import math

import numpy as np

PUSHER_RADIUS = 15.0
GAP = 2.0  # px between the pusher and the block at a push's start
CLEAR = PUSHER_RADIUS + 8.0  # routes keep the pusher's centre this far from the block
WALL_LO, WALL_HI = 5 + 2 + PUSHER_RADIUS + 1, 506 - 2 - PUSHER_RADIUS - 1
PUSH_STEPS = 12
SPEEDS = (6.0, 20.0)  # look-ahead of the pusher's target along the push (px): slow and fine, fast and coarse
ANGLES = (0.0, math.radians(30), -math.radians(30))
LOOKAHEAD = 90.0  # px: the target leads the pusher by up to this much along a route (speed ~ 0.5 x this per step)
TRAVEL_COST = 0.05  # px of predicted corner error that 1 px of travel to a push's start is worth (time is short)


def tee_contacts() -> list[tuple[np.ndarray, np.ndarray]]:
    """``(point, outward normal)`` in the T's body frame along its edges (gym-pusht's ``add_tee``, scale 30: the bar
    ``[-60, 60] x [0, 30]``, the stem ``[-15, 15] x [30, 120]``)."""
    edges = [((-60, 0), (60, 0), (0, -1), 5), ((60, 0), (60, 30), (1, 0), 1), ((-60, 0), (-60, 30), (-1, 0), 1),
             ((15, 30), (60, 30), (0, 1), 2), ((-60, 30), (-15, 30), (0, 1), 2),
             ((15, 30), (15, 120), (1, 0), 3), ((-15, 30), (-15, 120), (-1, 0), 3), ((-15, 120), (15, 120), (0, 1), 1)]
    out = []
    for a, b, n, k in edges:
        a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
        for i in range(k):
            out.append((a + (b - a) * (i + 1) / (k + 1), np.array(n, dtype=np.float64)))
    return out


CONTACTS = tee_contacts()


def rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def keypoint_error(keypoints: np.ndarray, goal_keypoints: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(keypoints.reshape(-1, 2) - goal_keypoints.reshape(-1, 2), axis=1)))


class PushTExpert:
    """Phase machine over pushes; ``reset(env, obs)`` then ``act(obs)`` (``env``: :class:`~modmimic.envs.pusht_env.
    PushTEnv`)."""

    def reset(self, env, obs: dict) -> None:
        from modmimic.envs.pusht_env import import_pusht

        self.env = env
        if not hasattr(self, "model"):
            Raw = import_pusht()
            self.model = Raw(obs_type="state", render_mode="rgb_array")
            self.model.reset(seed=0)
        self.goal_keypoints = self._goal_keypoints()
        self.route, self.push = [], []
        self.last_dir = None
        self.phase = "plan"

    # --- geometry -------------------------------------------------------------------------------------------

    def _goal_keypoints(self) -> np.ndarray:
        e = self.env.env
        pose = np.asarray(e.goal_pose, dtype=np.float64)
        return self._keypoints_at(pose[:2], pose[2])

    def _keypoints_at(self, position, angle: float) -> np.ndarray:
        if not hasattr(self, "_local"):
            self._local = np.array([tuple(v) for s in self.env.env._block_shapes for v in s.get_vertices()])
        return self._local @ rot(angle).T + np.asarray(position, dtype=np.float64)

    def _block_polygon(self, position, angle: float):
        import shapely.geometry as sg

        R = rot(angle)
        bar = [R @ np.array(p) + position for p in ((-60, 0), (60, 0), (60, 30), (-60, 30))]
        stem = [R @ np.array(p) + position for p in ((-15, 30), (15, 30), (15, 120), (-15, 120))]
        return sg.Polygon(bar).union(sg.Polygon(stem))

    # --- planning ------------------------------------------------------------------------------------------

    def _set_model(self, agent_pos, block_pos, block_angle: float) -> None:
        m = self.model
        m.reset(seed=0)
        m.agent.position, m.agent.velocity = list(agent_pos), (0.0, 0.0)
        m.block.angle = float(block_angle)
        m.block.position = list(block_pos)
        m.block.velocity, m.block.angular_velocity = (0.0, 0.0), 0.0
        m.space.reindex_shapes_for_body(m.block)
        m.space.reindex_shapes_for_body(m.agent)

    def _advance(self, action: np.ndarray) -> None:
        """One control step of the simulator copy: gym-pusht's ``step`` without its observation and coverage
        (its PD law on the pusher, its physics steps), which the planner does not need at every step."""
        m = self.model
        for _ in range(int(1 / (m.dt * m.control_hz))):
            acc = m.k_p * (action - np.array(m.agent.position)) - m.k_v * np.array(m.agent.velocity)
            m.agent.velocity = (np.array(m.agent.velocity) + acc * m.dt).tolist()
            m.space.step(m.dt)

    def plan_pushes(self) -> list[tuple[float, np.ndarray, list[np.ndarray]]]:
        """``(predicted error, start point, push actions)`` of each candidate push that brings the block closer to
        the goal (for each contact, direction and speed, the number of steps that ends closest), best first."""
        e = self.env.env
        pos, angle = np.array(e.block.position, dtype=np.float64), float(e.block.angle)
        poly = self._block_polygon(pos, angle)
        import shapely.geometry as sg

        R = rot(angle)
        now = keypoint_error(self._keypoints_at(pos, angle), self.goal_keypoints)
        found = []
        for point, normal in CONTACTS:
            c, n = R @ point + pos, R @ normal
            start = c + n * (PUSHER_RADIUS + GAP)
            if not (WALL_LO <= start[0] <= WALL_HI and WALL_LO <= start[1] <= WALL_HI):
                continue
            if poly.distance(sg.Point(start)) < PUSHER_RADIUS + 0.5:  # no room (inside a corner of the T)
                continue
            for da in ANGLES:
                d = rot(da) @ -n
                for speed in SPEEDS:
                    self._set_model(start, pos, angle)
                    actions, best = [], (now - 0.05, 0)
                    for k in range(PUSH_STEPS):
                        a = np.clip(np.array(self.model.agent.position) + d * speed, WALL_LO, WALL_HI)
                        actions.append(a)
                        self._advance(a)
                        b = self.model.block
                        err = keypoint_error(self._keypoints_at(np.array(b.position), b.angle), self.goal_keypoints)
                        if err < best[0]:
                            best = (err, k + 1)
                    if best[1]:
                        found.append((best[0], start, actions[:best[1]]))
        return sorted(found, key=lambda c: c[0])

    def plan_route(self, start: np.ndarray, goal: np.ndarray, push_dir: np.ndarray) -> list[np.ndarray] | None:
        """Waypoints from ``start`` to ``goal`` (a push's start point, beside the block) keeping the pusher clear of
        the block: a shortest path over a visibility graph of points on a circle around the block and points behind
        ``goal`` along the push; the goal is entered only from behind, along the push. None when there is none."""
        import shapely.geometry as sg

        e = self.env.env
        pos, angle = np.array(e.block.position, dtype=np.float64), float(e.block.angle)
        block = self._block_polygon(pos, angle)
        obstacle = block.buffer(CLEAR)
        centre = np.array(block.centroid.coords[0])
        touching = block.distance(sg.Point(start)) < PUSHER_RADIUS + 2.0
        first = block.buffer(PUSHER_RADIUS - 3.0 if touching else PUSHER_RADIUS + 2.0)  # edges from the pusher
        inside = lambda p: WALL_LO <= p[0] <= WALL_HI and WALL_LO <= p[1] <= WALL_HI  # noqa: E731
        behind = [goal - push_dir * L for L in (30.0, 60.0, 100.0)]
        behind = [p for p in behind if inside(p) and not block.buffer(PUSHER_RADIUS + 2.0).contains(sg.Point(p))]
        ring = [centre + r * np.array([math.cos(t), math.sin(t)]) for r in (110.0, 145.0)
                for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)]
        ring = [p for p in ring if inside(p) and not obstacle.contains(sg.Point(p))]
        nodes = [start, goal] + behind + ring
        n, n_behind = len(nodes), len(behind)

        def clear(i: int, j: int) -> bool:
            seg = sg.LineString([nodes[i], nodes[j]])
            if j == 1 or i == 1:  # into the goal: from behind it (or from the pusher when already there)
                k = i if j == 1 else j
                return (2 <= k < 2 + n_behind and not block.buffer(PUSHER_RADIUS - 3.0).intersects(seg)) or \
                    (k == 0 and float(np.linalg.norm(nodes[0] - goal)) < 5.0)
            if i == 0 or j == 0:
                return not first.intersects(seg)
            if 2 <= i < 2 + n_behind or 2 <= j < 2 + n_behind:
                return not block.buffer(PUSHER_RADIUS + 2.0).intersects(seg)
            return not obstacle.intersects(seg)

        dist = np.full(n, np.inf)
        prev = [-1] * n
        dist[0] = 0.0
        done = np.zeros(n, dtype=bool)
        for _ in range(n):
            i = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[i]) or i == 1:
                break
            done[i] = True
            for j in range(n):
                if not done[j] and clear(i, j):
                    dj = dist[i] + float(np.linalg.norm(nodes[j] - nodes[i]))
                    if dj < dist[j]:
                        dist[j], prev[j] = dj, i
        if not np.isfinite(dist[1]):
            return None
        path, j = [], 1
        while j > 0:
            path.append(nodes[j])
            j = prev[j]
        return path[::-1]

    # --- acting ---------------------------------------------------------------------------------------------

    def act(self, obs: dict) -> np.ndarray:
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        for _ in range(4):
            if self.phase == "plan":
                first = agent
                if self.last_dir is not None:  # back off along the last push before going around
                    first = np.clip(agent - self.last_dir * 20.0, WALL_LO, WALL_HI)
                    self.last_dir = None
                options = []
                for err, start, push in self.plan_pushes()[:12]:
                    direction = (push[0] - start) / max(float(np.linalg.norm(push[0] - start)), 1e-9)
                    route = self.plan_route(first, start, direction)
                    if route is not None:
                        length = sum(float(np.linalg.norm(b - a)) for a, b in zip([first] + route, route))
                        options.append((err + TRAVEL_COST * length, len(options), start, push, direction, route))
                if not options:  # no push helps, or none can be reached: hold still
                    return agent.copy()
                _, _, start, push, direction, route = min(options)
                self.start, self.push, self.push_dir = start, list(push), direction
                self.route = ([first] if first is not agent else []) + route
                self.block_at = self._block_pose()
                self.settle = 0
                self.phase = "go"
            if self.phase == "go" and np.abs(self._block_pose() - self.block_at).max() > 0.5:
                self.phase = "plan"  # the block moved on the way: plan again from where it is
                continue
            if self.phase == "go":
                while len(self.route) > 1 and (np.linalg.norm(self.route[0] - agent) < 12.0 or  # reached or passed
                                               np.linalg.norm(self.route[1] - agent) <
                                               np.linalg.norm(self.route[1] - self.route[0])):
                    self.route.pop(0)
                if len(self.route) > 1:
                    return self._lead(agent, self.route, self._lookahead(agent))
                vel = np.asarray(self.env.env.agent.velocity, dtype=np.float64)
                if (np.linalg.norm(self.start - agent) < 1.5 and np.linalg.norm(vel) < 15.0) or self.settle >= 4:
                    self.phase = "push"
                else:
                    if np.linalg.norm(self.start - agent) < 15.0:
                        self.settle += 1
                    return self.start.copy()
            if self.phase == "push":
                if self.push:
                    return self.push.pop(0)
                self.last_dir = self.push_dir
                self.phase = "plan"
        return agent.copy()

    def _block_pose(self) -> np.ndarray:
        e = self.env.env
        return np.array([*e.block.position, float(e.block.angle) * 50.0])  # px, and rad as px 50 px out

    def _lookahead(self, agent: np.ndarray) -> float:
        """How far ahead the target leads: :data:`LOOKAHEAD` px away from the block, less near it (slower)."""
        import shapely.geometry as sg

        e = self.env.env
        gap = self._block_polygon(np.array(e.block.position), float(e.block.angle)).distance(sg.Point(agent))
        return float(np.clip(1.5 * (gap - PUSHER_RADIUS), 20.0, LOOKAHEAD))

    @staticmethod
    def _lead(agent: np.ndarray, route: list[np.ndarray], lookahead: float = LOOKAHEAD) -> np.ndarray:
        """A target ``lookahead`` px along the route ahead of the pusher (the last waypoint at most)."""
        left, here = lookahead, agent
        for p in route:
            seg = float(np.linalg.norm(p - here))
            if seg >= left and p is not route[-1]:
                return here + (p - here) * (left / seg)
            if p is route[-1]:
                return p.copy() if seg <= left else here + (p - here) * (left / seg)
            left -= seg
            here = p
        return route[-1].copy()
