"""Rotation conversions of the action space, and the point-cloud crop / downsample / mesh-sampling steps.

References are independent of the code under test: rotations are built with Rodrigues' formula
written out here, crops and farthest-point picks are checked against hand-made point sets, and
mesh samples against the analytic surfaces of a tiny MuJoCo model (no robosuite).
"""
import mujoco
import numpy as np
import pytest
import torch

from equi_diffpo.env.point_cloud import MeshPointCloud, PointCloudConfig, crop_points, downsample_points
from equi_diffpo.env.rotation import env_action_to_policy_action, policy_action_to_env_action

torch.set_num_threads(1)


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3, 3) rotation matrix, written out (the reference for scipy's use)."""
    angle = np.linalg.norm(rotvec)
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def random_rotvecs(rng: np.random.Generator, n: int, angles: np.ndarray) -> np.ndarray:
    axes = rng.normal(size=(n, 3))
    return axes / np.linalg.norm(axes, axis=1, keepdims=True) * angles[:, None]


# ----------------------------------------------------------------------------- rotations
def test_known_rot6d_values():
    quarter_turn_z = np.array([0.1, 0.2, 0.3, 0, 0, np.pi / 2, 0.5])
    identity = np.array([0.1, 0.2, 0.3, 0, 0, 0, -1.0])
    out = env_action_to_policy_action(np.stack([quarter_turn_z, identity]))
    # rot6d = first two columns of R: Rz(90) has columns (0,1,0) and (-1,0,0).
    np.testing.assert_allclose(out[0], [0.1, 0.2, 0.3, 0, 1, 0, -1, 0, 0, 0.5], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.1, 0.2, 0.3, 1, 0, 0, 0, 1, 0, -1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_env_policy_env_round_trip_including_angles_near_pi():
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(0, np.pi, 40), [np.pi, np.pi - 1e-6, np.pi - 1e-3, 1e-7, 0.0]])
    rotvecs = random_rotvecs(rng, len(angles), angles)
    rotvecs[-3] = [np.pi, 0, 0]  # top-down grasp orientation, exactly at the axis-angle flip
    actions = np.concatenate([rng.normal(size=(len(angles), 3)), rotvecs, rng.uniform(-1, 1, (len(angles), 1))], axis=1)

    back = policy_action_to_env_action(env_action_to_policy_action(actions))

    np.testing.assert_allclose(back[:, :3], actions[:, :3], atol=1e-6)
    np.testing.assert_allclose(back[:, 6], actions[:, 6], atol=1e-6)
    for original, recovered in zip(actions[:, 3:6], back[:, 3:6]):
        # Near pi the axis may come back negated (same rotation), so compare matrices.
        np.testing.assert_allclose(rodrigues(recovered), rodrigues(original), atol=1e-5)
        assert np.linalg.norm(recovered) <= np.pi + 1e-6


def test_rot6d_is_continuous_across_the_axis_angle_flip():
    """R(v) at |v| = pi - eps and R(-v') just past it are close rotations; their rot6d must be close
    too, although the axis-angle vectors are ~2 pi apart (the reason the policy predicts rot6d)."""
    axis = np.array([0.6, 0.0, 0.8])
    a = np.concatenate([np.zeros(3), axis * (np.pi - 1e-3), [0.0]])
    b = np.concatenate([np.zeros(3), -axis * (np.pi - 1e-3), [0.0]])
    assert np.linalg.norm(a[3:6] - b[3:6]) > 6.0
    pa, pb = env_action_to_policy_action(np.stack([a, b]))
    assert np.abs(pa - pb).max() < 5e-3


