"""World-frame point clouds from a robosuite sim, from two interchangeable sources.

* ``camera``: depth camera(s) back-projected with robosuite's camera intrinsics/extrinsics (the
  faithful default on a GPU box; needs offscreen rendering).
* ``mesh``: points pre-sampled once on the visual geoms (group 1) and moved by the current geom
  poses every step. No renderer: ~1 ms per cloud on a laptop CPU, which is what makes thousands of
  RL episodes affordable there. Task objects get their own share of the pre-sampled budget because
  area-proportional sampling would give a 4 cm cube only ~30 of 1024 points (the arm dominates).

Both return ``(n_points, 3)`` xyz (or ``(n_points, 6)`` xyz + rgb in [0, 1]) float32 arrays,
cropped to a workspace box and downsampled (random, or farthest-point with numba).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Tuple

import mujoco
import numba
import numpy as np

ROBOT_BODY_PREFIXES = ("robot", "gripper")
# Static scene bodies: never sampled (the mount sits outside the workspace crop, the table top is cropped).
SCENE_BODY_PREFIXES = ("world", "table", "mount", "fixed_mount")


@dataclass
class PointCloudConfig:
    """Mirrors the ``point_cloud`` block of a task yaml."""
    source: str = "mesh"                      # 'mesh' | 'camera'
    n_points: int = 1024
    use_rgb: bool = False
    downsample: str = "random"                # 'random' | 'fps'
    # Workspace crop in world coordinates [[xmin, ymin, zmin], [xmax, ymax, zmax]].
    bounds: Tuple[Tuple[float, float, float], Tuple[float, float, float]] = ((-0.5, -0.5, 0.805), (0.5, 0.5, 1.6))
    # mesh source
    presample_points: int = 8192
    object_fraction: float = 0.2              # share of the pre-sampled points on task objects
    # camera source
    camera_names: List[str] = field(default_factory=lambda: ["agentview", "sideview"])
    camera_size: int = 84

    def __post_init__(self) -> None:
        if self.source not in ("mesh", "camera"):
            raise ValueError(f"point_cloud.source={self.source!r} is not valid; use 'mesh' or 'camera'")
        if self.downsample not in ("random", "fps"):
            raise ValueError(f"point_cloud.downsample={self.downsample!r} is not valid; use 'random' or 'fps'")

    @property
    def point_dim(self) -> int:
        return 6 if self.use_rgb else 3


# ----------------------------------------------------------------------------- crop + downsample
def crop_points(points: np.ndarray, bounds) -> np.ndarray:
    """Keep rows of ``points`` (P, C) whose xyz lie inside the axis-aligned ``bounds``."""
    lo, hi = np.asarray(bounds[0], dtype=np.float32), np.asarray(bounds[1], dtype=np.float32)
    xyz = points[:, :3]
    return points[np.all((xyz >= lo) & (xyz <= hi), axis=1)]


@numba.njit(cache=True)
def _farthest_point_indices(xyz: np.ndarray, n: int, start: int) -> np.ndarray:
    count = xyz.shape[0]
    chosen = np.empty(n, dtype=np.int64)
    dist = np.full(count, np.inf)
    current = start
    for i in range(n):
        chosen[i] = current
        best, best_d = 0, -1.0
        for j in range(count):
            d = 0.0
            for c in range(3):
                diff = xyz[j, c] - xyz[current, c]
                d += diff * diff
            if d < dist[j]:
                dist[j] = d
            if dist[j] > best_d:
                best_d, best = dist[j], j
        current = best
    return chosen


def downsample_points(points: np.ndarray, n: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """(P, C) -> (n, C). With fewer than ``n`` points, sample with replacement so shapes stay fixed."""
    if len(points) == 0:
        raise RuntimeError("point cloud is empty after cropping: check point_cloud.bounds against the scene")
    if len(points) <= n:
        extra = rng.integers(0, len(points), size=n - len(points))
        return np.concatenate([points, points[extra]], axis=0)
    if method == "fps":
        return points[_farthest_point_indices(points[:, :3].astype(np.float64), n, int(rng.integers(len(points))))]
    return points[rng.choice(len(points), size=n, replace=False)]


# ----------------------------------------------------------------------------- mesh source
def _body_name(model: mujoco.MjModel, body_id: int) -> str:
    return mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, body_id) or ""


def _mesh_triangles(model: mujoco.MjModel, geom: int) -> np.ndarray:
    """Triangles (F, 3, 3) of a mesh geom in the geom's local frame (MuJoCo stores them that way)."""
    mesh = model.geom_dataid[geom]
    verts = model.mesh_vert[model.mesh_vertadr[mesh]: model.mesh_vertadr[mesh] + model.mesh_vertnum[mesh]]
    return verts[model.mesh_face[model.mesh_faceadr[mesh]: model.mesh_faceadr[mesh] + model.mesh_facenum[mesh]]]


