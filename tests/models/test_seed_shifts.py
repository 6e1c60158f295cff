"""The seed shifts of ld3_cli.data.seeds: one per purpose, distinct, and the ones the draws use."""
from __future__ import annotations

from dataclasses import astuple, fields

import numpy as np
import torch

from ld3_cli.data.seeds import SEED_SHIFTS
from ld3_cli.metrics.pixel_fd import exact_sample_images
from ld3_cli.models.base import ConditionSpec
from ld3_cli.models.examples import GaussianDenoiser
from ld3_cli.models.prompts import PromptBank

SEEDS = torch.arange(0, 64)


def _randint(high: int, seed: int) -> int:
    return int(torch.randint(high, (1,), generator=torch.Generator().manual_seed(seed)).item())


def test_every_purpose_has_its_own_nonzero_shift():
    # shift 0 is the stream of a sample's noise; two purposes sharing a shift would draw correlated values
    shifts = astuple(SEED_SHIFTS)
    assert len(shifts) == len(fields(SEED_SHIFTS)) and len(set(shifts)) == len(shifts)
    assert all(isinstance(s, int) and s > 0 for s in shifts)


def test_class_labels_and_prompts_are_drawn_with_their_shift():
    model = GaussianDenoiser(shape=(1, 4, 4))
    model.condition = ConditionSpec(kind="class", num_classes=10)
    labels = model.draw_conditions(SEEDS).tolist()
    assert labels == [_randint(10, s + SEED_SHIFTS.class_label) for s in SEEDS.tolist()]
    picks = PromptBank([str(i) for i in range(37)], selection="random").select(SEEDS).tolist()
    assert picks == [_randint(37, s + SEED_SHIFTS.prompt) for s in SEEDS.tolist()]
    # the draws are functions of the seed alone: a subset of seeds gets the same values
    assert model.draw_conditions(SEEDS[5:9]).tolist() == labels[5:9]


def test_exact_samples_default_to_their_shift_and_the_floor_set_is_another():
    model = GaussianDenoiser(shape=(1, 4, 4))
    default = np.concatenate(list(exact_sample_images(model, 8, 3)))
    named = np.concatenate(list(exact_sample_images(model, 8, 3, SEED_SHIFTS.exact_samples)))
    floor = np.concatenate(list(exact_sample_images(model, 8, 3, SEED_SHIFTS.noise_floor)))
    np.testing.assert_array_equal(default, named)
    assert not np.array_equal(default, floor)
