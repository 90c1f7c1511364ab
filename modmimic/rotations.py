"""Rotation conversions for action dictionaries (robomimic 0.5's ``rot_6d`` actions), as small numpy functions.

Conventions (robomimic's, which are pytorch3d's):

* axis-angle: a 3-vector ``angle * unit_axis``; :func:`matrix_to_axis_angle` returns angles in ``[0, pi]``.
* matrices act on column vectors: ``R @ v`` rotates ``v``.
* 6D (Zhou et al. 2019, pytorch3d's layout): the first two ROWS of the matrix, ``R[..., :2, :]`` flattened to
  ``[r00, r01, r02, r10, r11, r12]``; back to a matrix by Gram-Schmidt on the two rows, third row their cross product.
* Euler "XYZ": intrinsic, ``R = Rx(a) @ Ry(b) @ Rz(c)`` for angles ``(a, b, c)``; ``b`` in ``[-pi/2, pi/2]``.

Every function takes any leading batch shape and computes in float64.
"""
from __future__ import annotations

import numpy as np

SMALL_ANGLE = 1e-4  # below this, Taylor series replace sin(t)/t and (1 - cos t)/t^2


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def skew(v) -> np.ndarray:
    """``[..., 3] -> [..., 3, 3]``: the matrix ``K`` with ``K @ u == cross(v, u)``."""
    v = _f64(v)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = np.zeros_like(x)
    return np.stack([np.stack([o, -z, y], -1), np.stack([z, o, -x], -1), np.stack([-y, x, o], -1)], -2)


def axis_angle_to_matrix(v) -> np.ndarray:
    """``[..., 3] -> [..., 3, 3]``, Rodrigues: ``I + sin(t)/t K + (1 - cos t)/t^2 K^2`` with ``t = |v|``,
    ``K = skew(v)``."""
    v = _f64(v)
    t = np.linalg.norm(v, axis=-1)[..., None, None]
    small = t < SMALL_ANGLE
    ts = np.where(small, 1.0, t)
    a = np.where(small, 1.0 - t ** 2 / 6.0, np.sin(ts) / ts)
    b = np.where(small, 0.5 - t ** 2 / 24.0, 2.0 * np.sin(ts / 2.0) ** 2 / ts ** 2)
    K = skew(v)
    return np.eye(3) + a * K + b * (K @ K)


def matrix_to_axis_angle(R) -> np.ndarray:
    """``[..., 3, 3] -> [..., 3]``, angle in ``[0, pi]``. The angle is ``atan2(|w|, (tr R - 1) / 2)`` with
    ``w = vee(R - R^T) / 2 = sin(t) axis``. For ``cos t >= 0`` the axis is ``w / sin t``; otherwise (up to and at
    ``t = pi``, where ``w`` vanishes) it comes from the symmetric part ``(R + R^T)/2 - cos(t) I = (1 - cos t) a a^T``
    (its largest diagonal entry's column), signed to agree with ``w``."""
    R = _f64(R)
    w = 0.5 * np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    c = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    s = np.linalg.norm(w, axis=-1)
    t = np.arctan2(s, c)
    # cos t >= 0: t / sin t, a series near t = 0
    ss = np.where(s < SMALL_ANGLE, 1.0, s)
    factor = np.where(s < SMALL_ANGLE, 1.0 + t ** 2 / 6.0, t / ss)
    near = w * factor[..., None]
    # cos t < 0: the symmetric part's dominant column
    B = 0.5 * (R + np.swapaxes(R, -1, -2)) - c[..., None, None] * np.eye(3)
    diag = np.diagonal(B, axis1=-2, axis2=-1)
    j = np.argmax(diag, axis=-1)
    col = np.take_along_axis(B, j[..., None, None], axis=-1)[..., 0]
    djj = np.take_along_axis(diag, j[..., None], axis=-1)
    axis = col / np.sqrt(np.maximum(djj * (1.0 - c[..., None]), 1e-300))
    sign = np.where(np.sum(axis * w, axis=-1) < 0, -1.0, 1.0)
    far = axis * (sign * t)[..., None]
    return np.where((c >= 0)[..., None], near, far)


def matrix_to_rot_6d(R) -> np.ndarray:
    """``[..., 3, 3] -> [..., 6]``: the first two rows."""
    R = _f64(R)
    return R[..., :2, :].reshape(R.shape[:-2] + (6,))


def _unit(v, fallback) -> tuple[np.ndarray, np.ndarray]:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    bad = n < 1e-12
    return np.where(bad, fallback, v / np.where(bad, 1.0, n)), bad