def _triangle_areas(tri: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _geom_surface_area(model: mujoco.MjModel, geom: int) -> float:
    gtype, size = model.geom_type[geom], model.geom_size[geom]
    if gtype == mujoco.mjtGeom.mjGEOM_MESH:
        return float(_triangle_areas(_mesh_triangles(model, geom)).sum())
    if gtype == mujoco.mjtGeom.mjGEOM_BOX:
        return float(8 * (size[0] * size[1] + size[0] * size[2] + size[1] * size[2]))
    if gtype in (mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_CAPSULE):
        return float(2 * np.pi * size[0] * (2 * size[1]) + 2 * np.pi * size[0] ** 2)
    if gtype == mujoco.mjtGeom.mjGEOM_SPHERE:   # only size[0] (the radius) is set for spheres
        return float(4 * np.pi * size[0] ** 2)
    if gtype == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
        return float(4 * np.pi * np.mean(size) ** 2)
    return 0.0  # planes, height fields: never part of a cropped workspace cloud


def _geom_area_samples(model: mujoco.MjModel, geom: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points (n, 3) uniformly on the surface of ``geom``, in the geom's local frame."""
    gtype, size = model.geom_type[geom], model.geom_size[geom]
    if gtype == mujoco.mjtGeom.mjGEOM_MESH:
        tri = _mesh_triangles(model, geom)
        area = _triangle_areas(tri)
        t = tri[rng.choice(len(tri), size=n, p=area / area.sum())]
        u, v = rng.random((2, n, 1))
        flip = (u + v) > 1                    # fold the parallelogram back onto the triangle
        u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
        return t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])
    if gtype == mujoco.mjtGeom.mjGEOM_BOX:
        pts = rng.uniform(-1, 1, size=(n, 3))
        face_area = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
        axis = rng.choice(3, size=n, p=face_area / face_area.sum())
        pts[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
        return pts * size
    if gtype in (mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_CAPSULE):
        radius, half = size[0], size[1]
        theta = rng.uniform(0, 2 * np.pi, n)
        side = rng.random(n) < (2 * half) / (2 * half + radius)
        r = np.where(side, radius, radius * np.sqrt(rng.random(n)))
        z = np.where(side, rng.uniform(-half, half, n), rng.choice([-half, half], size=n))
        return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)
    d = rng.normal(size=(n, 3))               # sphere / ellipsoid
    return d / np.linalg.norm(d, axis=1, keepdims=True) * (size if gtype == mujoco.mjtGeom.mjGEOM_ELLIPSOID else size[0])


def _geom_rgb(model: mujoco.MjModel, geom: int) -> np.ndarray:
    """(3,) colour in [0, 1]: the material's rgb times the mean colour of its RGB texture, else the geom's rgba.

    Why the texture: robosuite's task objects are textured with a white material (Stack's cubeA
    'redwood', cubeB 'greenwood'); the material alone made both cubes white, so colour could not tell
    them apart (a camera sees the texture)."""
    mat = model.geom_matid[geom]
    if mat < 0:
        return model.geom_rgba[geom][:3].copy()
    rgb = model.mat_rgba[mat][:3].copy()
    tex = model.mat_texid[mat][mujoco.mjtTextureRole.mjTEXROLE_RGB]
    if tex >= 0:
        n, channels = model.tex_width[tex] * model.tex_height[tex], model.tex_nchannel[tex]
        texels = model.tex_data[model.tex_adr[tex]: model.tex_adr[tex] + n * channels].reshape(n, channels)
        rgb *= texels[:, :3].mean(axis=0) / 255.0
    return rgb


class GeomPoses(NamedTuple):
    """World poses of a :class:`MeshPointCloud`'s sampled geoms: ``xpos`` (G, 3), ``xmat`` (G, 3, 3), float32."""
    xpos: np.ndarray
    xmat: np.ndarray


