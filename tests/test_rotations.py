"""modmimic.rotations: axis-angle / matrix / 6D / Euler XYZ against closed forms, scipy, and round trips."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from modmimic import rotations as R

H = np.pi / 2
RX90 = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
RY90 = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)
RZ90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)


@pytest.mark.parametrize("axis,mat", [(0, RX90), (1, RY90), (2, RZ90)])
def test_quarter_turns_closed_form(axis, mat):
    v = np.zeros(3)
    v[axis] = H
    np.testing.assert_allclose(R.axis_angle_to_matrix(v), mat, atol=1e-15)
    np.testing.assert_allclose(R.matrix_to_axis_angle(mat), v, atol=1e-15)
    np.testing.assert_allclose(R.matrix_to_rot_6d(mat), mat[:2].ravel(), atol=0)  # the first two ROWS
    np.testing.assert_allclose(R.rot_6d_to_matrix(mat[:2].ravel()), mat, atol=1e-15)
    np.testing.assert_allclose(R.rot_6d_to_axis_angle(mat[:2].ravel()), v, atol=1e-15)
    e = np.zeros(3)
    e[axis] = H  # a quarter turn about one axis is that Euler angle alone (about y: the gimbal-lock case)
    np.testing.assert_allclose(R.euler_xyz_to_matrix(e), mat, atol=1e-15)
    np.testing.assert_allclose(R.matrix_to_euler_xyz(mat), e, atol=1e-12)
    np.testing.assert_allclose(R.rot_6d_to_euler_xyz(mat[:2].ravel()), e, atol=1e-12)


def test_identity_and_small_angles():
    I6 = np.array([1.0, 0, 0, 0, 1, 0])
    assert np.array_equal(R.axis_angle_to_matrix(np.zeros(3)), np.eye(3))
    assert np.array_equal(R.matrix_to_axis_angle(np.eye(3)), np.zeros(3))
    assert np.array_equal(R.axis_angle_to_rot_6d(np.zeros(3)), I6)
    assert np.array_equal(R.rot_6d_to_axis_angle(I6), np.zeros(3))
    assert np.array_equal(R.rot_6d_to_euler_xyz(I6), np.zeros(3))
    for t in (1e-12, 1e-8, 1e-5, 1e-4, 2e-4):  # both sides of the series switch
        v = t * np.array([2.0, -1.0, 2.0]) / 3.0
        x, y, z = v
        # first order: R = I + skew(v) + skew(v)^2 / 2 (+ O(t^3))
        K = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
        np.testing.assert_allclose(R.axis_angle_to_matrix(v), np.eye(3) + K + K @ K / 2, rtol=0, atol=t ** 3)
        np.testing.assert_allclose(R.matrix_to_axis_angle(R.axis_angle_to_matrix(v)), v, rtol=1e-9, atol=1e-20)


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-8, 1e-4])
def test_pi_boundary(eps):
    """Angles at and just below pi: the rotation survives the round trip, the angle stays in [0, pi], and below pi
    the axis keeps its sign (at pi exactly, -axis is the same rotation)."""
    axis = np.array([1.0, 2.0, -3.0]) / np.sqrt(14)
    v = (np.pi - eps) * axis
    M = R.axis_angle_to_matrix(v)
    np.testing.assert_allclose(M, Rotation.from_rotvec(v).as_matrix(), atol=1e-15)
    back = R.matrix_to_axis_angle(M)
    assert np.linalg.norm(back) <= np.pi + 1e-12
    np.testing.assert_allclose(R.axis_angle_to_matrix(back), M, atol=1e-14)
    if eps == 0:
        assert np.allclose(back, v, atol=1e-7) or np.allclose(back, -v, atol=1e-7)
    else:
        np.testing.assert_allclose(back, v, atol=1e-7)
    # half turns about the coordinate axes: diag(1, -1, -1) etc.
    for i in range(3):
        D = -np.eye(3)
        D[i, i] = 1
        np.testing.assert_allclose(np.abs(R.matrix_to_axis_angle(D)), np.pi * np.eye(3)[i], atol=1e-15)


unit = arrays(np.float64, 3, elements=st.floats(-1, 1)).filter(lambda a: np.linalg.norm(a) > 1e-3)
angle = st.floats(0.0, np.pi - 1e-6)


@settings(max_examples=200, deadline=None)
@given(unit, angle)
def test_axis_angle_matrix_round_trip(u, t):
    v = u / np.linalg.norm(u) * t
    M = R.axis_angle_to_matrix(v)
    np.testing.assert_allclose(M, Rotation.from_rotvec(v).as_matrix(), atol=1e-14)
    np.testing.assert_allclose(R.matrix_to_axis_angle(M), v, atol=1e-9)
    np.testing.assert_allclose(R.rot_6d_to_axis_angle(R.axis_angle_to_rot_6d(v)), v, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, 4, elements=st.floats(-1, 1)).filter(lambda q: np.linalg.norm(q) > 1e-2))
@example(q=np.array([1.0, 2.0551725e-09, 1.0, 0.0]))  # cos b = 2e-9: found by CI, 2e-9 off at the old threshold
def test_matrix_6d_euler_round_trips(q):
    M = Rotation.from_quat(q).as_matrix()
    np.testing.assert_allclose(R.rot_6d_to_matrix(R.matrix_to_rot_6d(M)), M, atol=1e-14)
    e = R.matrix_to_euler_xyz(M)
    near_lock = abs(M[0, 2]) >= 1 - 1e-6  # cos b < 1.5e-3: a and c are ill-conditioned (error ~1e-16 / cos b)
    np.testing.assert_allclose(R.euler_xyz_to_matrix(e), M, atol=1e-7 if near_lock else 1e-9)
    if not near_lock:  # away from gimbal lock the angles are unique: scipy's intrinsic 'XYZ'
        d = e - Rotation.from_matrix(M).as_euler("XYZ")
        np.testing.assert_allclose(np.angle(np.exp(1j * d)), 0, atol=1e-9)  # equal modulo 2 pi (+-pi)


@settings(max_examples=200, deadline=None)
@given(unit, angle, arrays(np.float64, 6, elements=st.floats(-0.3, 0.3)), st.floats(0.2, 5.0))
def test_perturbed_6d_projects_to_a_rotation(u, t, noise, scale):
    """A network's 6D output is never exactly two orthonormal rows: the projection is still a rotation
    (orthonormal, det 1), keeps the first row's direction, and is idempotent."""
    d6 = scale * (R.axis_angle_to_rot_6d(u / np.linalg.norm(u) * t) + noise)
    M = R.rot_6d_to_matrix(d6)
    np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(M) - 1) < 1e-12
    np.testing.assert_allclose(M[0], d6[:3] / np.linalg.norm(d6[:3]), atol=1e-12)
    np.testing.assert_allclose(R.rot_6d_to_matrix(R.matrix_to_rot_6d(M)), M, atol=1e-12)


def test_degenerate_6d_is_still_a_rotation():
    for d6 in (np.zeros(6), [1, 0, 0, 2, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 3, 0, 0, -1]):
        M = R.rot_6d_to_matrix(np.asarray(d6, float))
        np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-15)
        assert abs(np.linalg.det(M) - 1) < 1e-15


def test_batches_and_convert_rot_6d():
    """Leading batch dims; convert_rot_6d maps [..., 6k] to [..., 3k] (k rotations side by side)."""
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, (4, 5, 2, 3))
    d6 = R.axis_angle_to_rot_6d(v)
    assert d6.shape == (4, 5, 2, 6)
    flat = d6.reshape(4, 5, 12)
    np.testing.assert_allclose(R.convert_rot_6d(flat), v.reshape(4, 5, 6), atol=1e-12)
    eul = R.convert_rot_6d(flat, "rot_euler")
    want = Rotation.from_rotvec(v.reshape(-1, 3)).as_euler("XYZ").reshape(4, 5, 6)
    np.testing.assert_allclose(eul, want, atol=1e-12)
    with pytest.raises(ValueError, match="multiple of 6"):
        R.convert_rot_6d(np.zeros((2, 7)))
