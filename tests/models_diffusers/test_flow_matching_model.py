"""kind: flow -- the analytic Gaussian flow model's denoiser is the exact Gaussian posterior mean."""
from __future__ import annotations

import pytest
import torch

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.models import BuildContext, build_model
from ld3_cli.models.flow import GaussianFlowVelocity
from ld3_cli.models.guidance import CFGDenoiser

SHAPE = [2, 4, 4]


def _cfg(**kw):
    net = {"_target_": "ld3_cli.models.flow.GaussianFlowVelocity", "mean": 0.3, "std": 0.6, "shape": SHAPE,
           **kw.pop("net", {})}
    return {"kind": "flow", "name": "gauss", "network": net, "shape": SHAPE, **kw}


def _xs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.003, 0.2, 1.0, 7.5, 60.0], dtype=dtype)
    x0 = 0.3 + 0.6 * torch.randn(5, *SHAPE, generator=g, dtype=dtype)
    return x0 + sigma.view(-1, 1, 1, 1) * torch.randn(5, *SHAPE, generator=g, dtype=dtype), sigma


@pytest.mark.parametrize("prediction,time_input,time_scale", [
    ("velocity", "t", 1.0), ("velocity", "t*1000", 1000.0), ("x0", "t", 1.0), ("eps", "t*1000", 1000.0)])
def test_flow_denoiser_is_gaussian_posterior_mean(prediction, time_input, time_scale):
    model = build_model(_cfg(prediction=prediction, time_input=time_input,
                             net={"time_scale": time_scale, "prediction": prediction}), BuildContext())
    x, sigma = _xs()
    expected = 0.3 + 0.36 / (0.36 + sigma.view(-1, 1, 1, 1) ** 2) * (x - 0.3)
    torch.testing.assert_close(model(x, sigma), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.net.posterior_mean(x, sigma), expected, rtol=1e-12, atol=1e-12)


def test_flow_state_convention_and_velocity_relation():
    """x_t = (1-t) x0 + t n with sigma = t/(1-t); x0_hat = x_t - t v."""
    model = build_model(_cfg(), BuildContext())
    x, sigma = _xs()
    t = sigma / (1 + sigma)
    torch.testing.assert_close(model.schedule.t(sigma), t, rtol=1e-14, atol=0)
    x_t = (1 - t).view(-1, 1, 1, 1) * x
    v = model.net(x_t, t)
    torch.testing.assert_close(model(x, sigma), x_t - t.view(-1, 1, 1, 1) * v, rtol=1e-12, atol=1e-12)
    # the exact velocity field is what flow-matching training regresses on: E[n - x0 | x_t] on samples
    g = torch.Generator().manual_seed(1)
    x0 = 0.3 + 0.6 * torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
    tt = torch.full((200_000,), 0.4, dtype=torch.float64)
    xt = 0.6 * x0 + 0.4 * n
    net = GaussianFlowVelocity(0.3, 0.6, shape=(1, 1, 1))
    resid = (n - x0) - net(xt, tt)                             # regression residual is uncorrelated with x_t
    assert abs(float((resid * xt).mean())) < 5e-3 and abs(float(resid.mean())) < 5e-3
    assert model.schedule.sigma_max == pytest.approx(80.0) and model.schedule.sigma_min == pytest.approx(0.002)


def test_flow_class_conditional_guidance_and_errors(tmp_path):
    model = build_model(_cfg(num_classes=4, null_label=4, guidance_scale=3.0), BuildContext())
    assert isinstance(model, CFGDenoiser) and model.condition.kind == "class"
    x, sigma = _xs()
    labels = model.draw_conditions(torch.arange(5))
    assert labels.min() >= 0 and labels.max() < 4
    torch.testing.assert_close(model(x, sigma, labels), model.inner(x, sigma, labels), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="null_label"):
        build_model(_cfg(num_classes=4, guidance_scale=3.0), BuildContext())
    with pytest.raises(ConfigError):
        build_model({"kind": "flow", "shape": SHAPE}, BuildContext())
    with pytest.raises(ConfigError):
        build_model(_cfg(prediction="score"), BuildContext())
    with pytest.raises(MissingFileError, match="missing.safetensors"):
        build_model(_cfg(checkpoint=str(tmp_path / "missing.safetensors")), BuildContext())


def test_flow_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = GaussianFlowVelocity(mean=torch.linspace(-1, 1, 32).view(SHAPE), std=0.6, shape=SHAPE)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "g.safetensors"))
    model = build_model(_cfg(checkpoint=str(tmp_path / "g.safetensors")), BuildContext())
    torch.testing.assert_close(model.net.mean, src.mean, rtol=0, atol=0)