def test_policy_env_policy_orthonormalizes_rot6d_and_clips_gripper():
    rng = np.random.default_rng(1)
    policy = rng.normal(size=(2, 5, 10))        # unnormalized network outputs, batch x time
    policy[..., 9] = rng.uniform(-3, 3, size=(2, 5))

    env = policy_action_to_env_action(policy)
    assert env.shape == (2, 5, 7)
    np.testing.assert_allclose(env[..., :3], policy[..., :3], atol=1e-6)
    np.testing.assert_allclose(env[..., 6], np.clip(policy[..., 9], -1, 1))

    again = env_action_to_policy_action(env)
    assert again.shape == (2, 5, 10)
    a1, a2 = policy[..., 3:6], policy[..., 6:9]
    b1, b2 = again[..., 3:6], again[..., 6:9]
    # Gram-Schmidt: first column is a1's direction; second is unit, orthogonal to it, in span(a1, a2), facing a2.
    np.testing.assert_allclose(b1, a1 / np.linalg.norm(a1, axis=-1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(b2, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose((b1 * b2).sum(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose((np.cross(a1, a2) * b2).sum(-1), 0.0, atol=1e-4)
    assert np.all((a2 * b2).sum(-1) > 0)
    # A second pass is a fixed point.
    np.testing.assert_allclose(env_action_to_policy_action(policy_action_to_env_action(again)), again, atol=1e-5)


# ----------------------------------------------------------------------------- crop
def test_crop_points_keeps_inside_and_boundary_rows_with_their_colors():
    bounds = ((-1.0, -1.0, 0.0), (1.0, 1.0, 2.0))
    points = np.array([
        [0.0, 0.0, 1.0, 0.1, 0.2, 0.3],    # inside
        [1.0, -1.0, 0.0, 0.4, 0.5, 0.6],   # on the boundary: kept
        [1.01, 0.0, 1.0, 0, 0, 0],         # x too large
        [0.0, -1.5, 1.0, 0, 0, 0],         # y too small
        [0.0, 0.0, -0.01, 0, 0, 0],        # below the table
        [0.5, 0.5, 2.5, 0, 0, 0],          # too high
    ], dtype=np.float32)
    out = crop_points(points, bounds)
    np.testing.assert_array_equal(out, points[:2])
    assert crop_points(points[2:], bounds).shape == (0, 6)


# ----------------------------------------------------------------------------- downsample
def test_random_downsample_keeps_shape_and_picks_distinct_input_rows():
    rng = np.random.default_rng(0)
    points = np.concatenate([np.arange(100)[:, None] * np.ones((1, 3)), rng.random((100, 3))], axis=1).astype(np.float32)
    out = downsample_points(points, 10, "random", rng)
    assert out.shape == (10, 6)
    ids = out[:, 0].astype(int)
    assert len(set(ids.tolist())) == 10
    np.testing.assert_array_equal(out, points[ids])


@pytest.mark.parametrize("method", ["random", "fps"])
def test_fewer_points_than_requested_are_padded_by_repeats(method):
    points = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = downsample_points(points, 8, method, np.random.default_rng(0))
    assert out.shape == (8, 3)
    np.testing.assert_array_equal(out[:5], points)          # every real point kept
    assert all(any(np.array_equal(row, p) for p in points) for row in out[5:])


def test_empty_cloud_is_an_error_that_points_at_the_bounds():
    with pytest.raises(RuntimeError, match="bounds"):
        downsample_points(np.zeros((0, 3), np.float32), 4, "random", np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(5))
def test_farthest_point_sampling_picks_the_cube_corners(seed):
    """8 corners of [-1, 1]^3 and 200 points in a 0.1 ball at the centre: any corner is >= 1.6
    from every chosen point until all corners are chosen, so FPS with 9 picks takes all 8, whatever
    its random start."""
    rng = np.random.default_rng(seed)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float32)
    blob = rng.normal(size=(200, 3))
    blob = (blob / np.linalg.norm(blob, axis=1, keepdims=True) * rng.uniform(0, 0.1, (200, 1))).astype(np.float32)
    points = np.concatenate([blob[:100], corners, blob[100:]])
    out = downsample_points(points, 9, "fps", rng)
    assert out.shape == (9, 3)
    for corner in corners:
        assert np.any(np.all(out == corner, axis=1)), f"corner {corner} not picked"


def test_farthest_point_sampling_covers_a_clustered_cloud_better_than_random():
    rng = np.random.default_rng(0)
    dense = rng.normal(scale=0.02, size=(1900, 3))            # 95% of the points in one small blob
    sparse = rng.uniform(-1, 1, size=(100, 3))
    points = np.concatenate([dense, sparse]).astype(np.float32)

    def coverage_radius(chosen):
        """Largest distance from any input point to its nearest chosen point."""
        d = np.linalg.norm(points[:, None, :] - chosen[None, :, :], axis=-1)
        return d.min(axis=1).max()

    fps = downsample_points(points, 64, "fps", np.random.default_rng(1))
    rand = downsample_points(points, 64, "random", np.random.default_rng(1))
    assert fps.shape == (64, 3)
    assert len(np.unique(fps, axis=0)) == 64
    assert coverage_radius(fps) < 0.5 * coverage_radius(rand)
    # Few picks are spent in the blob.
    assert np.sum(np.linalg.norm(fps, axis=1) < 0.1) <= 3


def test_point_cloud_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="source"):
        PointCloudConfig(source="lidar")
    with pytest.raises(ValueError, match="downsample"):
        PointCloudConfig(downsample="grid")
    assert PointCloudConfig(use_rgb=True).point_dim == 6


# ----------------------------------------------------------------------------- mesh source
SCENE_XML = """
<mujoco>
  <worldbody>
    <body name="table" pos="0 0 0.4"><geom type="box" size="0.5 0.5 0.4" group="1"/></body>
    <body name="box" pos="0.1 0.2 1.0">
      <freejoint name="box_joint"/>
      <geom type="box" size="0.05 0.03 0.02" group="1" rgba="1 0 0 1"/>
      <geom type="box" size="0.05 0.03 0.02" group="0"/>
    </body>
    <body name="ball" pos="-0.2 0 1.0"><geom type="sphere" size="0.04" group="1" rgba="0 0 1 1"/></body>
  </worldbody>
</mujoco>
"""


def test_mesh_points_lie_on_the_geom_surfaces_and_follow_the_body():
    model = mujoco.MjModel.from_xml_string(SCENE_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    cfg = PointCloudConfig(presample_points=2000, object_fraction=0.5, use_rgb=True, bounds=((-1, -1, 0.805), (1, 1, 2)))
    cloud = MeshPointCloud(model, cfg, seed=0)
    # Only the task objects' visual geoms (group 1) are sampled: the table body and group-0 collision geom are not.
    assert len(cloud.local_points) == 1000

    def on_box(points, center, rot, half):
        local = (points - center) @ rot
        return np.isclose(np.max(np.abs(local) / half, axis=1), 1.0, atol=1e-4)

    half = np.array([0.05, 0.03, 0.02])
    points = cloud(data)
    red, blue = points[:, 3] == 1.0, points[:, 5] == 1.0
    assert red.sum() + blue.sum() == len(points) and red.sum() > 100 and blue.sum() > 100
    assert np.all(on_box(points[red, :3], np.array([0.1, 0.2, 1.0]), np.eye(3), half))
    np.testing.assert_allclose(np.linalg.norm(points[blue, :3] - [-0.2, 0, 1.0], axis=1), 0.04, atol=1e-5)

    # Move and turn the box 90 deg about z: its points must follow, its x half-extent now along y.
    data.qpos[:7] = [0.3, -0.1, 1.2, np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]
    mujoco.mj_forward(model, data)
    moved = cloud(data)
    rot_z90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    red = moved[:, 3] == 1.0
    assert np.all(on_box(moved[red, :3], np.array([0.3, -0.1, 1.2]), rot_z90, half))
    np.testing.assert_allclose(np.ptp(moved[red, :3], axis=0), [0.06, 0.10, 0.04], atol=2e-3)


TEXTURED_XML = """
<mujoco>
  <asset>
    <texture name="red_wood" type="2d" builtin="flat" rgb1="0.8 0.2 0.2" width="8" height="8"/>
    <material name="red_wood_mat" texture="red_wood" rgba="1 1 1 1"/>
    <material name="half_grey" rgba="0.5 0.5 0.5 1"/>
  </asset>
  <worldbody>
    <body name="cube" pos="0 0 1.0"><geom type="box" size="0.02 0.02 0.02" group="1" material="red_wood_mat"/></body>
    <body name="plain" pos="0.2 0 1.0"><geom type="box" size="0.02 0.02 0.02" group="1" material="half_grey"/></body>
  </worldbody>
</mujoco>
"""


def test_textured_objects_get_their_texture_colour():
    """robosuite's cubes are textured with a white material: their points must carry the texture's colour
    (Stack's cubeA is red wood, cubeB green wood; white for both left only their size to tell them apart)."""
    model = mujoco.MjModel.from_xml_string(TEXTURED_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    points = MeshPointCloud(model, PointCloudConfig(presample_points=400, object_fraction=1.0, use_rgb=True,
                                                    bounds=((-1, -1, 0.805), (1, 1, 2))), seed=0)(data)
    on_cube = points[:, 0] < 0.1
    np.testing.assert_allclose(points[on_cube, 3:], np.tile([0.8, 0.2, 0.2], (on_cube.sum(), 1)), atol=1 / 255)
    np.testing.assert_allclose(points[~on_cube, 3:], 0.5)
