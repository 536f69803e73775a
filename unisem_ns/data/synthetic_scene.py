"""Deterministic procedural indoor scene with exact ground truth.

A closed room (floor, four walls, ceiling) is furnished with objects built from analytic
primitives (boxes, vertical cylinders, ellipsoids; every primitive may be rotated about the
vertical axis). Views are rendered by exact, vectorised numpy ray casting, so RGB, z-depth,
semantic class and instance id are exact per pixel centre and consistent across views.

Conventions:
    * World: Y up, floor at ``y = 0``, ceiling at ``y = H``; the room spans
      ``x in [-Lx/2, Lx/2]`` and ``z in [-Lz/2, Lz/2]``. Units are metres.
    * Cameras: OpenGL / Nerfstudio camera-to-world matrices (camera looks down its -z axis,
      +y up, +x right). The ray of pixel ``(u, v)`` has camera-space direction
      ``((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -1)``.
    * Depth: camera-space z-depth (distance along the optical axis), not ray length.
    * Labels: class id ``0`` is ``"void"`` (never produced inside the closed room); instance ids
      are global to the scene (1 = floor, 2 = ceiling, 3..6 = walls, objects from 7 on).

The on-disk layout written by :func:`generate_scene` is Nerfstudio's ``transforms.json`` layout
extended with ``gt/`` label maps, a seed point cloud and ``scene.json`` (the full primitive list).
Only numpy is needed to build and render; Pillow is imported lazily to write PNGs.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "CLASS_IDS",
    "OBJECT_CLASSES",
    "ROOM_CLASSES",
    "FLOOR_INSTANCE",
    "CEILING_INSTANCE",
    "WALL_INSTANCES",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "Texture",
    "Primitive",
    "Instance",
    "Room",
    "Intrinsics",
    "build_room",
    "camera_intrinsics",
    "look_at",
    "make_cameras",
    "render_view",
    "generate_scene",
    "write_ply",
    "read_ply",
]

GENERATOR_NAME = "unisem_ns.data.synthetic_scene"
# Bump whenever the rendered output for a given seed changes (default_scene keys its cache on it).
GENERATOR_VERSION = "1"

ROOM_CLASSES: list[str] = ["wall", "floor", "ceiling"]
OBJECT_CLASSES: list[str] = [
    "chair", "table", "sofa", "bed", "lamp", "cabinet", "shelf",
    "plant", "tv", "rug", "box", "door", "picture", "window",
]
CLASS_NAMES: list[str] = ["void", *ROOM_CLASSES, *OBJECT_CLASSES]
"""Semantic vocabulary; index = class id, ``CLASS_NAMES[0] == "void"``."""
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

FLOOR_INSTANCE = 1
CEILING_INSTANCE = 2
WALL_INSTANCES: dict[str, int] = {"north": 3, "south": 4, "west": 5, "east": 6}
_FIRST_OBJECT_INSTANCE = 7

# Directional lights (unit vector towards the light, intensity) + ambient. The maximum possible
# shading factor is < 1 and albedo is capped at 0.92, so nothing saturates.
AMBIENT = 0.5
LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.3179, 0.9083, 0.2725), 0.42),  # key light from above
    ((-0.5481, -0.3488, -0.7474), 0.2),  # weak fill from below, lights the ceiling a little
)

_EPS_T = 1e-6  # minimum ray parameter counted as a hit
_WALL_T = 0.1  # thickness of the wall / floor / ceiling slabs (outside the room)
_CHUNK_ELEMS = 1_500_000  # rays x primitives per vectorised batch (bounds memory)

_T = TypeVar("_T")
Vec3 = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texture:
    """Procedural solid texture, evaluated at hit points in the instance's local frame.

    The albedo is ``primitive.color * lerp(1, tint, s(p)) * (1 + grain * (2 n(p) - 1))`` where
    ``s`` in [0, 1] is the pattern and ``n`` a fine value noise.
    """

    pattern: str  # stripes | checker | noise | plaid | planks | tiles | panels | wallpaper | plaster
    period: float  # metres
    axis: Vec3  # stripe / plank direction in the instance frame (unit vector)
    tint: Vec3  # RGB multiplier where the pattern is "on"
    offset: Vec3  # phase shift of pattern and noise (metres), decorrelates instances
    grain: float  # amplitude of the fine noise modulation


@dataclass(frozen=True)
class Primitive:
    """One analytic solid.

    ``size`` is the half extents for ``"box"``, ``(radius, half_height, radius)`` for
    ``"cylinder"`` (axis = world Y) and the three radii for ``"ellipsoid"``; all in the
    primitive's frame, which is rotated by ``yaw`` (radians) about +Y around ``center``.
    """

    kind: str
    center: Vec3
    size: Vec3
    yaw: float
    instance_id: int
    color: Vec3


@dataclass(frozen=True)
class Instance:
    """A labelled object (or room surface) made of one or more primitives.

    ``anchor``/``yaw`` define the object frame (origin at the floor centre of its footprint,
    local +z = front); textures are evaluated in that frame so they stick to the object.
    ``footprint`` is the (half x, half z) extent of the floor footprint in the object frame, or
    None for room surfaces and wall-mounted items. ``wall`` names the wall it is attached to.
    """

    instance_id: int
    class_name: str
    anchor: Vec3
    yaw: float
    texture: Texture
    footprint: tuple[float, float] | None = None
    wall: str | None = None

    @property
    def class_id(self) -> int:
        return CLASS_IDS[self.class_name]


@dataclass
class Room:
    """The whole primitive scene. Deterministic given ``seed`` (see :func:`build_room`)."""

    seed: int
    size: Vec3  # (Lx, H, Lz) in metres
    instances: list[Instance]
    primitives: list[Primitive]

    # ---- geometry helpers -----------------------------------------------------------------
    @property
    def bounds_min(self) -> np.ndarray:
        """[3] inner room corner (x, y, z) minimum."""
        lx, _, lz = self.size
        return np.array([-lx / 2, 0.0, -lz / 2])

    @property
    def bounds_max(self) -> np.ndarray:
        """[3] inner room corner (x, y, z) maximum."""
        lx, h, lz = self.size
        return np.array([lx / 2, h, lz / 2])

    def instance(self, instance_id: int) -> Instance:
        return self._instance_map[instance_id]

    @cached_property
    def _instance_map(self) -> dict[int, Instance]:
        return {inst.instance_id: inst for inst in self.instances}

    def instance_bounds(self, instance_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world bounds ([3], [3]) of an instance's primitives (conservative)."""
        lo, hi = self._instance_aabbs[instance_id]
        return lo.copy(), hi.copy()

    @cached_property
    def _instance_aabbs(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for prim in self.primitives:
            lo, hi = _primitive_aabb(prim)
            if prim.instance_id in out:
                plo, phi = out[prim.instance_id]
                lo, hi = np.minimum(lo, plo), np.maximum(hi, phi)
            out[prim.instance_id] = (lo, hi)
        return out

    def is_free(self, x: float, z: float, margin: float = 0.3, ignore: Sequence[str] = ("rug",)) -> bool:
        """True if floor point (x, z) is at least ``margin`` from every wall and outside every
        object footprint (inflated by ``margin``); classes in ``ignore`` do not block."""
        lx, _, lz = self.size
        if abs(x) > lx / 2 - margin or abs(z) > lz / 2 - margin:
            return False
        for inst in self.instances:
            if inst.footprint is None or inst.class_name in ignore:
                continue
            c, s = math.cos(inst.yaw), math.sin(inst.yaw)
            dx, dz = x - inst.anchor[0], z - inst.anchor[2]
            lxl, lzl = c * dx - s * dz, s * dx + c * dz  # world -> object frame
            if abs(lxl) <= inst.footprint[0] + margin and abs(lzl) <= inst.footprint[1] + margin:
                return False
        return True

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "size": list(self.size),
            "instances": [asdict(i) for i in self.instances],
            "primitives": [asdict(p) for p in self.primitives],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Room":
        """Inverse of :meth:`to_dict` (e.g. ``Room.from_dict(json.load(scene.json)["room"])``)."""

        def t3(v: Sequence[float]) -> Vec3:
            return (float(v[0]), float(v[1]), float(v[2]))

        instances = []
        for i in d["instances"]:
            tex = i["texture"]
            instances.append(
                Instance(
                    instance_id=int(i["instance_id"]),
                    class_name=i["class_name"],
                    anchor=t3(i["anchor"]),
                    yaw=float(i["yaw"]),
                    texture=Texture(tex["pattern"], float(tex["period"]), t3(tex["axis"]), t3(tex["tint"]),
                                    t3(tex["offset"]), float(tex["grain"])),
                    footprint=None if i["footprint"] is None else (float(i["footprint"][0]), float(i["footprint"][1])),
                    wall=i.get("wall"),
                )
            )
        prims = [
            Primitive(p["kind"], t3(p["center"]), t3(p["size"]), float(p["yaw"]), int(p["instance_id"]), t3(p["color"]))
            for p in d["primitives"]
        ]
        return cls(seed=int(d["seed"]), size=t3(d["size"]), instances=instances, primitives=prims)

    # ---- compiled arrays for the renderer ---------------------------------------------------
    @cached_property
    def _geometry(self) -> "_Geometry":
        return _Geometry(self)


def _primitive_aabb(p: Primitive) -> tuple[np.ndarray, np.ndarray]:
    c, s = abs(math.cos(p.yaw)), abs(math.sin(p.yaw))
    sx, sy, sz = p.size
    if p.kind == "cylinder":
        ex, ez = sx, sx
    else:  # box / ellipsoid: extent of the rotated box (conservative for ellipsoids)
        ex, ez = c * sx + s * sz, s * sx + c * sz
    ctr = np.asarray(p.center, dtype=np.float64)
    ext = np.array([ex, sy, ez])
    return ctr - ext, ctr + ext


class _KindArrays:
    """Stacked parameters of all primitives of one kind."""

    def __init__(self, prims: list[tuple[int, Primitive]]):
        self.index = np.array([i for i, _ in prims], dtype=np.int64)  # [P] global primitive index
        self.center = np.array([p.center for _, p in prims], dtype=np.float64).reshape(-1, 3)
        self.size = np.array([p.size for _, p in prims], dtype=np.float64).reshape(-1, 3)
        yaw = np.array([p.yaw for _, p in prims], dtype=np.float64)
        self.cos, self.sin = np.cos(yaw), np.sin(yaw)

    def __len__(self) -> int:
        return len(self.index)


class _Geometry:
    """Arrays derived from a :class:`Room` once, shared by all renders."""

    KINDS = ("box", "cylinder", "ellipsoid")

    def __init__(self, room: Room):
        self.n_prims = len(room.primitives)
        for p in room.primitives:
            if p.kind not in self.KINDS:
                raise ValueError(f"unknown primitive kind {p.kind!r}")
        self.kinds = {k: _KindArrays([(i, p) for i, p in enumerate(room.primitives) if p.kind == k]) for k in self.KINDS}
        self.kind_of = np.array([self.KINDS.index(p.kind) for p in room.primitives], dtype=np.int64)
        self.local_index = np.zeros(self.n_prims, dtype=np.int64)  # position inside its kind's arrays
        for ka in self.kinds.values():
            self.local_index[ka.index] = np.arange(len(ka))
        self.prim_instance = np.array([p.instance_id for p in room.primitives], dtype=np.int64)
        self.prim_color = np.array([p.color for p in room.primitives], dtype=np.float64)
        n_inst = max(i.instance_id for i in room.instances) + 1
        self.instance_class = np.zeros(n_inst, dtype=np.int64)
        for inst in room.instances:
            self.instance_class[inst.instance_id] = inst.class_id
        self.instances = room._instance_map


# --------------------------------------------------------------------------------------------
# Procedural noise / patterns
# --------------------------------------------------------------------------------------------

# Fixed lattice tables (independent of the scene seed; per-instance offsets decorrelate patterns).
_PERM = np.random.default_rng(0x5EED).permutation(256).astype(np.int64)
_VALS = np.random.default_rng(0x5EED + 1).random(256)


def _hash3(i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Lattice hash of int64 arrays -> float in [0, 1). Negative ints are fine (& wraps)."""
    return _VALS[_PERM[(_PERM[(_PERM[i & 255] + j) & 255] + k) & 255]]


def _value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise. p: [M, 3] -> [M] in [0, 1)."""
    fl = np.floor(p)
    f = p - fl
    i = fl.astype(np.int64)
    u = f * f * (3.0 - 2.0 * f)
    out = np.zeros(p.shape[0])
    for dx in (0, 1):
        wx = u[:, 0] if dx else 1.0 - u[:, 0]
        for dy in (0, 1):
            wy = u[:, 1] if dy else 1.0 - u[:, 1]
            for dz in (0, 1):
                wz = u[:, 2] if dz else 1.0 - u[:, 2]
                out += wx * wy * wz * _hash3(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
    return out


def _fbm(p: np.ndarray) -> np.ndarray:
    """Two-octave value noise, [M, 3] -> [M] in [0, 1)."""
    return 0.65 * _value_noise(p) + 0.35 * _value_noise(2.03 * p + 17.17)


def _contrast(x: np.ndarray, k: float) -> np.ndarray:
    return np.clip((x - 0.5) * k + 0.5, 0.0, 1.0)


def _soft_stripes(x: np.ndarray) -> np.ndarray:
    """Stripes with slightly soft edges (limits aliasing); x in periods -> [0, 1]."""
    return np.clip(0.5 + 1.6 * np.sin(2.0 * np.pi * x), 0.0, 1.0)


def _grid_lines(x: np.ndarray, width: float) -> np.ndarray:
    """1 within ``width`` (fraction of a period) of an integer, fading to 0 -> [0, 1]."""
    d = np.abs(x - np.rint(x))
    return np.clip(1.5 - d / width, 0.0, 1.0)


def _pattern(tex: Texture, p: np.ndarray) -> np.ndarray:
    """Pattern value s in [0, 1] at local points p: [M, 3] -> [M]."""
    axis = np.asarray(tex.axis)
    off = np.asarray(tex.offset)
    per = tex.period
    if tex.pattern == "stripes":
        return _soft_stripes(p @ axis / per + off[0])
    if tex.pattern == "checker":
        q = np.floor((p + off) / per).astype(np.int64).sum(axis=1)
        return (q & 1).astype(np.float64)
    if tex.pattern == "noise":
        return _contrast(_fbm((p + off) / per), 2.4)
    if tex.pattern == "plaid":
        return 0.5 * (_soft_stripes(p @ axis / per + off[0]) + _soft_stripes(p[:, 1] / (1.3 * per) + off[1]))
    if tex.pattern in ("planks", "tiles", "panels"):
        # Horizontal surfaces: "along" follows axis, "across" is the perpendicular horizontal axis.
        along = p[:, 0] * axis[0] + p[:, 2] * axis[2] + off[0]
        across = -p[:, 0] * axis[2] + p[:, 2] * axis[0] + off[2]
        if tex.pattern == "planks":
            row = np.floor(across / per).astype(np.int64)
            plank_len = 6.0 * per
            shift = _hash3(row, row * 7 + 3, np.full_like(row, 11)) * plank_len  # staggered joints
            col = np.floor((along + shift) / plank_len).astype(np.int64)
            tone = _hash3(row, col, np.full_like(row, 5))
            grain = _value_noise(np.stack([along * 1.5, p[:, 1], across * 8.0], axis=1))
            seam = np.maximum(_grid_lines(across / per, 0.05), _grid_lines((along + shift) / plank_len, 0.01))
            return np.maximum(np.clip(0.55 * tone + 0.45 * grain, 0.0, 1.0) * 0.75, seam)
        if tex.pattern == "tiles":
            qa = np.floor(along / per).astype(np.int64)
            qc = np.floor(across / per).astype(np.int64)
            tone = _hash3(qa, qc, np.full_like(qa, 9))
            grout = np.maximum(_grid_lines(along / per, 0.03), _grid_lines(across / per, 0.03))
            return np.maximum(0.45 * tone + 0.25 * ((qa + qc) & 1), grout)
        # panels (ceiling): grid of soft lines + low-frequency blotches
        lines = np.maximum(_grid_lines(along / per, 0.025), _grid_lines(across / per, 0.025))
        return np.maximum(lines, 0.5 * _fbm((p + off) / (0.5 * per)))
    if tex.pattern == "wallpaper":
        return np.clip(0.75 * _soft_stripes(p @ axis / per + off[0]) + 0.4 * (_fbm((p + off) / (2 * per)) - 0.5), 0.0, 1.0)
    if tex.pattern == "plaster":
        return _contrast(_fbm((p + off) / per), 1.8)
    raise ValueError(f"unknown texture pattern {tex.pattern!r}")


def _albedo(geo: _Geometry, points: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Albedo at world points. points: [M, 3], prim: [M] primitive index -> [M, 3] in (0, 0.92]."""
    out = geo.prim_color[prim].copy()
    inst_ids = geo.prim_instance[prim]
    for iid in np.unique(inst_ids):
        m = inst_ids == iid
        inst = geo.instances[int(iid)]
        tex = inst.texture
        c, s = math.cos(inst.yaw), math.sin(inst.yaw)
        d = points[m] - np.asarray(inst.anchor)
        pl = np.stack([c * d[:, 0] - s * d[:, 2], d[:, 1], s * d[:, 0] + c * d[:, 2]], axis=1)
        sv = _pattern(tex, pl)[:, None]
        mult = 1.0 + sv * (np.asarray(tex.tint) - 1.0)
        grain = 1.0 + tex.grain * (2.0 * _value_noise(pl / 0.12 + np.asarray(tex.offset)) - 1.0)
        out[m] = out[m] * mult * grain[:, None]
    return np.clip(out, 0.02, 0.92)


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------


def _safe(d: np.ndarray) -> np.ndarray:
    """Avoid division by exact zero in slab tests (the sign of a zero component is irrelevant)."""
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _local_rays(o: np.ndarray, d: np.ndarray, g: _KindArrays) -> tuple[np.ndarray, ...]:
    """Ray origin [3] / directions [R, 3] in each primitive frame: o_l [P] x3, d_l [P, R] x3."""
    ox, oy, oz = (o[None, :] - g.center).T
    c, s = g.cos, g.sin
    olx, oly, olz = c * ox - s * oz, oy, s * ox + c * oz
    dlx = c[:, None] * d[None, :, 0] - s[:, None] * d[None, :, 2]
    dly = d[None, :, 1]
    dlz = s[:, None] * d[None, :, 0] + c[:, None] * d[None, :, 2]
    return olx, oly, olz, dlx, dly, dlz


def _hit_boxes(o: np.ndarray, d: np.ndarray, g: _KindArrays) -> np.ndarray:
    """Entry distance of rays into boxes (slab method). -> [P, R], inf where missed."""
    olx, oly, olz, dlx, dly, dlz = _local_rays(o, d, g)
    tnear = np.full((len(g), d.shape[0]), -np.inf)
    tfar = np.full((len(g), d.shape[0]), np.inf)
    for ol, dl, h in ((olx, dlx, g.size[:, 0]), (oly, dly, g.size[:, 1]), (olz, dlz, g.size[:, 2])):
        inv = 1.0 / _safe(dl)
        t1 = (-h - ol)[:, None] * inv
        t2 = (h - ol)[:, None] * inv
        tnear = np.maximum(tnear, np.minimum(t1, t2))
        tfar = np.minimum(tfar, np.maximum(t1, t2))
    return np.where((tnear <= tfar) & (tnear > _EPS_T), tnear, np.inf)


def _hit_cylinders(o: np.ndarray, d: np.ndarray, g: _KindArrays) -> np.ndarray:
    """Entry distance into capped vertical cylinders. -> [P, R], inf where missed."""
    olx, oly, olz, dlx, dly, dlz = _local_rays(o, d, g)
    r = g.size[:, 0][:, None]
    hh = g.size[:, 1][:, None]
    a = dlx * dlx + dlz * dlz
    b = 2.0 * (olx[:, None] * dlx + olz[:, None] * dlz)
    c = (olx * olx + olz * olz)[:, None] - r * r
    disc = b * b - 4.0 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    ys = oly[:, None] + ts * dly
    t = np.where((disc >= 0) & (a > 1e-18) & (ts > _EPS_T) & (np.abs(ys) <= hh), ts, np.inf)
    inv_y = 1.0 / _safe(dly)
    for sign in (1.0, -1.0):
        tc = (sign * hh - oly[:, None]) * inv_y
        px = olx[:, None] + tc * dlx
        pz = olz[:, None] + tc * dlz
        t = np.minimum(t, np.where((tc > _EPS_T) & (px * px + pz * pz <= r * r), tc, np.inf))
    return t


def _hit_ellipsoids(o: np.ndarray, d: np.ndarray, g: _KindArrays) -> np.ndarray:
    """Entry distance into ellipsoids (unit sphere after scaling). -> [P, R], inf where missed."""
    olx, oly, olz, dlx, dly, dlz = _local_rays(o, d, g)
    rx, ry, rz = (g.size[:, i][:, None] for i in range(3))
    ox, oy, oz = olx[:, None] / rx, oly[:, None] / ry, olz[:, None] / rz
    dx, dy, dz = dlx / rx, dly / ry, dlz / rz
    a = dx * dx + dy * dy + dz * dz
    b = 2.0 * (ox * dx + oy * dy + oz * dz)
    c = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - 4.0 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    return np.where((disc >= 0) & (t > _EPS_T), t, np.inf)


_HIT_FNS = {"box": _hit_boxes, "cylinder": _hit_cylinders, "ellipsoid": _hit_ellipsoids}


def _trace(geo: _Geometry, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``origin + t * dirs``.

    Args:
        origin: [3] shared ray origin.
        dirs: [R, 3] (not necessarily unit) directions.

    Returns:
        t [R] float64 (inf on miss) and primitive index [R] int64 (-1 on miss).
    """
    n = dirs.shape[0]
    best_t = np.full(n, np.inf)
    best_p = np.full(n, -1, dtype=np.int64)
    chunk = max(256, _CHUNK_ELEMS // max(geo.n_prims, 1))
    for s0 in range(0, n, chunk):
        d = dirs[s0 : s0 + chunk]
        bt = best_t[s0 : s0 + chunk]  # views: updated in place
        bp = best_p[s0 : s0 + chunk]
        cols = np.arange(d.shape[0])
        for kind in _Geometry.KINDS:
            ka = geo.kinds[kind]
            if len(ka) == 0:
                continue
            t = _HIT_FNS[kind](origin, d, ka)
            j = np.argmin(t, axis=0)
            tj = t[j, cols]
            better = tj < bt
            bt[better] = tj[better]
            bp[better] = ka.index[j[better]]
    return best_t, best_p


def _normals(geo: _Geometry, origin: np.ndarray, dirs: np.ndarray, t: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """World unit normals at hits, oriented towards the viewer. All inputs [M, ...] -> [M, 3]."""
    n_out = np.zeros_like(dirs)
    kinds = geo.kind_of[prim]
    for k, kind in enumerate(_Geometry.KINDS):
        m = kinds == k
        if not m.any():
            continue
        ka = geo.kinds[kind]
        li = geo.local_index[prim[m]]
        c, s = ka.cos[li], ka.sin[li]
        size = ka.size[li]
        d = dirs[m]
        rel = origin[None, :] + t[m, None] * d - ka.center[li]
        pl = np.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], axis=1)
        if kind == "box":
            # Face = slab whose entry distance was the largest (exact, unlike a point test at edges).
            dl = np.stack([c * d[:, 0] - s * d[:, 2], d[:, 1], s * d[:, 0] + c * d[:, 2]], axis=1)
            ol = pl - t[m, None] * dl
            inv = 1.0 / _safe(dl)
            tmin = np.minimum((-size - ol) * inv, (size - ol) * inv)
            ax = np.argmax(tmin, axis=1)
            nl = np.zeros_like(pl)
            nl[np.arange(len(ax)), ax] = -np.sign(dl[np.arange(len(ax)), ax])
        elif kind == "cylinder":
            radial = np.hypot(pl[:, 0], pl[:, 2])
            cap = (1.0 - np.abs(pl[:, 1]) / size[:, 1]) < (1.0 - radial / size[:, 0])
            safe_r = np.maximum(radial, 1e-12)
            nl = np.where(cap[:, None], np.stack([np.zeros_like(radial), np.sign(pl[:, 1]), np.zeros_like(radial)], 1),
                          np.stack([pl[:, 0] / safe_r, np.zeros_like(radial), pl[:, 2] / safe_r], 1))
        else:
            nl = pl / (size * size)
            nl /= np.linalg.norm(nl, axis=1, keepdims=True)
        # object frame -> world: x_w = c x_l + s z_l, z_w = -s x_l + c z_l
        n_out[m] = np.stack([c * nl[:, 0] + s * nl[:, 2], nl[:, 1], -s * nl[:, 0] + c * nl[:, 2]], axis=1)
    facing = np.sum(n_out * dirs, axis=1)
    n_out *= np.where(facing > 0, -1.0, 1.0)[:, None]
    return n_out


def _shade(normals: np.ndarray) -> np.ndarray:
    """View-independent Lambert shading factor. normals: [M, 3] -> [M]."""
    out = np.full(normals.shape[0], AMBIENT)
    for direction, intensity in LIGHTS:
        out += intensity * np.maximum(normals @ np.asarray(direction), 0.0)
    return out


def _pixel_dirs(c2w: np.ndarray, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    """World ray directions with camera-space z = -1 (so t equals z-depth). -> [H*W, 3]."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    cam = np.stack([(u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -np.ones_like(u)], axis=-1).reshape(-1, 3)
    return cam @ np.asarray(c2w, dtype=np.float64)[:3, :3].T


def render_view(
    room: Room,
    c2w: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    return_points: bool = False,
) -> dict[str, np.ndarray]:
    """Ray cast one pinhole view of ``room`` exactly (one ray per pixel centre).

    Args:
        room: scene from :func:`build_room`.
        c2w: [4, 4] (or [3, 4]) OpenGL camera-to-world matrix; rotation must be orthonormal.
        fx, fy, cx, cy: pinhole intrinsics in pixels.
        width, height: image size.
        return_points: also return the world hit points.

    Returns:
        ``rgb`` uint8 [H, W, 3], ``depth`` float32 [H, W] camera z-depth in metres (inf on a
        miss, which cannot happen inside the room), ``semantic`` int32 [H, W] class ids,
        ``instance`` int32 [H, W] instance ids and, if requested, ``points`` float64 [H, W, 3].
    """
    geo = room._geometry
    c2w = np.asarray(c2w, dtype=np.float64)
    origin = c2w[:3, 3].copy()
    dirs = _pixel_dirs(c2w, fx, fy, cx, cy, width, height)
    t, prim = _trace(geo, origin, dirs)
    hit = prim >= 0
    rgb = np.zeros((dirs.shape[0], 3))
    instance = np.zeros(dirs.shape[0], dtype=np.int32)
    semantic = np.zeros(dirs.shape[0], dtype=np.int32)
    points = origin[None, :] + np.where(hit, t, 0.0)[:, None] * dirs
    if hit.any():
        ph = prim[hit]
        normals = _normals(geo, origin, dirs[hit], t[hit], ph)
        rgb[hit] = _albedo(geo, points[hit], ph) * _shade(normals)[:, None]
        instance[hit] = geo.prim_instance[ph]
        semantic[hit] = geo.instance_class[geo.prim_instance[ph]]
    out = {
        "rgb": np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3),
        "depth": t.astype(np.float32).reshape(height, width),  # t is z-depth since dir_cam.z == -1
        "semantic": semantic.reshape(height, width),
        "instance": instance.reshape(height, width),
    }
    if return_points:
        out["points"] = points.reshape(height, width, 3)
    return out


# --------------------------------------------------------------------------------------------
# Room construction
# --------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> Vec3:
    r, g, b = colorsys.hsv_to_rgb(float(h) % 1.0, float(s), float(v))
    return (r, g, b)


def _scaled(c: Vec3, k: float) -> Vec3:
    return (min(c[0] * k, 0.92), min(c[1] * k, 0.92), min(c[2] * k, 0.92))


def _wood(rng: np.random.Generator) -> Vec3:
    return _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.62))


def _fabric(rng: np.random.Generator) -> Vec3:
    return _hsv(rng.random(), rng.uniform(0.25, 0.65), rng.uniform(0.3, 0.7))


def _painted(rng: np.random.Generator) -> Vec3:
    return _hsv(rng.random(), rng.uniform(0.15, 0.6), rng.uniform(0.45, 0.75))


def _metal(rng: np.random.Generator) -> Vec3:
    return _hsv(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.25, 0.7))


@dataclass
class _Part:
    """A primitive in an object's local frame (origin at footprint floor centre, +z = front)."""

    kind: str
    center: Vec3
    size: Vec3
    color: Vec3


def _bx(x: float, z: float, hx: float, hz: float, y0: float, y1: float, color: Vec3) -> _Part:
    return _Part("box", (x, (y0 + y1) / 2, z), (hx, (y1 - y0) / 2, hz), color)


def _cyl(x: float, z: float, r: float, y0: float, y1: float, color: Vec3) -> _Part:
    return _Part("cylinder", (x, (y0 + y1) / 2, z), (r, (y1 - y0) / 2, r), color)


def _ell(x: float, y: float, z: float, rx: float, ry: float, rz: float, color: Vec3) -> _Part:
    return _Part("ellipsoid", (x, y, z), (rx, ry, rz), color)


@dataclass
class _Spec:
    """Output of an object builder: parts, footprint half extents and height."""

    parts: list[_Part]
    hx: float
    hz: float
    height: float


def _chair(rng: np.random.Generator) -> _Spec:
    w, d, sh = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.48)
    frame = _wood(rng) if rng.random() < 0.5 else _painted(rng)
    seat = frame if rng.random() < 0.5 else _fabric(rng)
    legc = _scaled(frame, 0.75)
    parts = [_bx(sx * (w / 2 - 0.04), sz * (d / 2 - 0.04), 0.02, 0.02, 0.0, sh - 0.05, legc)
             for sx in (-1, 1) for sz in (-1, 1)]
    back_h = rng.uniform(0.38, 0.5)
    parts += [_bx(0, 0, w / 2, d / 2, sh - 0.05, sh, seat),
              _bx(0, -d / 2 + 0.025, w / 2 - 0.005, 0.025, sh, sh + back_h, frame)]
    return _Spec(parts, w / 2, d / 2, sh + back_h)


def _table(rng: np.random.Generator) -> _Spec:
    col = _wood(rng) if rng.random() < 0.7 else _painted(rng)
    ht = rng.uniform(0.72, 0.76)
    if rng.random() < 0.7:
        ln, wd = rng.uniform(1.0, 1.6), rng.uniform(0.7, 0.9)
        parts = [_bx(0, 0, ln / 2, wd / 2, ht - 0.04, ht, col)]
        parts += [_bx(sx * (ln / 2 - 0.07), sz * (wd / 2 - 0.07), 0.03, 0.03, 0.0, ht - 0.04, _scaled(col, 0.8))
                  for sx in (-1, 1) for sz in (-1, 1)]
        return _Spec(parts, ln / 2, wd / 2, ht)
    r = rng.uniform(0.45, 0.6)
    parts = [_cyl(0, 0, r, ht - 0.04, ht, col), _cyl(0, 0, 0.05, 0.03, ht - 0.04, _scaled(col, 0.8)),
             _cyl(0, 0, 0.25, 0.0, 0.03, _scaled(col, 0.7))]
    return _Spec(parts, r, r, ht)


def _sofa(rng: np.random.Generator) -> _Spec:
    ln, dp, arm = rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95), rng.uniform(0.15, 0.22)
    col = _fabric(rng)
    cush = _scaled(col, 1.12)
    back_t, back_h = 0.2, rng.uniform(0.8, 0.9)
    parts = [
        _bx(0, (back_t) / 2, ln / 2 - arm, dp / 2 - back_t / 2, 0.0, 0.32, col),  # seat base
        _bx(0, -dp / 2 + 0.005 + back_t / 2, ln / 2 - 0.01, back_t / 2, 0.0, back_h, col),  # back
        _bx(-(ln / 2 - arm / 2), 0, arm / 2, dp / 2, 0.0, 0.62, col),
        _bx(ln / 2 - arm / 2, 0, arm / 2, dp / 2, 0.0, 0.62, col),
    ]
    n = int(rng.integers(2, 4))
    seat_w = ln - 2 * arm
    cw = seat_w / n
    for k in range(n):
        x = -seat_w / 2 + (k + 0.5) * cw
        parts.append(_bx(x, back_t / 2 - 0.005 + 0.0025, cw / 2 - 0.01, dp / 2 - back_t / 2 - 0.0125, 0.32, 0.44, cush))
    return _Spec(parts, ln / 2, dp / 2, back_h)


def _bed(rng: np.random.Generator) -> _Spec:
    w, ln = rng.uniform(1.4, 1.8), rng.uniform(1.95, 2.1)
    frame, mattress, blanket = _wood(rng), _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.72, 0.8)), _fabric(rng)
    head = -ln / 2  # headboard side (towards the wall)
    body_z0 = head + 0.06
    body_len = ln - 0.06
    zc = body_z0 + body_len / 2
    parts = [
        _bx(0, head + 0.03, w / 2 + 0.03, 0.03, 0.0, rng.uniform(0.9, 1.1), frame),  # headboard
        _bx(0, zc, w / 2, body_len / 2, 0.0, 0.3, frame),
        _bx(0, zc, w / 2 - 0.03, body_len / 2 - 0.03, 0.3, 0.5, mattress),
    ]
    blanket_len = body_len * 0.62
    parts.append(_bx(0, ln / 2 - blanket_len / 2 - 0.01, w / 2 - 0.02, blanket_len / 2, 0.5, 0.54, blanket))
    n_p = 2 if w > 1.5 else 1
    pw = (w - 0.2) / n_p
    pillow = _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.7, 0.8))
    for k in range(n_p):
        x = -(w - 0.2) / 2 + (k + 0.5) * pw
        parts.append(_ell(x, 0.5 + 0.06, body_z0 + 0.28, pw / 2 - 0.03, 0.075, 0.17, pillow))
    return _Spec(parts, w / 2 + 0.03, ln / 2, 1.1)


