"""The train options' checks: every TrainOptions field has one, the defaults pass, bad values are one line."""
import dataclasses

import pytest

from ld3_cli.errors import ConfigError
from ld3_cli.ld3.options import TrainOptions, check_train_options, option_rules
from ld3_cli.schedules import available


def _defaults() -> dict:
    d = dataclasses.asdict(TrainOptions())
    d["init_candidates"] = list(d["init_candidates"])
    d["learn"] = list(d["learn"])
    return d


def test_every_train_option_is_checked():
    assert set(option_rules(available())) == {f.name for f in dataclasses.fields(TrainOptions)}


def test_the_defaults_pass():
    assert check_train_options(_defaults()) == TrainOptions()


@pytest.mark.parametrize("key,value,needle", [
    ("param", "sigma", "train.param must be lambda or time, got 'sigma'"),
    ("loss", "l3", "train.loss must be auto, l2, l1, pseudo_huber or lpips, got 'l3'"),
    ("offsets_optimizer", "adam", "train.offsets_optimizer must be rmsprop or sgd, got 'adam'"),
    ("coefficients_optimizer", "sgd", "train.coefficients_optimizer must be adam or rmsprop, got 'sgd'"),
    ("coefficient_decay", 1.0, "train.coefficient_decay must be in [0, 1), got 1.0"),
    ("init", "fancy", "train.init must be auto or one of"),
    ("init_candidates", [], "train.init_candidates must be a non-empty list"),
    ("val_fraction", 1.0, "train.val_fraction must be in (0, 1), got 1.0"),
    ("batch_size", 0, "train.batch_size must be a whole number >= 1, got 0"),
    ("batch_size", 2.5, "train.batch_size must be a whole number >= 1, got 2.5"),
    ("lr", "fast", "train.lr must be > 0, got 'fast'"),
    ("r", -1.0, "train.r must be >= 0 (0 = hard loss) or null, got -1.0"),
    ("learn", ["steps", "speed"], "train.learn must be a non-empty list of ['steps', 'offsets', 'coefficients']"),
    ("offset_units", "seconds", "train.offset_units must be window or official, got 'seconds'"),
    ("eval_scale", "ve", "train.eval_scale must be model, vp or none, got 've'"),
    ("noise_estimate", "mid", "train.noise_estimate must be eval or step, got 'mid'"),
    ("alternate_rounds", -1, "train.alternate_rounds must be a whole number >= 0, got -1"),
    ("grad_checkpoint", "sometimes", "train.grad_checkpoint must be auto, true or false, got 'sometimes'"),
])
def test_bad_values_are_refused_naming_the_option(key, value, needle):
    with pytest.raises(ConfigError) as e:
        check_train_options({**_defaults(), key: value})
    assert needle in str(e.value)


def test_unknown_options_are_refused():
    with pytest.raises(ConfigError, match=r"unknown train option\(s\) \['lrr'\]"):
        check_train_options({**_defaults(), "lrr": 1})