def rot_6d_to_matrix(d6) -> np.ndarray:
    """``[..., 6] -> [..., 3, 3]``: rows ``b1 = a1 / |a1|``, ``b2`` = ``a2`` minus its ``b1`` part, normalized,
    ``b3 = b1 x b2`` — always a rotation. Degenerate input (``a1 = 0``, or ``a2`` parallel to ``a1``), where
    pytorch3d returns a singular matrix, takes ``b1 = e_x`` / any unit ``b2`` orthogonal to ``b1``."""
    d6 = _f64(d6)
    a1, a2 = d6[..., :3], d6[..., 3:6]
    b1, _ = _unit(a1, np.array([1.0, 0.0, 0.0]))
    b2, bad = _unit(a2 - np.sum(b1 * a2, -1, keepdims=True) * b1, 0.0)
    # fallback: the coordinate axis least aligned with b1, made orthogonal to it
    e = np.eye(3)[np.argmin(np.abs(b1), axis=-1)]
    alt, _ = _unit(e - np.sum(b1 * e, -1, keepdims=True) * b1, 0.0)
    b2 = np.where(bad, alt, b2)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], -2)


def euler_xyz_to_matrix(e) -> np.ndarray:
    """``[..., 3] -> [..., 3, 3]``: ``Rx(a) @ Ry(b) @ Rz(c)``."""
    e = _f64(e)
    ca, cb, cc = np.cos(e[..., 0]), np.cos(e[..., 1]), np.cos(e[..., 2])
    sa, sb, sc = np.sin(e[..., 0]), np.sin(e[..., 1]), np.sin(e[..., 2])
    return np.stack([
        np.stack([cb * cc, -cb * sc, sb], -1),
        np.stack([ca * sc + sa * sb * cc, ca * cc - sa * sb * sc, -sa * cb], -1),
        np.stack([sa * sc - ca * sb * cc, sa * cc + ca * sb * sc, ca * cb], -1)], -2)


def matrix_to_euler_xyz(R) -> np.ndarray:
    """``[..., 3, 3] -> [..., 3]``: ``(a, b, c)`` with ``R = Rx(a) Ry(b) Rz(c)``, ``b = asin(R[0, 2])``,
    ``a = atan2(-R[1, 2], R[2, 2])``, ``c = atan2(-R[0, 1], R[0, 0])``. In gimbal lock (``cos b < 1e-8``) ``c = 0``
    and ``a = atan2(R[2, 1], R[1, 1])``. Near the lock ``a`` and ``c`` come from entries of size ``cos b``, so a
    matrix's rounding errors (~1e-16) move them by ~1e-16 / cos b; the threshold near sqrt(eps) bounds the round trip's
    error at ~2e-8 (at 1e-9 it reached 8e-8)."""
    R = _f64(R)
    sb = np.clip(R[..., 0, 2], -1.0, 1.0)
    cb = np.hypot(R[..., 0, 0], R[..., 0, 1])
    b = np.arctan2(sb, cb)
    lock = cb < 1e-8
    a = np.where(lock, np.arctan2(R[..., 2, 1], R[..., 1, 1]), np.arctan2(-R[..., 1, 2], R[..., 2, 2]))
    c = np.where(lock, 0.0, np.arctan2(-R[..., 0, 1], R[..., 0, 0]))
    return np.stack([a, b, c], -1)


def axis_angle_to_rot_6d(v) -> np.ndarray:
    return matrix_to_rot_6d(axis_angle_to_matrix(v))


def rot_6d_to_axis_angle(d6) -> np.ndarray:
    return matrix_to_axis_angle(rot_6d_to_matrix(d6))


def rot_6d_to_euler_xyz(d6) -> np.ndarray:
    return matrix_to_euler_xyz(rot_6d_to_matrix(d6))


# robomimic's train.action_config.<key>.convert_at_runtime values for format rot_6d
RUNTIME_CONVERSIONS = {"rot_axis_angle": rot_6d_to_axis_angle, "rot_euler": rot_6d_to_euler_xyz}


def convert_rot_6d(x, to: str = "rot_axis_angle") -> np.ndarray:
    """``[..., 6k] -> [..., 3k]``: each consecutive 6-D rotation converted to axis-angle or Euler XYZ."""
    x = _f64(x)
    if x.shape[-1] % 6:
        raise ValueError(f"a rot_6d part has {x.shape[-1]} dims; expected a multiple of 6")
    k = x.shape[-1] // 6
    out = RUNTIME_CONVERSIONS[to](x.reshape(x.shape[:-1] + (k, 6)))
    return out.reshape(x.shape[:-1] + (3 * k,))