def _lamp(rng: np.random.Generator) -> _Spec:
    metal = _metal(rng)
    rb, ph = rng.uniform(0.12, 0.16), rng.uniform(1.3, 1.6)
    shade = _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.2, 0.45), rng.uniform(0.68, 0.78))
    rs = rng.uniform(0.17, 0.23)
    parts = [_cyl(0, 0, rb, 0.0, 0.03, metal), _cyl(0, 0, 0.015, 0.03, ph, metal)]
    if rng.random() < 0.5:
        parts.append(_cyl(0, 0, rs, ph - 0.05, ph + 0.25, shade))
        top = ph + 0.25
    else:
        parts.append(_ell(0, ph + 0.08, 0, rs, 0.16, rs, shade))
        top = ph + 0.24
    r = max(rb, rs)
    return _Spec(parts, r, r, top)


def _cabinet(rng: np.random.Generator) -> _Spec:
    w, h, d = rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0.4, 0.5)
    col = _wood(rng) if rng.random() < 0.5 else _painted(rng)
    front = _scaled(col, 0.88)
    metal = _metal(rng)
    parts = [_bx(0, 0, w / 2, d / 2, 0.0, h, col)]
    n = 2 if w > 0.75 else 1
    pw = (w - 0.04 - 0.02 * (n - 1)) / n
    for k in range(n):
        x = -w / 2 + 0.02 + (k + 0.5) * pw + 0.02 * k
        parts.append(_bx(x, d / 2 + 0.006, pw / 2, 0.006, 0.05, h - 0.04, front))
        hxp = x + (pw / 2 - 0.06) * (1 if k == 0 and n == 2 else -1)
        parts.append(_bx(hxp, d / 2 + 0.024, 0.01, 0.012, h * 0.6 - 0.05, h * 0.6 + 0.05, metal))
    return _Spec(parts, w / 2, d / 2 + 0.04, h)


