"""Motion edits: pure functions that turn source `Tracks`/`Camera` into target ones (numpy, host side).

Everything here is an edit of the world-space tracks or of the camera path; the model later sees the
result through `prepare_track_condition` (reprojection). Conventions:

* OpenCV camera axes (x right, y down, z forward); extrinsics are world-to-camera (F, 4, 4).
* Camera moves are expressed in the camera's own frame: pan turns right (+), tilt looks up (+), roll
  turns the camera clockwise as seen from behind it (+); dolly moves forward (+), truck right (+),
  pedestal up (+).
* Ramps: every amount (degrees, distance, offset, factor) is applied with a per-frame weight
  w(t) in [0, 1] from `ramp_weights(F, ease, start, end)`: 0 up to `start`, eased to 1 at `end`,
  1 afterwards; ease "constant" is a step to 1 at `start`. Scaling factors ramp geometrically
  (factor ** w).
* A selection is an (N,) bool mask over the points. Functions that change N (`drop_points`,
  `duplicate`) keep the order of the remaining points and carry `Tracks.ids` (source point index of
  each point) so the target can be paired with the source: source.xyz[:, target.ids] <-> target.xyz.
* Computation is float64; results are cast back to the input dtype.

Where each topic lives (this module only re-exports; import from here or from the topic module):

* `geometry.easing`: `EASES`, `ramp_weights`, `ease_curve` (the one easing curve), `eased_times`.
* `geometry.camera_edits`: `pan`, `tilt`, `roll`, `dolly`, `truck`, `pedestal` (`rotate_camera`,
  `move_camera`, `apply_camera_offset`, `local_offset`), `zoom`, `arc`.
* `geometry.camera_paths`: `stabilize`, `make_static`, `replace_path` (`fit_path_length`,
  `resample_poses`), `keyframes` (`interpolate_keyframes`), `camera_path_jerk`.
* `geometry.selection`: `select_box`, `select_mask`, `select_depth`, `select_ids`, `rigid_groups`,
  `group_at_pixel`, `kabsch`.
* `geometry.object_edits`: `translate`, `follow_path`, `rotate`, `scale`, `stretch`, `bend`,
  `move_depth`, `move_off_screen`, `subset`, `drop_points`, `duplicate`, `retime_map`, `retime`,
  `transfer_motion`.
* `geometry.edit_common`: `rotation_matrices`, `scene_centroid`, `selection_centroid` and the checks
  the modules above share.
"""

from __future__ import annotations

from trackedit_jax.geometry.camera_edits import (
    apply_camera_offset,
    arc,
    dolly,
    local_offset,
    move_camera,
    pan,
    pedestal,
    roll,
    rotate_camera,
    tilt,
    truck,
    zoom,
)
from trackedit_jax.geometry.camera_paths import (
    camera_path_jerk,
    fit_path_length,
    interpolate_keyframes,
    keyframes,
    make_static,
    replace_path,
    resample_poses,
    stabilise,
    stabilize,
)
from trackedit_jax.geometry.easing import EASES, ease_curve, eased_times, ramp_weights
from trackedit_jax.geometry.edit_common import rotation_matrices, scene_centroid, selection_centroid
from trackedit_jax.geometry.object_edits import (
    bend,
    drop_points,
    duplicate,
    follow_path,
    move_depth,
    move_off_screen,
    retime,
    retime_map,
    rotate,
    scale,
    stretch,
    subset,
    transfer_motion,
    translate,
)
from trackedit_jax.geometry.selection import (
    group_at_pixel,
    kabsch,
    rigid_groups,
    select_box,
    select_depth,
    select_ids,
    select_mask,
)

_kabsch = kabsch  # the name it had before the split (tests and notebooks call E._kabsch)

__all__ = [
    "EASES",
    "ramp_weights",
    "ease_curve",
    "eased_times",
    "pan",
    "tilt",
    "roll",
    "dolly",
    "truck",
    "pedestal",
    "rotate_camera",
    "move_camera",
    "apply_camera_offset",
    "local_offset",
    "zoom",
    "arc",
    "stabilize",
    "stabilise",
    "make_static",
    "replace_path",
    "fit_path_length",
    "resample_poses",
    "keyframes",
    "interpolate_keyframes",
    "camera_path_jerk",
    "select_box",
    "select_mask",
    "select_depth",
    "select_ids",
    "rigid_groups",
    "group_at_pixel",
    "kabsch",
    "translate",
    "follow_path",
    "rotate",
    "scale",
    "stretch",
    "bend",
    "move_depth",
    "move_off_screen",
    "subset",
    "drop_points",
    "duplicate",
    "retime_map",
    "retime",
    "transfer_motion",
    "rotation_matrices",
    "scene_centroid",
    "selection_centroid",
]
