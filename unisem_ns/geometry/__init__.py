"""Shared multi-view geometry: depth back-projection, projection with an occlusion test, OpenScene-style
feature fusion onto points, voxel pooling. All camera poses are OpenCV camera-to-world (x right, y down,
z forward); convert Nerfstudio's OpenGL ``transform_matrix`` with :func:`opengl_to_opencv_c2w`.
Depth is camera z-depth in metres (0 = invalid). No nerfstudio import.
"""

from unisem_ns.geometry.backproject import (
    FusionView,
    VoxelAccumulator,
    as_pose,
    backproject_depth,
    fuse_point_features,
    invert_pose,
    opengl_to_opencv_c2w,
    project_points,
    visible_points,
    voxel_downsample,
    voxel_keys,
)

__all__ = [
    "FusionView",
    "VoxelAccumulator",
    "as_pose",
    "backproject_depth",
    "fuse_point_features",
    "invert_pose",
    "opengl_to_opencv_c2w",
    "project_points",
    "visible_points",
    "voxel_downsample",
    "voxel_keys",
]