def _shelf(rng: np.random.Generator) -> _Spec:
    w, h, d, t = rng.uniform(0.8, 1.2), rng.uniform(1.6, 2.0), rng.uniform(0.3, 0.38), 0.025
    col = _wood(rng) if rng.random() < 0.6 else _painted(rng)
    parts = [_bx(-(w / 2 - t / 2), 0, t / 2, d / 2, 0.0, h, col), _bx(w / 2 - t / 2, 0, t / 2, d / 2, 0.0, h, col),
             _bx(0, -d / 2 + 0.005, w / 2 - t, 0.005, 0.0, h, _scaled(col, 0.85))]
    levels = int(rng.integers(4, 6))
    ys = np.linspace(0.05, h - t, levels + 1)
    for y in ys:
        parts.append(_bx(0, 0.005, w / 2 - t, d / 2 - 0.005, float(y), float(y) + t, col))
    for y0, y1 in zip(ys[:-1], ys[1:]):
        x = -w / 2 + t + 0.01
        gap = float(y1 - y0 - t)
        n_books = 0
        while n_books < 6:
            bw = rng.uniform(0.025, 0.06)
            if x + bw > w / 2 - t - 0.01:
                break
            if rng.random() < 0.72:
                bh = rng.uniform(0.6, 0.9) * gap
                bd = rng.uniform(0.6, 0.9) * (d - 0.02)
                parts.append(_bx(x + bw / 2, -d / 2 + 0.01 + bd / 2, bw / 2 - 0.001, bd / 2, float(y0) + t,
                                 float(y0) + t + bh, _hsv(rng.random(), rng.uniform(0.3, 0.75), rng.uniform(0.3, 0.75))))
                n_books += 1
                x += bw
            else:
                x += rng.uniform(0.02, 0.12)
    return _Spec(parts, w / 2, d / 2, h)


