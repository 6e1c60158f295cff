"""Settings added after keys were made stay out of the keys at their neutral values (old stores stay valid)."""
from types import SimpleNamespace

from omegaconf import OmegaConf

from ld3_cli.stages.keys import model_key, schedule_fields

SOLVER = SimpleNamespace(name="unipc", key_fields=lambda: {"name": "unipc", "order": 3})
DPMPP = SimpleNamespace(name="dpmpp", key_fields=lambda: {"name": "dpmpp", "order": 3})


def _train_fields(solver=SOLVER, **train):
    cfg = OmegaConf.create({"nfe": 5, "train": {"lr": 0.005, "learn": ["steps", "offsets"], **train}})
    return schedule_fields(cfg, solver, "teacher0")["train"]


def test_phase3_schedule_rates_enter_the_schedule_key_only_when_they_change_the_run():
    before = _train_fields()  # a config from before the option existed
    assert _train_fields(schedule_rates_coefficients="reset") == before
    carry = _train_fields(schedule_rates_coefficients="carry")
    assert carry != before and carry["schedule_rates_coefficients"] == "carry"


def test_phase2_steps_rates_enter_the_schedule_key_only_when_carried():
    before = _train_fields()
    assert _train_fields(steps_rates_offsets="reset") == before
    for mode in ("carry", "averages"):
        assert _train_fields(steps_rates_offsets=mode)["steps_rates_offsets"] == mode


def test_restarts_enter_the_schedule_key_only_above_one():
    before = _train_fields()
    assert _train_fields(restarts=1) == before
    assert _train_fields(restarts=3)["restarts"] == 3


def test_guidance_one_keeps_the_model_key():
    base = {"name": "mnist_gmm", "kind": "mnist_gmm", "conditional": True}
    assert model_key({**base, "guidance_scale": 1}) == model_key(base) == model_key({**base, "guidance_scale": 1.0})
    assert model_key({**base, "guidance_scale": 7.5}) != model_key(base)


def test_rho_gradient_keys_unipc_schedules_only_when_stopped():
    before = _train_fields()
    assert _train_fields(rho_gradient="full") == before
    assert _train_fields(rho_gradient="stopped")["rho_gradient"] == "stopped"
    assert _train_fields(DPMPP, rho_gradient="stopped") == _train_fields(DPMPP)  # no UniPC: nothing changes


def test_decouple_first_enters_the_schedule_key_only_when_on():
    before = _train_fields()
    assert _train_fields(decouple_first=False) == before
    assert _train_fields(decouple_first=True)["decouple_first"] is True


def test_phase_4_settings_key_only_runs_that_learn_the_residual():
    """``residual_joint`` (default 0.3 since it existed; runs before it trained the residual alone, as 0 does) keys
    a residual run only when not 0, and no phase-4 setting keys a run without the residual."""
    before = _train_fields()
    assert _train_fields(residual_joint=0.3, residual_width=32, iters_residual=10) == before
    learn = ["steps", "offsets", "coefficients", "residual"]
    alone = _train_fields(learn=learn)
    assert _train_fields(learn=learn, residual_joint=0.0) == alone and "residual_joint" not in alone
    assert _train_fields(learn=learn, residual_joint=0.3)["residual_joint"] == 0.3
    assert _train_fields(learn=learn, residual_width=32)["residual_width"] == 32
