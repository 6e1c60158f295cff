"""The train options' checks: every declared option has a rule its default passes, bad values are one line."""
import pytest

from ld3_cli.errors import ConfigError
from ld3_cli.ld3.options import TRAIN_OPTIONS, TRAIN_RUNTIME_KEYS, TrainOptions, check_train_options


def _defaults() -> dict:
    return {name: (list(o.default) if isinstance(o.default, tuple) else o.default)
            for name, o in TRAIN_OPTIONS.items()}


def test_the_defaults_pass_and_lists_become_tuples():
    opts = check_train_options(_defaults())
    assert opts == TrainOptions()
    assert opts.learn == ("steps", "offsets") and isinstance(opts.init_candidates, tuple)
    assert TRAIN_RUNTIME_KEYS == {"val_batch_size", "lpips_weights"}


@pytest.mark.parametrize("key,value,needle", [
    ("param", "sigma", "train.param must be lambda or time, got 'sigma'"),
    ("loss", "l3", "train.loss must be auto, l2, l1, pseudo_huber or lpips, got 'l3'"),
    ("offsets_optimizer", "adam", "train.offsets_optimizer must be rmsprop or sgd, got 'adam'"),
    ("coefficients_optimizer", "sgd", "train.coefficients_optimizer must be adam or rmsprop, got 'sgd'"),
    ("coefficient_decay", 1.0, "train.coefficient_decay must be in [0, 1), got 1.0"),
    ("coefficient_constraint", 1, "train.coefficient_constraint must be true, false or last, got 1"),
    ("init", "fancy", "train.init must be auto or one of"),
    ("init_candidates", [], "train.init_candidates must be a non-empty list"),
    ("init_candidates", ["edm", "fancy"], "train.init_candidates must be a non-empty list of"),
    ("val_fraction", 1.0, "train.val_fraction must be in (0, 1), got 1.0"),
    ("batch_size", 0, "train.batch_size must be a whole number >= 1, got 0"),
    ("batch_size", 2.5, "train.batch_size must be a whole number >= 1, got 2.5"),
    ("batch_size", True, "train.batch_size must be a whole number >= 1, got True"),
    ("lr", "fast", "train.lr must be > 0, got 'fast'"),
    ("r", -1.0, "train.r must be >= 0 (0 = hard loss) or null, got -1.0"),
    ("learn", ["steps", "speed"],
     "train.learn must be a non-empty list of ['steps', 'offsets', 'coefficients', 'residual']"),
    ("learn", ["steps", "offsets", "residual"], "has residual without coefficients: the residual operator trains on "
     "the learned solver (phase 3 before it); use train.learn=[steps,offsets,coefficients,residual]"),
    ("loss_residual", "huber", "train.loss_residual must be same, auto, l2, l1, pseudo_huber or lpips"),
    ("offset_units", "seconds", "train.offset_units must be window or official, got 'seconds'"),
    ("eval_scale", "ve", "train.eval_scale must be model, vp or none, got 've'"),
    ("noise_estimate", "mid", "train.noise_estimate must be eval or step, got 'mid'"),
    ("alternate_rounds", -1, "train.alternate_rounds must be a whole number >= 0, got -1"),
    ("grad_checkpoint", "sometimes", "train.grad_checkpoint must be auto, true or false, got 'sometimes'"),
    ("grad_checkpoint", 1, "train.grad_checkpoint must be auto, true or false, got 1"),
])
def test_bad_values_are_refused_naming_the_option(key, value, needle):
    with pytest.raises(ConfigError) as e:
        check_train_options({**_defaults(), key: value})
    assert needle in str(e.value)


def test_unknown_options_are_refused():
    with pytest.raises(ConfigError, match=r"unknown train option\(s\) \['lrr'\]"):
        check_train_options({**_defaults(), "lrr": 1})
    with pytest.raises(ConfigError, match=r"unknown train option\(s\) \['lrr'\]"):
        TrainOptions().replace(lrr=1)


def test_options_are_immutable_and_replace_checks_the_changes():
    opts = TrainOptions(lr=0.01)
    with pytest.raises(AttributeError, match="immutable"):
        opts.lr = 0.1
    changed = opts.replace(batch_size=4, learn=["steps"])
    assert (changed.batch_size, changed.learn, changed.lr) == (4, ("steps",), 0.01) and opts.batch_size == 2
    with pytest.raises(ConfigError, match="train.batch_size must be a whole number >= 1, got 0"):
        opts.replace(batch_size=0)
    with pytest.raises(AttributeError, match="no option 'lrr'"):
        assert opts.lrr is None  # never reached: the read raises
    import copy
    import pickle
    assert copy.deepcopy(changed) == changed == pickle.loads(pickle.dumps(changed))
