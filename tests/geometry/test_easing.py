"""trackedit_jax/geometry/easing.py: the one easing curve behind ramps and keyframed paths."""

import numpy as np
import pytest

from trackedit_jax.geometry.easing import EASES, check_ease, ease_curve, eased_times, ramp_weights

SMOOTH = ("linear", "ease_in", "ease_out", "ease_in_out")


@pytest.mark.parametrize("ease", SMOOTH)
def test_ease_curve_endpoints_and_monotone(ease):
    u = np.linspace(0.0, 1.0, 101)
    v = ease_curve(u, ease)
    assert v[0] == 0.0 and v[-1] == 1.0
    assert np.all(np.diff(v) >= 0)


def test_ease_curve_closed_forms():
    u = np.linspace(0.0, 1.0, 11)
    np.testing.assert_array_equal(ease_curve(u, "ease_in"), u**2)
    np.testing.assert_allclose(ease_curve(u, "ease_out"), 1 - (1 - u) ** 2)
    np.testing.assert_allclose(ease_curve(u, "ease_in_out"), 3 * u**2 - 2 * u**3, atol=1e-15)
    # ease_in and ease_out mirror each other; smoothstep is point-symmetric about (1/2, 1/2)
    np.testing.assert_allclose(ease_curve(u, "ease_out"), 1 - ease_curve(1 - u, "ease_in"))
    np.testing.assert_allclose(ease_curve(u, "ease_in_out") + ease_curve(1 - u, "ease_in_out"), 1.0)
    np.testing.assert_array_equal(ease_curve(u, "constant"), (u >= 1).astype(float))


@pytest.mark.parametrize("ease", SMOOTH)
def test_ramp_weights_and_keyframe_times_share_the_curve(ease):
    F, start, end = 21, 4, 14
    u = np.clip((np.arange(F) - start) / (end - start), 0, 1)
    np.testing.assert_array_equal(ramp_weights(F, ease, start, end), ease_curve(u, ease))
    # one keyframe segment [start, end]: eased time = start + curve(u) * (end - start)
    kf = np.array([start, end], np.float64)
    np.testing.assert_allclose(eased_times(kf, F, ease), start + ease_curve(u, ease) * (end - start))


def test_eased_times_hit_every_key():
    kf = np.array([0.0, 3.0, 10.0, 16.0])
    for ease in EASES:
        t = eased_times(kf, 17, ease)
        np.testing.assert_array_equal(t[kf.astype(int)], kf)


def test_check_ease_names_the_choices():
    with pytest.raises(ValueError, match="ease must be one of"):
        check_ease("smooth")
    with pytest.raises(ValueError, match="ease must be one of"):
        ramp_weights(5, "smooth")
