"""Rectified-flow maths (`flow`: timesteps, shift, x_t, velocity targets) and samplers (`samplers`)."""