def _plant(rng: np.random.Generator) -> _Spec:
    r, h = rng.uniform(0.13, 0.2), rng.uniform(0.25, 0.4)
    pot = _hsv(rng.uniform(0.02, 0.07), rng.uniform(0.45, 0.7), rng.uniform(0.45, 0.7)) if rng.random() < 0.6 else _painted(rng)
    rf = rng.uniform(0.25, 0.38)
    yf = h + rf * rng.uniform(0.7, 1.2)
    parts = [_cyl(0, 0, r, 0.0, h, pot),
             _ell(0, yf, 0, rf, rf * rng.uniform(1.0, 1.4), rf, _hsv(rng.uniform(0.24, 0.38), rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.55)))]
    extent = rf
    for _ in range(int(rng.integers(1, 3))):
        a = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0.05, 0.12)
        rs = rf * rng.uniform(0.5, 0.7)
        parts.append(_ell(off * math.cos(a), yf + rng.uniform(0.05, rf), off * math.sin(a), rs, rs, rs,
                          _hsv(rng.uniform(0.22, 0.36), rng.uniform(0.45, 0.75), rng.uniform(0.3, 0.6))))
        extent = max(extent, off + rs)
    top = max(p.center[1] + p.size[1] for p in parts)
    return _Spec(parts, max(r, extent), max(r, extent), top)


