"""A stand-in for the parts of ComfyUI a custom sampler node meets, written for the tests from facts read in
ComfyUI's source (comfyanonymous/ComfyUI, comfy/samplers.py and comfy/model_sampling.py at commit
005e370254d42fcc07904b607b2354dc091f814f; ComfyUI itself is too large to install here).  Not ComfyUI's code:
only its calling convention, so the node pack can be exercised the way ComfyUI exercises it.

* ``Sampler.max_denoise(model_wrap, sigmas)``: True when ``sigmas[0]`` is (within 1e-5 relative) or above the
  model's ``sigma_max``.
* ``KSAMPLER(sampler_function, extra_options={}, inpaint_options={})``; ``.sample(model_wrap, sigmas, extra_args,
  callback, noise, latent_image, denoise_mask, disable_pbar)`` scales the noise with the model sampling's
  ``noise_scaling(sigmas[0], noise, latent_image, max_denoise)``, calls
  ``sampler_function(model_k, noise, sigmas, extra_args=..., callback=k_callback, disable=..., **extra_options)``
  where ``model_k(x, sigma, **extra_args)`` returns the denoised image, then ``inverse_noise_scaling``.
* EPS model sampling (``ModelSamplingDiscrete``): ``sigmas = sqrt((1 - abar) / abar)`` (float32),
  ``timestep(sigma)`` = the index of the nearest ``log sigma`` (the network's time, rounded), input
  ``x / sqrt(sigma^2 + 1)``, denoised ``x - sigma * eps``; ``noise_scaling`` is ``noise * sqrt(1 + sigma^2)`` at
  max denoise, else ``noise * sigma``, plus the latent image; ``inverse_noise_scaling`` is the identity.
* Continuous EDM model sampling (``ModelSamplingContinuousEDM``): continuous time (``log(sigma) / 4``).
"""
from __future__ import annotations

import math
import sys
import types

import torch


class Sampler:
    def max_denoise(self, model_wrap, sigmas):
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler):
    def __init__(self, sampler_function, extra_options=None, inpaint_options=None):
        self.sampler_function = sampler_function
        self.extra_options = dict(extra_options or {})
        self.inpaint_options = dict(inpaint_options or {})

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        def model_k(x, sigma, **kwargs):
            return model_wrap(x, sigma, **kwargs)

        sampling = model_wrap.inner_model.model_sampling
        noise = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        total = len(sigmas) - 1
        k_callback = None if callback is None else (lambda d: callback(d["i"], d["denoised"], d["x"], total))
        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return sampling.inverse_noise_scaling(sigmas[-1], samples)


class EpsDiscreteSampling:
    """ModelSamplingDiscrete with EPS prediction over ``alphas_cumprod``."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def calculate_input(self, sigma, x):
        return x / (sigma.view(-1, 1, 1, 1) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, out, x):
        return x - out * sigma.view(-1, 1, 1, 1)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class EDMSampling(EpsDiscreteSampling):
    """ModelSamplingContinuousEDM's range and noise scaling (the denoiser it wraps returns x0 itself)."""

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()


class EpsModel:
    """A discrete-time eps network under EPS model sampling: ComfyUI's ``BaseModel.apply_model``."""

    def __init__(self, eps_net, alphas_cumprod):
        self.model_sampling = EpsDiscreteSampling(alphas_cumprod)
        self.eps_net = eps_net

    def apply_model(self, x, sigma):
        s = self.model_sampling
        out = self.eps_net(s.calculate_input(sigma, x), s.timestep(sigma).float())
        return s.calculate_denoised(sigma, out, x)


class X0Model:
    """A model that returns the denoised image itself (the exact mixture), with EDM's range."""

    def __init__(self, denoiser, sigma_min, sigma_max):
        self.model_sampling = EDMSampling(sigma_min, sigma_max)
        self.denoiser = denoiser

    def apply_model(self, x, sigma):
        return self.denoiser(x, sigma)


class ModelWrap:
    """What KSAMPLER receives as ``model_wrap`` (a guider without conditions: ``inner_model.apply_model``)."""

    def __init__(self, inner_model):
        self.inner_model = inner_model

    def __call__(self, x, sigma, **kwargs):
        return self.inner_model.apply_model(x, sigma)


def install() -> None:
    """Register this stand-in as the modules ``comfy`` and ``comfy.samplers``."""
    comfy = types.ModuleType("comfy")
    samplers = types.ModuleType("comfy.samplers")
    samplers.Sampler, samplers.KSAMPLER = Sampler, KSAMPLER
    comfy.samplers = samplers
    sys.modules["comfy"], sys.modules["comfy.samplers"] = comfy, samplers


def sample_custom(sampler, sigmas, model_wrap, noise, latent_image=None):
    """SamplerCustom's call: ``sampler.sample(...)`` with an empty latent."""
    latent = torch.zeros_like(noise) if latent_image is None else latent_image
    return sampler.sample(model_wrap, sigmas, {}, None, noise, latent, None, True)
