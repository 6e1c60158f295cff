"""ld3: learn the time discretization of diffusion-ODE samplers (LD3, Tong et al., ICLR 2025).

Conventions used throughout the package (see docs/concepts.md):

* Every model is an x0-predicting denoiser in EDM sigma-space, ``D(x, sigma, cond) -> x0_hat``
  with ``x = x0 + sigma * n``.  ``sigma`` is a tensor of shape ``[B]``.
* Schedules are decreasing sigma lists ``sigmas[0] = sigma_max > ... > sigmas[N] = sigma_min``.
* log-SNR ``lambda = -log(sigma)`` (increasing along a sampling run).
"""
__version__ = "0.1.0"