def _tv(rng: np.random.Generator) -> _Spec:
    w = rng.uniform(0.9, 1.3)
    ht = 0.57 * w
    yb = rng.uniform(0.75, 0.95)
    body = _hsv(rng.random(), 0.05, rng.uniform(0.08, 0.15))
    screen = _hsv(rng.random(), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.6))
    parts = [_bx(0, 0, 0.22, 0.15, 0.0, 0.03, body), _bx(0, 0, 0.04, 0.025, 0.03, yb + 0.1, body),
             _bx(0, 0.04, w / 2, 0.025, yb, yb + ht, body),
             _bx(0, 0.069, w / 2 - 0.03, 0.004, yb + 0.03, yb + ht - 0.03, screen)]
    return _Spec(parts, w / 2, 0.15, yb + ht)


def _rug(rng: np.random.Generator) -> _Spec:
    w, d = rng.uniform(1.4, 2.4), rng.uniform(1.0, 1.7)
    return _Spec([_bx(0, 0, w / 2, d / 2, 0.0, 0.012, _fabric(rng))], w / 2, d / 2, 0.012)


def _box(rng: np.random.Generator) -> _Spec:
    sx, sz, sy = rng.uniform(0.25, 0.55), rng.uniform(0.25, 0.55), rng.uniform(0.2, 0.5)
    col = _hsv(rng.uniform(0.07, 0.1), rng.uniform(0.4, 0.6), rng.uniform(0.5, 0.68)) if rng.random() < 0.6 else _painted(rng)
    return _Spec([_bx(0, 0, sx / 2, sz / 2, 0.0, sy, col)], sx / 2, sz / 2, sy)


# Wall-mounted items: local frame origin on the wall plane at floor level, +z into the room.
# They protrude < 0.1 m; floor objects keep >= 0.06 m from walls except in front of doors,
# which reserve a clearance zone.


def _door(rng: np.random.Generator) -> tuple[_Spec, float, float]:
    w, h = rng.uniform(0.82, 0.95), rng.uniform(2.0, 2.1)
    col = _wood(rng) if rng.random() < 0.5 else _painted(rng)
    trim = _hsv(rng.random(), rng.uniform(0.0, 0.1), rng.uniform(0.75, 0.85))
    parts = [
        _bx(0, 0.0125, w / 2, 0.0225, 0.0, h, col),
        _bx(-w / 2 - 0.03, 0.005, 0.03, 0.015, 0.0, h + 0.06, trim),
        _bx(w / 2 + 0.03, 0.005, 0.03, 0.015, 0.0, h + 0.06, trim),
        _bx(0, 0.005, w / 2, 0.015, h, h + 0.06, trim),
        _ell(w / 2 - 0.08, 1.0, 0.035 + 0.025, 0.03, 0.03, 0.03, _metal(rng)),
    ]
    return _Spec(parts, w / 2 + 0.06, 0.06, h + 0.06), 0.0, h + 0.06


def _picture(rng: np.random.Generator, room_h: float) -> tuple[_Spec, float, float]:
    w, h = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.7)
    yc = min(rng.uniform(1.35, 1.7), room_h - 0.25 - h / 2)
    frame = _wood(rng) if rng.random() < 0.5 else _hsv(rng.random(), 0.05, rng.uniform(0.1, 0.8))
    canvas = _hsv(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.75))
    parts = [_bx(0, 0.01, w / 2, 0.015, yc - h / 2, yc + h / 2, frame),
             _bx(0, 0.0125, w / 2 - 0.04, 0.0175, yc - h / 2 + 0.04, yc + h / 2 - 0.04, canvas)]
    return _Spec(parts, w / 2, 0.03, yc + h / 2), yc - h / 2, yc + h / 2


def _window(rng: np.random.Generator, room_h: float) -> tuple[_Spec, float, float]:
    w = rng.uniform(0.8, 1.4)
    y0 = rng.uniform(0.85, 1.0)
    y1 = min(y0 + rng.uniform(0.9, 1.3), room_h - 0.25)
    frame = _hsv(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.78, 0.88))
    glass = _hsv(rng.uniform(0.53, 0.6), rng.uniform(0.2, 0.35), rng.uniform(0.78, 0.88))
    f = 0.06
    parts = [
        _bx(0, 0.005, w / 2 - f, 0.015, y0 + f, y1 - f, glass),
        _bx(-w / 2 + f / 2, 0.015, f / 2, 0.025, y0, y1, frame),
        _bx(w / 2 - f / 2, 0.015, f / 2, 0.025, y0, y1, frame),
        _bx(0, 0.015, w / 2 - f, 0.025, y0, y0 + f, frame),
        _bx(0, 0.015, w / 2 - f, 0.025, y1 - f, y1, frame),
    ]
    if w > 1.05:
        parts.append(_bx(0, 0.015, f / 3, 0.022, y0 + f, y1 - f, frame))
    return _Spec(parts, w / 2, 0.04, y1), y0, y1


