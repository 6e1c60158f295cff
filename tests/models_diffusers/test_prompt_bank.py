"""Prompt sources (list, .txt, COCO captions .json) and the per-seed prompt choice."""
from __future__ import annotations

import json

import pytest
import torch

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.models.prompts import NULL_PROMPT, PromptBank, read_prompts_file


def test_txt_and_coco_json_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red car\n\n  a cat on a mat  \nmountains\n", encoding="utf-8")
    assert read_prompts_file(txt) == ["a red car", "a cat on a mat", "mountains"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 10, "caption": "A man riding a horse. "},
        {"image_id": 2, "id": 11, "caption": "Two dogs"}]}), encoding="utf-8")
    assert read_prompts_file(coco) == ["A man riding a horse.", "Two dogs"]
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps(["x", "y"]))
    assert read_prompts_file(lst) == ["x", "y"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ConfigError):
        read_prompts_file(bad)
    with pytest.raises(MissingFileError, match=str(tmp_path / "nope.txt")):
        read_prompts_file(tmp_path / "nope.txt")


def test_cycle_selection_uses_every_prompt_once_per_period():
    bank = PromptBank(["p0", "p1", "p2"])
    idx = bank.select(torch.arange(7))
    assert idx.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert bank.texts(torch.tensor([2, NULL_PROMPT, 0])) == ["p2", "", "p0"]
    with pytest.raises(ConfigError):
        bank.texts(torch.tensor([3]))


def test_random_selection_is_a_function_of_each_seed():
    bank = PromptBank([f"p{i}" for i in range(50)], negative="blurry", selection="random")
    a = bank.select(torch.tensor([5, 9, 123, 5]))
    b = bank.select(torch.tensor([123, 5]))
    assert a[0] == a[3] and a[2] == b[0] and a[0] == b[1]
    many = bank.select(torch.arange(400))
    assert many.min() >= 0 and many.max() < 50 and len(set(many.tolist())) > 30
    assert bank.texts(torch.tensor([NULL_PROMPT])) == ["blurry"]


def test_from_config(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\nthree\n")
    bank = PromptBank.from_config({"prompts_file": str(f), "max_prompts": 2, "negative_prompt": "bad"})
    assert bank.prompts == ["one", "two"] and bank.negative == "bad"
    assert PromptBank.from_config({"prompts": "single"}).prompts == ["single"]
    assert PromptBank.from_config({}) is None
    with pytest.raises(ConfigError):
        PromptBank.from_config({"prompts": ["a"], "prompts_file": str(f)})
    with pytest.raises(ConfigError):
        PromptBank.from_config({"prompts": ["a"], "prompt_selection": "shuffle"})
