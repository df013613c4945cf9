"""Backgrounds and in-context examples of the caption LM, read from files in the reference's formats.

The reference code (scottgeng00/unmet-promise, ``data_sourcing/synthetic/helper/``) keeps them in:

- background dicts, JSON objects whose values are lists of backgrounds: keyed by class name
  (``imgnet_background_dict.json``: ImageNet's OpenAI class names; ``iwildcam_background_dict.json``),
  or by dataset (``ds_background_dict.json``: ``cars``, ``airplanes``, ``food``, ``pets``, ``flowers``,
  ``birds``), where one list serves every class of the dataset (``backgrounds_file.key``);
- ``places.txt``: Places365 categories, one ``/a/airfield 0`` a line (its background-only prompts);
- ``utils.py``: the in-context examples, inline as Python lists of tuples (``fg_example``,
  ``fgbg_example``, ``fgrel_example``, ``texture_example``). It is read with :mod:`ast`, never run.

This project's own examples format is JSON keyed by prompt type, each example a list of strings: the
prompt's inputs, then the caption (``{"class": [["tabby cat", "a tabby cat asleep on ..."]],
"background": [["camel", "desert", "a camel ..."]], "relation": [["mug", "next to", "..."]],
"texture": [["striped", "..."]]}``). Kept free of heavy imports (the preflight uses it).
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

REFERENCE_REPO = "scottgeng00/unmet-promise"
REFERENCE_HELPER = "data_sourcing/synthetic/helper"
REFERENCE_RAW = f"https://raw.githubusercontent.com/{REFERENCE_REPO}/main/{REFERENCE_HELPER}/"
REFERENCE_FILES = ("ds_background_dict.json", "imgnet_background_dict.json", "iwildcam_background_dict.json",
                   "imgnet21k_combined_background_dict.json", "places.txt", "utils.py")

# the inputs each prompt type's examples carry before the caption
EXAMPLE_INPUTS = {"class": 1, "background": 2, "relation": 2, "texture": 1}
# the reference's utils.py: which list holds the examples of which prompt type (bg_example, for its
# background-only prompts, has no prompt type here)
REFERENCE_EXAMPLE_LISTS = {"fg_example": "class", "fgbg_example": "background", "fgrel_example": "relation",
                           "texture_example": "texture"}

BACKGROUNDS_KEY = "prompts.llm.backgrounds_file"
EXAMPLES_KEY = "prompts.llm.examples_file"


def reference_url(path: str) -> str | None:
    """The raw GitHub URL of a reference helper file with this file name, or None."""
    name = os.path.basename(path)
    return REFERENCE_RAW + name if name in REFERENCE_FILES else None


def download_hint(path: str) -> str:
    url = reference_url(path)
    if url:
        folder = os.path.dirname(path) or "."
        return f"`mkdir -p {folder} && curl -L -o {path} {url}` (README: the reference's caption files)"
    return ("a file in one of the reference's formats (a JSON dict of lists, a places.txt-style list, its "
            "helper/utils.py) or this project's examples JSON; see README and synret.caption_files")


def _need_file(path: str, key: str) -> None:
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"config key '{key}': file {path!r} does not exist; get it with {download_hint(path)}")


# ---------------------------------------------------------------- backgrounds


def places_category(line: str) -> str:
    """A background from one line of a plain list: the Places365 category of ``/a/airfield 0`` (its
    first path part, ``/s/subway_station/platform`` giving "subway station", as the reference reads
    it), else the stripped line itself."""
    line = line.strip()
    if line.startswith("/"):
        parts = line.split()[0].split("/")
        return (parts[2] if len(parts) > 2 else parts[-1]).replace("_", " ").strip()
    return line


def read_backgrounds(path: str, key: str | None = None,
                     cfg_key: str = BACKGROUNDS_KEY) -> dict[str, list[str]] | list[str]:
    """A backgrounds file: class name -> backgrounds (a JSON dict read without ``key``), or one list for
    every class (a JSON dict's entry ``key``, a JSON list, or a plain-text list such as places.txt)."""
    _need_file(path, f"{cfg_key}.path")
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config key '{cfg_key}.path': {path!r} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            bad = [k for k, v in data.items() if not (isinstance(v, list) and all(isinstance(x, str) for x in v))]
            if bad:
                raise ValueError(f"config key '{cfg_key}.path': in {path!r}, the entry {bad[0]!r} is not a list of "
                                 "strings")
            if key is None:
                return {k: [x.strip() for x in v if x.strip()] for k, v in data.items()}
            if key not in data:
                raise ValueError(f"config key '{cfg_key}.key': {path!r} has no entry {key!r} "
                                 f"(it has {', '.join(map(repr, list(data)[:12]))})")
            return [x.strip() for x in data[key] if x.strip()]
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            shared = [x.strip() for x in data if x.strip()]
        else:
            raise ValueError(f"config key '{cfg_key}.path': {path!r} is neither a dict of lists nor a list of strings")
    else:
        shared = [places_category(line) for line in text.splitlines() if line.strip()]
    if key is not None:
        raise ValueError(f"config key '{cfg_key}.key': {path!r} is one list, it has no entries to pick {key!r} from")
    return list(dict.fromkeys(x for x in shared if x))  # places.txt repeats a category for its sub-scenes


@dataclass
class ClassBackgrounds:
    """The backgrounds each class draws from (index: label), and the classes the file had no entry for."""

    per_label: list[list[str]]
    without_entry: list[str] = field(default_factory=list)


def class_backgrounds(classnames: Sequence[str], generic: Sequence[str], spec: dict | None,
                      cfg_key: str = BACKGROUNDS_KEY) -> ClassBackgrounds:
    """Per class, its list from the backgrounds file (``spec``: path, key, lowercase), else ``generic``.

    A dict keyed by class name is looked up by the class name as written, then ignoring case; a class
    with no (or an empty) entry draws from ``generic`` and is listed in ``without_entry``.
    """
    if not spec or not spec.get("path"):
        return ClassBackgrounds([list(generic) for _ in classnames])
    data = read_backgrounds(spec["path"], spec.get("key"), cfg_key)
    lower = (lambda xs: [x.lower() for x in xs]) if spec.get("lowercase") else list
    if isinstance(data, list):
        return ClassBackgrounds([lower(data) for _ in classnames])
    folded = {}
    for k, v in data.items():
        folded.setdefault(k.casefold(), v)
    per_label, without = [], []
    for name in classnames:
        found = data.get(name) or folded.get(name.casefold())
        if found:
            per_label.append(lower(found))
        else:
            per_label.append(list(generic))
            without.append(name)
    return ClassBackgrounds(per_label, without)


# ---------------------------------------------------------------- in-context examples


def _reference_utils_examples(text: str, path: str, cfg_key: str) -> dict[str, list]:
    """The example lists of the reference's helper/utils.py, by literal evaluation of its assignments."""
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        raise ValueError(f"config key '{cfg_key}': {path!r} is not Python ({e})") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            kind = REFERENCE_EXAMPLE_LISTS.get(node.targets[0].id)
            if kind:
                try:
                    found[kind] = ast.literal_eval(node.value)
                except ValueError:
                    raise ValueError(f"config key '{cfg_key}': {node.targets[0].id} in {path!r} is not a literal "
                                     "list") from None
    if not found:
        raise ValueError(f"config key '{cfg_key}': {path!r} defines none of {', '.join(REFERENCE_EXAMPLE_LISTS)}")
    return found


def read_examples(path: str, cfg_key: str = EXAMPLES_KEY) -> dict[str, list[tuple[str, ...]]]:
    """In-context examples by prompt type, from this project's JSON format or the reference's utils.py."""
    _need_file(path, cfg_key)
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".py"):
        data = _reference_utils_examples(text, path, cfg_key)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config key '{cfg_key}': {path!r} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"config key '{cfg_key}': {path!r} must be a JSON object keyed by prompt type")
        unknown = sorted(set(data) - set(EXAMPLE_INPUTS))
        if unknown:
            raise ValueError(f"config key '{cfg_key}': {path!r} has unknown prompt type(s) {unknown} "
                             f"(allowed: {', '.join(EXAMPLE_INPUTS)})")
    out = {}
    for kind, examples in data.items():
        width = EXAMPLE_INPUTS[kind] + 1
        if not isinstance(examples, (list, tuple)) or not examples:
            raise ValueError(f"config key '{cfg_key}': the {kind!r} examples in {path!r} are not a non-empty list")
        for i, ex in enumerate(examples):
            if not (isinstance(ex, (list, tuple)) and len(ex) == width and all(isinstance(x, str) for x in ex)):
                raise ValueError(f"config key '{cfg_key}': {kind!r} example {i} in {path!r} must be {width} strings "
                                 f"({EXAMPLE_INPUTS[kind]} input(s), then the caption), not {ex!r}")
        out[kind] = [tuple(x.strip() for x in ex) for ex in examples]
    return out
