"""The caption LM's backgrounds and in-context examples read from files in the reference's formats
(synret.caption_files). The fixtures are small files written here in the shapes the reference's
data_sourcing/synthetic/helper/ files have (their text is this project's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synret.caption_files import (
    REFERENCE_RAW,
    class_backgrounds,
    download_hint,
    places_category,
    read_backgrounds,
    read_examples,
    reference_url,
)

GENERIC = ["a park", "a studio"]


@pytest.fixture
def class_dict(tmp_path) -> str:
    """Like helper/imgnet_background_dict.json: class name -> backgrounds, capitalised."""
    path = tmp_path / "imgnet_background_dict.json"
    path.write_text(json.dumps({"tench": ["Lakes", "Slow Rivers"], "goldfish": ["Garden pond", "Aquarium"],
                                "Great White Shark": ["Open Ocean"], "sea lion": []}, indent=4))
    return str(path)


@pytest.fixture
def dataset_dict(tmp_path) -> str:
    """Like helper/ds_background_dict.json: one list per dataset."""
    path = tmp_path / "ds_background_dict.json"
    path.write_text(json.dumps({"cars": ["Highway", "Car wash"], "airplanes": ["Runway", "Hangar", "Sky"],
                                "flowers": ["Meadow"]}))
    return str(path)


@pytest.fixture
def places(tmp_path) -> str:
    """Like helper/places.txt: Places365 category paths with their index."""
    path = tmp_path / "places.txt"
    path.write_text("/a/airfield 0\n/a/airport_terminal 2\n/s/subway_station/platform 336\n"
                    "/s/subway_station/concourse 337\n\n/z/zen_garden 364\n")
    return str(path)


UTILS_PY = '''# an example-list module in the reference's layout
import os

relation_list = ['in', 'on', 'besides']

fg_example = [
    ('otter', "An otter floats on its back in a kelp bed."),
    ('canoe', "A green canoe rests on a pebbly shore."),
]

bg_example = [('harbour', "Fishing boats crowd a small harbour at dawn.")]

fgbg_example = [
    ('owl', 'barn', "An owl watches from a beam in an old barn."),
]

fgrel_example = [
    ('lamp', 'next to', "A reading lamp next to a pile of books."),
]

texture_example = [
    ('ribbed', "A ribbed knit sleeve in close-up."),
]

raise SystemExit("this file must be read, not run")
'''


# ---------------------------------------------------------------- backgrounds


def test_class_keyed_dict_gives_each_class_its_list(class_dict):
    found = class_backgrounds(["tench", "goldfish"], GENERIC, {"path": class_dict})
    assert found.per_label == [["Lakes", "Slow Rivers"], ["Garden pond", "Aquarium"]]
    assert found.without_entry == []


def test_class_without_entry_falls_back_and_is_counted(class_dict):
    # "great white shark" differs only in case; "sea lion" has an empty list; "okapi" has no entry
    found = class_backgrounds(["great white shark", "sea lion", "okapi", "tench"], GENERIC, {"path": class_dict})
    assert found.per_label == [["Open Ocean"], GENERIC, GENERIC, ["Lakes", "Slow Rivers"]]
    assert found.without_entry == ["sea lion", "okapi"]


def test_lowercase_as_the_reference_does_for_imagenet(class_dict):
    found = class_backgrounds(["tench"], GENERIC, {"path": class_dict, "lowercase": True})
    assert found.per_label == [["lakes", "slow rivers"]]


def test_dataset_keyed_dict_serves_every_class(dataset_dict):
    found = class_backgrounds(["707-320", "A380"], GENERIC, {"path": dataset_dict, "key": "airplanes"})
    assert found.per_label == [["Runway", "Hangar", "Sky"]] * 2 and found.without_entry == []


def test_dataset_key_that_the_file_lacks_names_the_key(dataset_dict):
    with pytest.raises(ValueError, match=r"'prompts\.llm\.backgrounds_file\.key'.*'birds'.*'airplanes'"):
        read_backgrounds(dataset_dict, "birds")


def test_places_txt_is_a_plain_list_of_categories(places):
    assert read_backgrounds(places) == ["airfield", "airport terminal", "subway station", "zen garden"]
    found = class_backgrounds(["cat", "dog"], GENERIC, {"path": places})
    assert found.per_label == [["airfield", "airport terminal", "subway station", "zen garden"]] * 2
    assert places_category("/s/subway_station/platform 336") == "subway station"
    assert places_category("  a sunny beach ") == "a sunny beach"
    with pytest.raises(ValueError, match=r"backgrounds_file\.key"):
        read_backgrounds(places, "cars")


def test_json_list_is_a_plain_list(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(["a quay", " ", "a moor"]))
    assert read_backgrounds(str(path)) == ["a quay", "a moor"]


def test_no_file_is_the_generic_list_for_everyone():
    found = class_backgrounds(["a", "b"], GENERIC, None)
    assert found.per_label == [GENERIC, GENERIC] and found.without_entry == []


def test_missing_backgrounds_file_names_key_path_and_url(tmp_path):
    missing = str(tmp_path / "ref" / "imgnet_background_dict.json")
    with pytest.raises(FileNotFoundError) as info:
        class_backgrounds(["tench"], GENERIC, {"path": missing})
    message = str(info.value)
    assert "config key 'prompts.llm.backgrounds_file.path'" in message and repr(missing) in message
    assert REFERENCE_RAW + "imgnet_background_dict.json" in message


def test_malformed_backgrounds_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"tench": "Lakes"}))
    with pytest.raises(ValueError, match=r"'tench' is not a list of strings"):
        read_backgrounds(str(path))


# ---------------------------------------------------------------- in-context examples


def test_reference_utils_py_is_read_not_run(tmp_path):
    path = tmp_path / "utils.py"
    path.write_text(UTILS_PY)
    examples = read_examples(str(path))  # the module would raise SystemExit if it were run
    assert set(examples) == {"class", "background", "relation", "texture"}  # bg_example has no prompt type
    assert examples["class"] == [("otter", "An otter floats on its back in a kelp bed."),
                                 ("canoe", "A green canoe rests on a pebbly shore.")]
    assert examples["background"] == [("owl", "barn", "An owl watches from a beam in an old barn.")]
    assert examples["relation"] == [("lamp", "next to", "A reading lamp next to a pile of books.")]
    assert examples["texture"] == [("ribbed", "A ribbed knit sleeve in close-up.")]


def test_examples_json_keyed_by_prompt_type(tmp_path):
    path = tmp_path / "examples.json"
    path.write_text(json.dumps({"class": [["heron", "A heron stands in the shallows."]],
                                "relation": [["cup", "under", "A cup under a dripping tap."]]}))
    assert read_examples(str(path)) == {"class": [("heron", "A heron stands in the shallows.")],
                                        "relation": [("cup", "under", "A cup under a dripping tap.")]}


@pytest.mark.parametrize("data, match", [
    ({"scene": [["x", "y"]]}, r"unknown prompt type\(s\) \['scene'\]"),
    ({"background": [["owl", "An owl."]]}, r"'background' example 0 .* must be 3 strings"),
    ({"class": []}, r"not a non-empty list"),
    ([["owl", "An owl."]], r"keyed by prompt type"),
])
def test_malformed_examples_json_names_the_key(tmp_path, data, match):
    path = tmp_path / "examples.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config key 'prompts\.llm\.examples_file'.*" + match):
        read_examples(str(path))


def test_missing_examples_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config key 'prompts\.llm\.examples_file': file .*utils\.py"):
        read_examples(str(tmp_path / "utils.py"))


def test_reference_urls():
    assert reference_url("data/reference_prompts/ds_background_dict.json") == (
        "https://raw.githubusercontent.com/scottgeng00/unmet-promise/main/data_sourcing/synthetic/helper/"
        "ds_background_dict.json")
    assert reference_url("mine/scenes.json") is None
    assert "README" in download_hint("mine/scenes.json")
    assert download_hint(str(Path("d") / "utils.py")).startswith("`mkdir -p d && curl -L -o d/utils.py https://")