_PATTERNS: dict[str, tuple[str, ...]] = {
    "rug": ("checker", "stripes", "plaid", "noise"),
    "picture": ("noise", "plaid", "stripes"),
    "window": ("noise",),
    "tv": ("noise", "plaid"),
    "plant": ("noise",),
    "box": ("stripes", "noise"),
    "sofa": ("noise", "plaid", "stripes", "checker"),
    "bed": ("stripes", "plaid", "checker", "noise"),
}
_PERIODS: dict[str, tuple[float, float]] = {
    "rug": (0.2, 0.45), "window": (0.3, 0.6), "plant": (0.08, 0.15), "picture": (0.08, 0.2),
    "lamp": (0.08, 0.15), "tv": (0.12, 0.25),
}


def _object_texture(rng: np.random.Generator, cls: str) -> Texture:
    patterns = _PATTERNS.get(cls, ("stripes", "checker", "noise", "plaid"))
    pattern = patterns[int(rng.integers(len(patterns)))]
    lo, hi = _PERIODS.get(cls, (0.12, 0.35))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    if cls in ("rug", "picture", "tv") or rng.random() < 0.3:
        tint = rng.uniform(0.35, 0.65) * (1.0 + rng.uniform(-0.35, 0.35, 3))  # strong, hue-shifted
    elif rng.random() < 0.5:
        tint = rng.uniform(0.55, 0.8) * (1.0 + rng.uniform(-0.1, 0.1, 3))
    else:
        tint = rng.uniform(1.15, 1.3) * (1.0 + rng.uniform(-0.05, 0.05, 3))
    return Texture(
        pattern=pattern,
        period=float(rng.uniform(lo, hi)),
        axis=_t3(axis),
        tint=_t3(tint),
        offset=_t3(rng.uniform(0.0, 10.0, 3)),
        grain=float(rng.uniform(0.05, 0.12)),
    )


def _t3(v: Iterable[float]) -> Vec3:
    a = [float(x) for x in v]
    return (a[0], a[1], a[2])


@dataclass
class _Footprint:
    cx: float
    cz: float
    hx: float
    hz: float
    yaw: float
    layer: str  # "object" | "rug" | "clearance"

    def axes(self) -> tuple[tuple[float, float], tuple[float, float]]:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return (c, -s), (s, c)  # object x and z axes in world (x, z)


def _overlap(a: _Footprint, b: _Footprint, gap: float) -> bool:
    """Separating-axis test for two oriented rectangles, each inflated by gap/2."""
    dx, dz = b.cx - a.cx, b.cz - a.cz
    au, av = a.axes()
    bu, bv = b.axes()
    for n in (au, av, bu, bv):
        ra = a.hx * abs(au[0] * n[0] + au[1] * n[1]) + a.hz * abs(av[0] * n[0] + av[1] * n[1])
        rb = b.hx * abs(bu[0] * n[0] + bu[1] * n[1]) + b.hz * abs(bv[0] * n[0] + bv[1] * n[1])
        if abs(dx * n[0] + dz * n[1]) > ra + rb + gap:
            return False
    return True


_WALLS = ("north", "south", "west", "east")


class _Layout:
    """Rejection-sampling furniture layout (mutable state while building one room)."""

    def __init__(self, rng: np.random.Generator, lx: float, h: float, lz: float):
        self.rng, self.lx, self.h, self.lz = rng, lx, h, lz
        self.footprints: list[_Footprint] = []
        self.wall_spans: dict[str, list[tuple[float, float, float, float]]] = {w: [] for w in _WALLS}
        self.instances: list[Instance] = []
        self.primitives: list[Primitive] = []
        self.next_id = _FIRST_OBJECT_INSTANCE
        self.tables: list[tuple[_Footprint, int]] = []

    # wall frame: centre point (x, z), tangent = object +x, inward normal = object +z, length
    def wall_frame(self, wall: str) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], float, float]:
        lx, lz = self.lx, self.lz
        if wall == "north":
            return (0.0, -lz / 2), (1.0, 0.0), (0.0, 1.0), lx, 0.0
        if wall == "south":
            return (0.0, lz / 2), (-1.0, 0.0), (0.0, -1.0), lx, math.pi
        if wall == "west":
            return (-lx / 2, 0.0), (0.0, -1.0), (1.0, 0.0), lz, math.pi / 2
        return (lx / 2, 0.0), (0.0, 1.0), (-1.0, 0.0), lz, -math.pi / 2

    def fits(self, fp: _Footprint, gap: float = 0.08, margin: float = 0.06) -> bool:
        c, s = math.cos(fp.yaw), math.sin(fp.yaw)
        ex, ez = abs(c) * fp.hx + abs(s) * fp.hz, abs(s) * fp.hx + abs(c) * fp.hz
        if abs(fp.cx) + ex > self.lx / 2 - margin or abs(fp.cz) + ez > self.lz / 2 - margin:
            return False
        blockers = {"object": ("object", "clearance"), "rug": ("rug", "clearance"),
                    "clearance": ("object", "rug", "clearance")}[fp.layer]
        return not any(o.layer in blockers and _overlap(fp, o, gap) for o in self.footprints)

    def wall_free(self, wall: str, a0: float, a1: float, y0: float, y1: float) -> bool:
        return not any(a0 < b1 + 0.1 and b0 < a1 + 0.1 and y0 < z1 + 0.05 and z0 < y1 + 0.05
                       for b0, b1, z0, z1 in self.wall_spans[wall])

    def add(self, cls: str, spec: _Spec, anchor: Vec3, yaw: float, footprint: bool, wall: str | None) -> int:
        iid = self.next_id
        self.next_id += 1
        c, s = math.cos(yaw), math.sin(yaw)
        for part in spec.parts:
            lx_, ly_, lz_ = part.center
            self.primitives.append(Primitive(
                kind=part.kind,
                center=(anchor[0] + c * lx_ + s * lz_, anchor[1] + ly_, anchor[2] - s * lx_ + c * lz_),
                size=part.size, yaw=yaw, instance_id=iid, color=part.color))
        self.instances.append(Instance(iid, cls, anchor, yaw, _object_texture(self.rng, cls),
                                       (spec.hx, spec.hz) if footprint else None, wall))
        return iid

    # ---- placement strategies ---------------------------------------------------------------
    def place_on_wall(self, cls: str, tries: int = 300) -> bool:
        """Doors, windows and pictures: a span on a wall."""
        rng = self.rng
        for _ in range(tries):
            wall = _WALLS[int(rng.integers(4))]
            if cls == "door":
                spec, y0, y1 = _door(rng)
            elif cls == "window":
                spec, y0, y1 = _window(rng, self.h)
            else:
                spec, y0, y1 = _picture(rng, self.h)
            ctr, tan, nrm, length, yaw = self.wall_frame(wall)
            lim = length / 2 - spec.hx - 0.15
            if lim <= 0:
                continue
            a = rng.uniform(-lim, lim)
            if not self.wall_free(wall, a - spec.hx, a + spec.hx, y0, y1):
                continue
            px, pz = ctr[0] + a * tan[0], ctr[1] + a * tan[1]
            clearance = None
            if cls == "door":  # keep the swing area in front of the door empty
                clearance = _Footprint(px + 0.5 * nrm[0], pz + 0.5 * nrm[1], spec.hx + 0.1, 0.5, yaw, "clearance")
                if not self.fits(clearance, gap=0.0, margin=-1.0):
                    continue
                self.footprints.append(clearance)
            self.wall_spans[wall].append((a - spec.hx, a + spec.hx, y0, y1))
            self.add(cls, spec, (px, 0.0, pz), yaw, footprint=False, wall=wall)
            return True
        return False

    def place_against_wall(self, cls: str, builder: Any, tries: int = 300) -> bool:
        """Beds, sofas, shelves, cabinets, tvs: back towards a wall, facing into the room."""
        rng = self.rng
        for _ in range(tries):
            spec = builder(rng)
            wall = _WALLS[int(rng.integers(4))]
            ctr, tan, nrm, length, yaw = self.wall_frame(wall)
            lim = length / 2 - spec.hx - 0.1
            if lim <= 0:
                continue
            a = rng.uniform(-lim, lim)
            if not self.wall_free(wall, a - spec.hx, a + spec.hx, 0.0, spec.height):
                continue
            dist = spec.hz + rng.uniform(0.07, 0.15)
            px, pz = ctr[0] + a * tan[0] + dist * nrm[0], ctr[1] + a * tan[1] + dist * nrm[1]
            fp = _Footprint(px, pz, spec.hx, spec.hz, yaw, "object")
            if not self.fits(fp):
                continue
            self.footprints.append(fp)
            self.wall_spans[wall].append((a - spec.hx, a + spec.hx, 0.0, spec.height))
            self.add(cls, spec, (px, 0.0, pz), yaw, footprint=True, wall=wall)
            return True
        return False

    def place_free(self, cls: str, builder: Any, tries: int = 300, near_wall: float = 0.0) -> bool:
        """Free-standing objects with a random yaw; optionally biased towards the walls."""
        rng = self.rng
        layer = "rug" if cls == "rug" else "object"
        for _ in range(tries):
            spec = builder(rng)
            if cls == "rug":
                yaw = float(rng.integers(2)) * math.pi / 2 + rng.normal(0.0, 0.05)
            else:
                yaw = rng.uniform(0.0, 2 * math.pi)
            if cls == "chair" and self.tables and rng.random() < 0.7:
                fp = self._chair_at_table(spec, yaw)
            elif rng.random() < near_wall:
                ctr, tan, nrm, length, _ = self.wall_frame(_WALLS[int(rng.integers(4))])
                a = rng.uniform(-length / 2, length / 2)
                dist = rng.uniform(max(spec.hx, spec.hz) * 1.42 + 0.07, 0.9)
                fp = _Footprint(ctr[0] + a * tan[0] + dist * nrm[0], ctr[1] + a * tan[1] + dist * nrm[1],
                                spec.hx, spec.hz, yaw, layer)
            else:
                m = 0.4 if cls == "rug" else 0.1
                fp = _Footprint(rng.uniform(-self.lx / 2 + m, self.lx / 2 - m), rng.uniform(-self.lz / 2 + m, self.lz / 2 - m),
                                spec.hx, spec.hz, yaw, layer)
            gap = 0.05 if cls == "chair" else 0.08
            if not self.fits(fp, gap=gap, margin=0.4 if cls == "rug" else 0.06):
                continue
            self.footprints.append(fp)
            iid = self.add(cls, spec, (fp.cx, 0.0, fp.cz), fp.yaw, footprint=True, wall=None)
            if cls == "table":
                self.tables.append((fp, iid))
            return True
        return False

    def _chair_at_table(self, spec: _Spec, yaw: float) -> _Footprint:
        """A chair pulled up to one side of a random table, facing it."""
        rng = self.rng
        tfp, _ = self.tables[int(rng.integers(len(self.tables)))]
        side = int(rng.integers(4))
        tu, tv = tfp.axes()
        if side < 2:
            n, along, half, lat = tu, tv, tfp.hx, tfp.hz
        else:
            n, along, half, lat = tv, tu, tfp.hz, tfp.hx
        sgn = 1.0 if side % 2 == 0 else -1.0
        dist = half + spec.hz + 0.08
        off = rng.uniform(-max(lat - spec.hx, 0.0), max(lat - spec.hx, 0.0))
        cx = tfp.cx + sgn * dist * n[0] + off * along[0]
        cz = tfp.cz + sgn * dist * n[1] + off * along[1]
        # chair front (+z local) must point at the table: (sin yaw, cos yaw) = -sgn * n
        face = math.atan2(-sgn * n[0], -sgn * n[1]) + rng.normal(0.0, 0.08)
        return _Footprint(cx, cz, spec.hx, spec.hz, face, "object")


