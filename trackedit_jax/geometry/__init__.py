"""Cameras, tracks, projection and the canonical track file."""

from trackedit_jax.geometry.dycheck import dycheck_camera_ids, load_dycheck_cameras
from trackedit_jax.geometry.io import TrackFile, load_track_file, load_tracks, save_tracks
from trackedit_jax.geometry.projection import (
    camera_centers,
    camera_to_world,
    grid_to_pixels,
    in_front,
    in_image,
    invert_extrinsics,
    pixels_to_grid,
    project,
    unproject,
    world_to_camera,
)
from trackedit_jax.geometry.types import Camera, Tracks

__all__ = [
    "Camera", "Tracks", "TrackFile", "project", "unproject", "world_to_camera", "camera_to_world",
    "invert_extrinsics", "camera_centers", "in_front", "in_image", "pixels_to_grid", "grid_to_pixels",
    "load_tracks", "load_track_file", "save_tracks", "load_dycheck_cameras", "dycheck_camera_ids",
]
