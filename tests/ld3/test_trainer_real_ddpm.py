"""LD3 on the real pretrained MNIST DDPM (../shared): the learned schedule beats the baselines on held-out noise."""
import pytest
import torch

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.ld3 import learn_schedule
from ld3_cli.models.mnist_ddpm import MnistDDPM, load_state_dict
from ld3_cli.schedules import discretize
from ld3_cli.solvers import solve


@pytest.mark.parametrize("solver,opts,nfe", [("unipc", {"order": 3}, 5)])
def test_learned_schedule_beats_baselines_on_the_real_ddpm(ddpm_weights, solver, opts, nfe):
    model = MnistDDPM(load_state_dict(ddpm_weights)).eval().requires_grad_(False)
    smax = model.schedule.sigma_max

    def teacher(eps):
        with torch.no_grad():
            return model.decode(solve("unipc", model, eps * smax, discretize("logsnr", 40, model.schedule), order=3))

    x = noise_for_seeds(range(24), (1, 28, 28))
    held = noise_for_seeds(range(50_000, 50_024), (1, 28, 28))
    y, y_held = teacher(x), teacher(held)
    res = learn_schedule(model, solver, nfe, x, y, solver_options=opts, batch_size=12, iters_phase1=10,
                         iters_phase2=10)

    def rmse(run):
        with torch.no_grad():
            out = model.decode(run(held * smax))
        return float(((out - y_held) ** 2).mean().sqrt())

    base = {k: rmse(lambda x, k=k: solve(solver, model, x, discretize(k, nfe, model.schedule), **opts))
            for k in ("time_uniform", "time_quadratic", "logsnr", "edm")}
    ours = rmse(lambda x: res.solve(model, x))  # exactly what was learned (VP: the rescaled decoupled evaluation)
    assert ours < min(base.values()), (ours, base)
    assert res.best_val < res.init_val