# (class, min count (mandatory), max count, strategy). Order matters: big/wall items first.
_LAYOUT_PLAN: tuple[tuple[str, int, int, str], ...] = (
    ("door", 1, 2, "wall"), ("window", 1, 2, "wall"), ("picture", 1, 3, "wall"),
    ("bed", 1, 1, "against"), ("sofa", 2, 2, "against"), ("shelf", 1, 2, "against"),
    ("cabinet", 1, 2, "against"), ("tv", 1, 1, "against"),
    ("table", 1, 2, "free"), ("chair", 3, 5, "free"), ("lamp", 1, 2, "free"), ("plant", 2, 3, "free"),
    ("box", 2, 4, "free"), ("rug", 1, 2, "free"),
)
_BUILDERS = {"chair": _chair, "table": _table, "sofa": _sofa, "bed": _bed, "lamp": _lamp, "cabinet": _cabinet,
             "shelf": _shelf, "plant": _plant, "tv": _tv, "rug": _rug, "box": _box}
_NEAR_WALL = {"lamp": 0.8, "plant": 0.8, "box": 0.5}


def _room_surfaces(rng: np.random.Generator, lx: float, h: float, lz: float) -> tuple[list[Instance], list[Primitive]]:
    """Floor, ceiling and four wall slabs (outside the room volume, overlapping at the corners)."""
    t = _WALL_T
    ex, ez = lx / 2 + t, lz / 2 + t  # slabs overlap at corners so the room is closed
    instances: list[Instance] = []
    prims: list[Primitive] = []
    zero: Vec3 = (0.0, 0.0, 0.0)

    # floor: wooden planks or stone tiles, in a frame rotated by 0 or 90 degrees
    if rng.random() < 0.6:
        ftex = Texture("planks", float(rng.uniform(0.18, 0.3)), (1.0, 0.0, 0.0),
                       _t3(rng.uniform(0.55, 0.7) * (1 + rng.uniform(-0.05, 0.05, 3))), _t3(rng.uniform(0, 10, 3)), 0.06)
        fcol = _hsv(rng.uniform(0.06, 0.1), rng.uniform(0.35, 0.6), rng.uniform(0.5, 0.7))
    else:
        ftex = Texture("tiles", float(rng.uniform(0.4, 0.6)), (1.0, 0.0, 0.0),
                       _t3(rng.uniform(0.5, 0.7) * (1 + rng.uniform(-0.1, 0.1, 3))), _t3(rng.uniform(0, 10, 3)), 0.06)
        fcol = _hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.55, 0.75))
    instances.append(Instance(FLOOR_INSTANCE, "floor", zero, float(rng.integers(2)) * math.pi / 2, ftex))
    prims.append(Primitive("box", (0.0, -t / 2, 0.0), (ex, t / 2, ez), 0.0, FLOOR_INSTANCE, fcol))

    ctex = Texture("panels", float(rng.uniform(0.6, 1.2)), (1.0, 0.0, 0.0), (0.82, 0.82, 0.85),
                   _t3(rng.uniform(0, 10, 3)), 0.05)
    instances.append(Instance(CEILING_INSTANCE, "ceiling", zero, 0.0, ctex))
    prims.append(Primitive("box", (0.0, h + t / 2, 0.0), (ex, t / 2, ez), 0.0, CEILING_INSTANCE,
                           _hsv(rng.random(), rng.uniform(0.0, 0.06), rng.uniform(0.84, 0.9))))

    wall_hue, wall_sat = rng.random(), rng.uniform(0.08, 0.3)
    style = "wallpaper" if rng.random() < 0.5 else "plaster"
    geom = {
        "north": ((0.0, h / 2, -lz / 2 - t / 2), (ex, h / 2 + t, t / 2), (1.0, 0.0, 0.0)),
        "south": ((0.0, h / 2, lz / 2 + t / 2), (ex, h / 2 + t, t / 2), (1.0, 0.0, 0.0)),
        "west": ((-lx / 2 - t / 2, h / 2, 0.0), (t / 2, h / 2 + t, ez), (0.0, 0.0, 1.0)),
        "east": ((lx / 2 + t / 2, h / 2, 0.0), (t / 2, h / 2 + t, ez), (0.0, 0.0, 1.0)),
    }
    for name in _WALLS:
        center, size, axis = geom[name]
        iid = WALL_INSTANCES[name]
        per = float(rng.uniform(0.22, 0.45) if style == "wallpaper" else rng.uniform(0.35, 0.7))
        tint = _t3(rng.uniform(0.72, 0.85) * (1 + rng.uniform(-0.06, 0.06, 3)))
        instances.append(Instance(iid, "wall", zero, 0.0, Texture(style, per, axis, tint, _t3(rng.uniform(0, 10, 3)), 0.05),
                                  wall=name))
        col = _hsv(wall_hue + rng.uniform(-0.04, 0.04), wall_sat, rng.uniform(0.7, 0.82))
        prims.append(Primitive("box", center, size, 0.0, iid, col))
    return instances, prims


