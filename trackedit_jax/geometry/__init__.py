"""Cameras, tracks, projection, the canonical track file, model-input conditioning and motion edits."""

from trackedit_jax.geometry.conditioning import (
    TrackCondition,
    disparity_range,
    latent_frame_count,
    latent_frame_indices,
    masked_quantile,
    normalize_disparity,
    prepare_track_condition,
    prepare_track_condition_batch,
    resample_to_latent_frames,
)
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
from trackedit_jax.geometry.validation import (
    check_extrinsics,
    check_frame_counts,
    check_intrinsics,
    check_track_array,
    validate_inputs,
)

__all__ = [
    "Camera",
    "Tracks",
    "TrackFile",
    "project",
    "unproject",
    "world_to_camera",
    "camera_to_world",
    "invert_extrinsics",
    "camera_centers",
    "in_front",
    "in_image",
    "pixels_to_grid",
    "grid_to_pixels",
    "load_tracks",
    "load_track_file",
    "save_tracks",
    "load_dycheck_cameras",
    "dycheck_camera_ids",
    "TrackCondition",
    "prepare_track_condition",
    "prepare_track_condition_batch",
    "latent_frame_count",
    "latent_frame_indices",
    "resample_to_latent_frames",
    "masked_quantile",
    "disparity_range",
    "normalize_disparity",
    "validate_inputs",
    "check_track_array",
    "check_intrinsics",
    "check_extrinsics",
    "check_frame_counts",
]
# Motion edits live in submodules (imported on use): geometry.edits (the operations' public facade over
# easing, camera_edits, camera_paths, selection, object_edits), geometry.edit_spec (the YAML/JSON spec:
# spec_source, spec_schema, edit_apply), geometry.report (warnings for risky targets).