class MeshPointCloud:
    """Pre-sampled surface points on the visual geoms, re-posed from ``data.geom_xpos/xmat`` per call.

    Geoms are split into robot (body names starting with robot/gripper), task objects (every
    other non-scene body: cubes, nuts, pegs, bins) and scene (world, table, robot mount: left out;
    the crop would remove them anyway). Each group gets its share of
    ``presample_points`` area-proportionally within the group.
    """

    def __init__(self, model: mujoco.MjModel, cfg: PointCloudConfig, seed: int = 0):
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        robot, objects = [], []
        for g in range(model.ngeom):
            if model.geom_group[g] != 1 or _geom_surface_area(model, g) == 0.0:
                continue
            body = _body_name(model, model.geom_bodyid[g])
            if body.startswith(ROBOT_BODY_PREFIXES):
                robot.append(g)
            elif not body.startswith(SCENE_BODY_PREFIXES) and model.geom_bodyid[g] != 0:
                objects.append(g)
        n_obj = int(round(cfg.presample_points * cfg.object_fraction)) if objects else 0
        local, geom_ids = [], []
        for geoms, budget in ((robot, cfg.presample_points - n_obj), (objects, n_obj)):
            if not geoms or budget <= 0:
                continue
            area = np.array([_geom_surface_area(model, g) for g in geoms])
            counts = rng.multinomial(budget, area / area.sum())
            for g, c in zip(geoms, counts):
                local.append(_geom_area_samples(model, g, int(c), rng))
                geom_ids.append(np.full(int(c), g))
        self.local_points = np.concatenate(local).astype(np.float32)         # (P, 3)
        self.geom_ids = np.concatenate(geom_ids)                               # (P,)
        # The sampled geoms (G,) and, per point, its geom's row among them (P,).
        self.sampled_geoms, self._geom_row = np.unique(self.geom_ids, return_inverse=True)
        self.rgb = None
        if cfg.use_rgb:
            self.rgb = np.stack([_geom_rgb(model, g) for g in self.sampled_geoms]).astype(np.float32)[self._geom_row]  # (P, 3)
        self.object_geoms = np.array(objects, dtype=np.int64)

    def poses(self, data: mujoco.MjData) -> GeomPoses:
        """Copies of the sampled geoms' world poses: all :meth:`at` needs to build this frame's cloud later.

        Why: a chunked env keeps these (~G * 12 floats) for every step and builds the cloud (~0.6 ms) only
        for the frames the policy reads. float32 as :meth:`at` uses them (the cast commutes with the gather)."""
        return GeomPoses(data.geom_xpos[self.sampled_geoms].astype(np.float32),
                         data.geom_xmat[self.sampled_geoms].astype(np.float32).reshape(-1, 3, 3))

    def at(self, poses: GeomPoses) -> np.ndarray:
        """Unit-cropped world points (P', 3 or 6) of the geoms posed at ``poses``; downsampling is the caller's job."""
        rot = poses.xmat[self._geom_row]                                       # (P, 3, 3)
        xyz = np.einsum("pij,pj->pi", rot, self.local_points) + poses.xpos[self._geom_row]
        points = xyz if self.rgb is None else np.concatenate([xyz, self.rgb], axis=1)
        return crop_points(points, self.cfg.bounds)

    def __call__(self, data: mujoco.MjData) -> np.ndarray:
        """The cloud of the current sim state: :meth:`at` of :meth:`poses`."""
        return self.at(self.poses(data))


class CameraPointCloud:
    """Back-projects robosuite depth observations (``<cam>_depth``, plus ``<cam>_image`` for rgb).

    robosuite returns OpenGL-convention images (rows flipped) with normalized z-buffer depth:
    flip rows, convert with ``get_real_depth_map``, then pixels -> camera frame via the intrinsics
    and -> world via the extrinsics (recomputed every call so moving cameras work).
    """

    def __init__(self, cfg: PointCloudConfig):
        self.cfg = cfg
        size = cfg.camera_size
        v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        self._pixels = np.stack([u.ravel(), v.ravel(), np.ones(size * size)], axis=0).astype(np.float64)  # (3, H*W)
        self._intrinsics_inv = {}

    def __call__(self, sim, obs: dict) -> np.ndarray:
        from robosuite.utils import camera_utils

        size = self.cfg.camera_size
        clouds = []
        for cam in self.cfg.camera_names:
            if cam not in self._intrinsics_inv:
                self._intrinsics_inv[cam] = np.linalg.inv(camera_utils.get_camera_intrinsic_matrix(sim, cam, size, size))
            depth = camera_utils.get_real_depth_map(sim, obs[f"{cam}_depth"][::-1, :, 0])       # (H, W) metres
            rays = self._intrinsics_inv[cam] @ self._pixels                                       # (3, H*W), z = 1
            cam_points = rays * depth.reshape(1, -1)
            extrinsic = camera_utils.get_camera_extrinsic_matrix(sim, cam)                        # camera -> world
            world = (extrinsic[:3, :3] @ cam_points + extrinsic[:3, 3:4]).T.astype(np.float32)
            if self.cfg.use_rgb:
                rgb = obs[f"{cam}_image"][::-1].reshape(-1, 3).astype(np.float32) / 255.0
                world = np.concatenate([world, rgb], axis=1)
            clouds.append(world)
        return crop_points(np.concatenate(clouds, axis=0), self.cfg.bounds)