def build_room(seed: int) -> Room:
    """Build the furnished room for ``seed`` (>= 0). Deterministic: same seed, same room.

    Every class in :data:`OBJECT_CLASSES` gets at least one instance, sofas two, chairs three,
    plants and boxes two. If the random layout cannot fit the mandatory instances, it is redrawn
    from a derived seed (still deterministic).
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for attempt in range(64):
        rng = np.random.default_rng([int(seed), 0, attempt])
        lx, h, lz = float(rng.uniform(6.0, 8.0)), float(rng.uniform(2.6, 3.0)), float(rng.uniform(6.0, 8.0))
        instances, prims = _room_surfaces(rng, lx, h, lz)
        lay = _Layout(rng, lx, h, lz)
        ok = True
        for cls, lo, hi, strategy in _LAYOUT_PLAN:
            count = int(rng.integers(lo, hi + 1))
            for k in range(count):
                if strategy == "wall":
                    placed = lay.place_on_wall(cls)
                elif strategy == "against":
                    placed = lay.place_against_wall(cls, _BUILDERS[cls])
                else:
                    placed = lay.place_free(cls, _BUILDERS[cls], near_wall=_NEAR_WALL.get(cls, 0.0))
                if not placed and k < lo:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            return Room(seed=int(seed), size=(lx, h, lz), instances=instances + lay.instances,
                        primitives=prims + lay.primitives)
    raise RuntimeError(f"could not lay out a room for seed {seed}")


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


def camera_intrinsics(width: int, height: int, fov_deg: float = 65.0) -> Intrinsics:
    """Square-pixel pinhole with horizontal field of view ``fov_deg``, principal point at the centre."""
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return Intrinsics(f, f, width / 2.0, height / 2.0, int(width), int(height))


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL camera-to-world [4, 4] at ``eye`` looking at ``target`` (camera -z -> target)."""
    eye_a = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye_a
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-8:  # looking along up: any right vector will do
        right = np.cross(fwd, np.array([0.0, 0.0, -1.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -fwd, eye_a
    return c2w


def make_cameras(room: Room, views: int) -> np.ndarray:
    """Camera-to-world poses [views, 4, 4] inside ``room``, each looking at an object.

    Cameras stand at 1.2-1.8 m, at least 0.7 m from the walls and 0.4 m from any object
    footprint, and look at a randomly chosen object's centre (with jitter) that is >= 1.3 m
    away horizontally and not hidden right in front of the camera. Poses are drawn sequentially
    from an rng seeded by the room seed, so the first k poses do not depend on ``views``.
    """
    rng = np.random.default_rng([room.seed, 1])
    lx, h, lz = room.size
    geo = room._geometry
    targets = [i for i in room.instances if i.class_name not in ROOM_CLASSES]
    weights = np.array([0.3 if i.class_name == "rug" else 1.0 for i in targets])
    weights /= weights.sum()
    poses: list[np.ndarray] = []
    for _ in range(views):
        for _try in range(5000):
            x, z = rng.uniform(-lx / 2 + 0.7, lx / 2 - 0.7), rng.uniform(-lz / 2 + 0.7, lz / 2 - 0.7)
            y = rng.uniform(1.2, 1.8)
            inst = targets[int(rng.choice(len(targets), p=weights))]
            lo, hi = room.instance_bounds(inst.instance_id)
            tgt = (lo + hi) / 2 + rng.normal(0.0, 0.15, 3)
            tgt[1] = np.clip(tgt[1], 0.1, h - 0.1)
            if not room.is_free(x, z, margin=0.4):
                continue
            eye = np.array([x, y, z])
            delta = tgt - eye
            dist_h = math.hypot(delta[0], delta[2])
            if dist_h < 1.3:
                continue
            pitch = math.degrees(math.atan2(delta[1], dist_h))
            if not -45.0 <= pitch <= 20.0:
                continue
            t, _ = _trace(geo, eye, delta[None, :])
            if t[0] < 0.7:  # something blocks the view within 70 % of the way to the target
                continue
            poses.append(look_at(eye, tgt))
            break
        else:
            raise RuntimeError(f"could not place camera {len(poses)} in room of seed {room.seed}")
    return np.stack(poses) if poses else np.zeros((0, 4, 4))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY with float x,y,z and uchar red,green,blue. xyz: [N, 3], rgb: [N, 3] uint8."""
    n = int(xyz.shape[0])
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "ushort": "u2", "uint16": "u2", "short": "i2", "int16": "i2",
              "uint": "u4", "uint32": "u4", "int": "i4", "int32": "i4"}


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary little-endian vertex-only PLY (as written by :func:`write_ply`).

    Returns:
        xyz float32 [N, 3] and rgb uint8 [N, 3].
    """
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        props: list[tuple[str, str]] = []
        n = 0
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: truncated PLY header")
            tok = line.decode("ascii").split()
            if not tok:
                continue
            if tok[0] == "format" and tok[1] != "binary_little_endian":
                raise ValueError(f"{path}: unsupported PLY format {tok[1]}")
            if tok[0] == "element":
                if tok[1] != "vertex":
                    raise ValueError(f"{path}: only vertex elements are supported")
                n = int(tok[2])
            elif tok[0] == "property":
                props.append((tok[2], "<" + _PLY_TYPES[tok[1]]))
            elif tok[0] == "end_header":
                break
        data = np.frombuffer(f.read(), dtype=np.dtype(props), count=n)
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    rgb = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.uint8)
    return xyz, rgb


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image  # lazy: rendering alone needs only numpy

    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def _write_json(path: Path, obj: Any, atomic: bool = False) -> None:
    if atomic:
        from unisem_ns.utils.atomic import atomic_write_json

        atomic_write_json(path, obj)
    else:
        path.write_text(json.dumps(obj, indent=2) + "\n")


def _track(it: Iterable[_T], total: int, description: str, enabled: bool) -> Iterator[_T]:
    if enabled:
        try:
            from rich.progress import track
        except ImportError:  # rich is optional
            pass
        else:
            yield from track(it, total=total, description=description)
            return
    yield from it


_OUTPUTS = ("transforms.json", "images", "depths", "gt", "sparse_pc.ply", "scene.json")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
        # Remove only what we write; transforms.json first so the folder never looks complete.
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate_scene(
    out: Path,
    seed: int = 0,
    views: int = 48,
    width: int = 128,
    height: int = 96,
    test_every: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    *,
    fov_deg: float = 65.0,
    ply_points: int = 10000,
) -> Path:
    """Render a scene to ``out`` in Nerfstudio's transforms.json layout, with exact GT labels.

    Args:
        out: output folder; must be missing or empty unless ``overwrite``.
        seed: room / camera seed (>= 0).
        views: number of views.
        width, height: image size in pixels.
        test_every: every ``test_every``-th view (index % test_every == 0) goes to the test
            (= val) split, the rest to train.
        overwrite: replace the generator's outputs in a non-empty ``out``.
        progress: show a rich progress bar.
        fov_deg: horizontal field of view.
        ply_points: approximate number of seed points in ``sparse_pc.ply``.

    Returns:
        ``out``. ``transforms.json`` is written last (atomically), so its presence marks a
        complete scene.
    """
    out = Path(out)
    if views < 1 or width < 1 or height < 1:
        raise ValueError(f"views, width and height must be >= 1 (got {views}, {width}, {height})")
    if test_every < 2:
        raise ValueError(f"test_every must be >= 2 (got {test_every})")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    _prepare_out(out, overwrite)
    room = build_room(seed)
    poses = make_cameras(room, views)
    K = camera_intrinsics(width, height, fov_deg)
    for sub in ("images", "depths", "gt/semantic", "gt/instance"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([int(seed), 2])
    per_view = min(width * height, max(1, math.ceil(ply_points / views)))
    pts: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    frames: list[dict[str, Any]] = []
    for i in _track(range(views), views, f"Rendering scene (seed {seed})", progress):
        stem = f"frame_{i:05d}"
        r = render_view(room, poses[i], K.fx, K.fy, K.cx, K.cy, width, height, return_points=True)
        _save_png(out / "images" / f"{stem}.png", r["rgb"])
        depth_mm = np.clip(np.rint(np.nan_to_num(r["depth"], posinf=0.0) * 1000.0), 0, 65535).astype(np.uint16)
        _save_png(out / "depths" / f"{stem}.png", depth_mm)
        _save_png(out / "gt" / "semantic" / f"{stem}.png", r["semantic"].astype(np.uint8))
        _save_png(out / "gt" / "instance" / f"{stem}.png", r["instance"].astype(np.uint16))
        sel = rng.choice(width * height, size=per_view, replace=False)
        pts.append(r["points"].reshape(-1, 3)[sel])
        cols.append(r["rgb"].reshape(-1, 3)[sel])
        frames.append({
            "file_path": f"images/{stem}.png",
            "depth_file_path": f"depths/{stem}.png",
            "transform_matrix": [[float(v) for v in row] for row in poses[i]],
        })

    write_ply(out / "sparse_pc.ply", np.concatenate(pts), np.concatenate(cols))
    _write_json(out / "gt" / "classes.json", CLASS_NAMES)
    _write_json(out / "gt" / "instances.json", {str(i.instance_id): i.class_name for i in room.instances})
    args = {"seed": int(seed), "views": int(views), "width": int(width), "height": int(height),
            "test_every": int(test_every), "fov_deg": float(fov_deg), "ply_points": int(ply_points)}
    _write_json(out / "scene.json", {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "args": args,
        "conventions": {"world": "y up, floor at y=0, metres", "camera": "OpenGL c2w", "depth": "camera z-depth"},
        "lights": {"ambient": AMBIENT, "directional": [{"direction": list(d), "intensity": k} for d, k in LIGHTS]},
        "room": room.to_dict(),
    })
    names = [f["file_path"] for f in frames]
    test = [n for i, n in enumerate(names) if i % test_every == 0]
    train = [n for i, n in enumerate(names) if i % test_every != 0]
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": K.fx, "fl_y": K.fy, "cx": K.cx, "cy": K.cy, "w": width, "h": height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "depth_unit_scale_factor": 0.001,
        "ply_file_path": "sparse_pc.ply",
        "train_filenames": train,
        "val_filenames": list(test),
        "test_filenames": test,
        "frames": frames,
    }
    _write_json(out / "transforms.json", transforms, atomic=True)
    return out
