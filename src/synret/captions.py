"""Image captions written by a language model, SynCLR-style, as the synthetic arm's prompts.

As in the paper's code (modified from SynCLR), every caption starts from a class name and one of a few
prompt types, each a few-shot prompt: a header line, ``shots`` in-context examples drawn at random
from a fixed pool, then the query line left open after ``=>``::

    Generate an image description with an object category and an environment category:
    lighthouse, rocky coast => a white lighthouse on a rocky coast under a stormy sky
    ...
    tree frog, rainforest =>

The types are ``class`` (the class name alone), ``background`` (class + an environment),
``relation`` (class + a spatial relation) and ``texture`` (a texture name, for texture tasks),
mixed by configured weights (the paper: 0.44 / 0.45 / 0.11). Any causal LM that transformers loads
(a hub id or a local directory) samples the continuation (temperature 0.8, top-p 0.9 in the paper);
only its first line is kept, and an exact repeat of an earlier caption is sampled again. The
in-context examples below were written for this project; ``examples_file`` and ``backgrounds_file``
take the reference's own from its helper files instead (see :mod:`synret.caption_files`).

Each caption's class is the label of its row in the template table (``prompts.class_sampling``).
Afterwards the share of captions that name their class is counted, as the reference's
``create_captions_json.py`` does as a sanity check (it prints caption files below 80%, filtering
nothing), and a warning is logged below ``min_naming_share``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from .caption_files import class_backgrounds, read_examples

PROMPT_TYPES = ("class", "background", "relation", "texture")

HEADERS = {
    "class": "Generate an image description with an object category:",
    "background": "Generate an image description with an object category and an environment category:",
    "relation": "Generate an image description with an object category and a relation:",
    "texture": "Generate an image description with a texture category:",
}

# In-context examples, (inputs..., description); written for this project.
EXAMPLES: dict[str, list[tuple[str, ...]]] = {
    "class": [
        ("tabby cat", "a tabby cat stretched out asleep on a sunlit windowsill"),
        ("fire truck", "a red fire truck parked outside a brick station with its ladder raised"),
        ("sunflower", "a tall sunflower turning its head toward the late afternoon sun"),
        ("espresso cup", "a small espresso cup with a golden crema on a saucer"),
        ("sailboat", "a white sailboat leaning into the wind on choppy blue water"),
        ("barn owl", "a barn owl perched on a fence post at dusk, its face pale and round"),
        ("acoustic guitar", "an acoustic guitar resting against a worn leather armchair"),
        ("mountain bike", "a muddy mountain bike propped against a pine tree on a forest trail"),
        ("strawberry", "a single ripe strawberry with a drop of water on its skin"),
        ("steam locomotive", "a black steam locomotive puffing smoke as it crosses a stone viaduct"),
        ("golden retriever", "a golden retriever puppy chewing on a rope toy in the grass"),
        ("wristwatch", "a silver wristwatch with a blue dial lying on a marble surface"),
    ],
    "background": [
        ("lighthouse", "rocky coast", "a white lighthouse on a rocky coast under a stormy grey sky"),
        ("camel", "desert", "a camel walking across rippled orange sand dunes in the desert"),
        ("kayak", "mountain lake", "a yellow kayak gliding over a calm mountain lake at sunrise"),
        ("tram", "city street", "a vintage tram rolling down a narrow city street lined with cafes"),
        ("penguin", "ice shelf", "a penguin standing alone on the edge of a wide ice shelf"),
        ("tent", "meadow", "an orange tent pitched in a meadow full of wildflowers"),
        ("violin", "concert hall", "a violin on a stand in an empty concert hall lit by a spotlight"),
        ("tractor", "wheat field", "a green tractor harvesting a golden wheat field"),
        ("jellyfish", "deep ocean", "a glowing jellyfish drifting through the dark deep ocean"),
        ("bicycle", "canal bridge", "a bicycle chained to the railing of a canal bridge in the rain"),
        ("hot air balloon", "valley", "a striped hot air balloon floating above a misty green valley"),
        ("teapot", "kitchen", "a blue enamel teapot on a stove in a cosy farmhouse kitchen"),
    ],
    "relation": [
        ("mug", "next to", "a ceramic mug next to an open laptop on a wooden desk"),
        ("cat", "under", "a cat hiding under a garden table on a summer afternoon"),
        ("kite", "above", "a red kite flying high above a windy beach"),
        ("lamp", "behind", "a brass lamp glowing behind a stack of old books"),
        ("dog", "in front of", "a dog sitting in front of a blue front door"),
        ("bird", "on", "a small bird perched on a snowy branch"),
        ("umbrella", "in", "an open umbrella left in a puddle on the pavement"),
        ("helicopter", "over", "a helicopter hovering over a city skyline at night"),
        ("pumpkin", "beside", "a large pumpkin beside a wooden wheelbarrow on a farm"),
        ("goldfish", "below", "a goldfish swimming below a floating lily pad"),
    ],
    "texture": [
        ("striped", "a cushion covered in bold black and white stripes"),
        ("cracked", "dry cracked earth split into irregular plates under the sun"),
        ("knitted", "close-up of a chunky knitted wool scarf in cream yarn"),
        ("honeycombed", "the waxy hexagonal cells of a honeycomb dripping with honey"),
        ("marbled", "a polished slab of white marble with grey veins"),
        ("polka-dotted", "a red dress with small white polka dots"),
        ("woven", "a tightly woven straw basket seen from above"),
        ("bubbly", "a glass of sparkling water full of rising bubbles"),
        ("scaly", "close-up of the green overlapping scales of a lizard"),
        ("rusty", "a rusty metal door with flaking orange paint"),
    ],
}

DEFAULT_RELATIONS = ["in", "on", "next to", "behind", "in front of", "over", "under", "above", "below", "beside"]


@dataclass
class CaptionConfig:
    """``prompts.llm`` of the config."""

    model: str
    weights: dict[str, float] = field(default_factory=lambda: {"class": 0.44, "background": 0.45, "relation": 0.11})
    shots: int = 3
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 100
    batch_size: int = 64
    max_rounds: int = 5  # rounds of re-sampling exact repeats and empty answers
    class_template: str = "{c}"  # e.g. "{c} car": the paper appends " car" / " aircraft"
    cache_dir: str | None = None
    dtype: str = "auto"
    backgrounds_file: dict | None = None  # {path, key, lowercase}: the reference's background lists
    examples_file: str | None = None  # the reference's helper/utils.py, or examples JSON keyed by prompt type
    min_naming_share: float = 0.8  # warn when fewer captions name their class (the reference's 80%)

    @classmethod
    def from_settings(cls, settings: dict) -> "CaptionConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"config key 'prompts.llm': unknown key(s) {unknown}")
        if not settings.get("model"):
            raise ValueError("config key 'prompts.llm.model': no language model is set")
        cfg = cls(**{k: v for k, v in settings.items() if v is not None or k in ("cache_dir",)})
        bad = sorted(set(cfg.weights) - set(PROMPT_TYPES))
        if bad or not cfg.weights or sum(cfg.weights.values()) <= 0 or min(cfg.weights.values()) < 0:
            raise ValueError(f"config key 'prompts.llm.weights': {cfg.weights!r} must give non-negative weights, "
                             f"not all zero, to prompt types among {PROMPT_TYPES}")
        return cfg


def few_shot_prompt(kind: str, inputs: Sequence[str], rng: np.random.Generator, shots: int,
                    examples: dict[str, list[tuple[str, ...]]] | None = None) -> str:
    """The few-shot prompt of one caption: header, ``shots`` distinct random examples (from ``examples``,
    else the built-in ones), the open query line."""
    pool = (examples or EXAMPLES)[kind]
    picks = rng.choice(len(pool), size=min(shots, len(pool)), replace=False)
    lines = [HEADERS[kind]]
    lines += [f"{', '.join(pool[i][:-1])} => {pool[i][-1]}" for i in picks]
    lines.append(f"{', '.join(inputs)} =>")
    return "\n".join(lines)


def plan_prompts(classnames: Sequence[str], images: int, cfg: CaptionConfig, phrases: dict[str, list[str]],
                 rng: np.random.Generator, labels: Sequence[int] | None = None,
                 backgrounds: Sequence[Sequence[str]] | None = None) -> list[dict]:
    """One planned caption per image: its label, prompt type and query inputs.

    ``labels``: each row's class (the template table's; None: classes take turns). ``backgrounds``: the
    list each class draws its background from (None: ``phrases['backgrounds']`` for every class). As in
    the reference, the type is drawn by the weights, then a background or relation uniformly.
    """
    kinds = sorted(k for k, w in cfg.weights.items() if w > 0)
    p = np.array([cfg.weights[k] for k in kinds], dtype=float)
    labels = [i % len(classnames) for i in range(images)] if labels is None else [int(x) for x in labels]
    if backgrounds is None:
        backgrounds = [phrases.get("backgrounds") or []] * len(classnames)
    relations = phrases.get("relations") or DEFAULT_RELATIONS
    if "background" in kinds:
        empty = sorted({classnames[label] for label in labels if not backgrounds[label]})
        if empty:
            raise ValueError(f"prompt type 'background' has weight but config key 'prompts.backgrounds' is empty "
                             f"(the backgrounds of {len(empty)} class(es), e.g. {empty[0]!r})")
    plan = []
    for label in labels:
        kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
        name = cfg.class_template.replace("{c}", classnames[label])
        inputs = [name]
        if kind == "background":
            inputs.append(backgrounds[label][rng.integers(len(backgrounds[label]))])
        elif kind == "relation":
            inputs.append(relations[rng.integers(len(relations))])
        plan.append({"label": label, "kind": kind, "inputs": inputs})
    return plan


def class_pattern(classname: str) -> re.Pattern:
    """Where a caption names a class: the name as a whole word or phrase, any case, any run of spaces
    between its words, optionally with a plural "s"/"es"; never inside another word."""
    words = [re.escape(w) for w in classname.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?:e?s)?(?!\w)", re.IGNORECASE)


def naming_share(captions: Sequence[str], classnames: Sequence[str]) -> float | None:
    """The share of captions that name their class (``classnames[i]`` for ``captions[i]``); None if none.

    The reference checks ``label.lower() in caption.lower()``, its labels without the " car" /
    " aircraft" it adds for the LM; here the bare class name too, but as a word: "cat" does not count
    in "concatenate", "cats" does.
    """
    if not captions:
        return None
    patterns: dict[str, re.Pattern] = {}
    named = 0
    for caption, name in zip(captions, classnames, strict=True):
        pattern = patterns.get(name) or patterns.setdefault(name, class_pattern(name))
        named += bool(pattern.search(caption))
    return named / len(captions)


def first_line(text: str) -> str:
    """The answer part of a generation: its first non-empty line, stripped."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line
    return ""


class CaptionModel:
    """A causal LM and its tokenizer, loaded by hub id or local directory, sampling continuations."""

    def __init__(self, cfg: CaptionConfig, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32, "fp32": torch.float32,
                 "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, cache_dir=cfg.cache_dir)
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, cache_dir=cfg.cache_dir, dtype=dtype)
        except OSError as e:
            raise OSError(f"cannot load the caption LM {cfg.model!r} (config key 'prompts.llm.model'): {e}") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # decoder-only: the open ends of the prompts line up
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate(self, prompts: Sequence[str], seed: int) -> list[str]:
        """One sampled continuation per prompt (only the new text), reproducible for a seed."""
        import torch

        torch.manual_seed(seed)
        batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():  # only the first line is kept: a sequence stops at its first newline
            out = self.model.generate(
                **batch, do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0,
                max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=["\n"], tokenizer=self.tokenizer,
            )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def llm_captions(
    plan: list[dict], lm: CaptionModel, rng: np.random.Generator, seed: int,
    log: Callable[[str], None] = print, examples: dict[str, list[tuple[str, ...]]] | None = None,
) -> tuple[list[str | None], dict]:
    """A caption for every planned row, or None where none came after ``max_rounds`` rounds.

    Each round samples every row that still lacks a caption, in batches; an answer is kept when its
    first line is non-empty and not an exact repeat of a caption kept before (case and surrounding
    space ignored). Fresh few-shot examples and a fresh generation seed are drawn every round.
    """
    cfg = lm.cfg
    captions: list[str | None] = [None] * len(plan)
    seen: set[str] = set()
    stats = {"generated": 0, "repeats": 0, "empty": 0, "rounds": 0}
    pending = list(range(len(plan)))
    start = time.time()
    for round_ in range(cfg.max_rounds):
        if not pending:
            break
        stats["rounds"] += 1
        prompts = [few_shot_prompt(plan[i]["kind"], plan[i]["inputs"], rng, cfg.shots, examples) for i in pending]
        still = []
        for b in range(0, len(pending), cfg.batch_size):
            rows = pending[b : b + cfg.batch_size]
            texts = lm.generate(prompts[b : b + cfg.batch_size], seed=seed * 1_000_003 + round_ * 10_007 + b)
            for i, text in zip(rows, texts):
                caption = first_line(text)
                stats["generated"] += 1
                key = caption.lower()
                if not caption:
                    stats["empty"] += 1
                    still.append(i)
                elif key in seen:
                    stats["repeats"] += 1
                    still.append(i)
                else:
                    seen.add(key)
                    captions[i] = caption
        log(f"round {round_ + 1}: {len(pending) - len(still)}/{len(pending)} captions kept "
            f"({time.time() - start:.1f}s)")
        pending = still
    stats["missing"] = len(pending)
    return captions, stats


def caption_sources(classnames: Sequence[str], settings: dict, cfg: CaptionConfig,
                    log: Callable[[str], None] = print) -> tuple[list[list[str]], dict, dict]:
    """Each class's backgrounds, the in-context examples by type, and what came from where (for the
    stats): the configured files, else the generic ``prompts.backgrounds`` and the built-in examples."""
    found = class_backgrounds(classnames, settings.get("backgrounds") or [], cfg.backgrounds_file)
    stats: dict = {}
    if cfg.backgrounds_file:
        stats["backgrounds_file"] = cfg.backgrounds_file["path"]
        stats["classes_without_backgrounds"] = len(found.without_entry)
        if found.without_entry:
            log(f"{len(found.without_entry)} class(es) have no entry in {cfg.backgrounds_file['path']} and take "
                f"the generic prompts.backgrounds: {', '.join(found.without_entry[:10])}"
                + (" ..." if len(found.without_entry) > 10 else ""))
    examples = dict(EXAMPLES)
    if cfg.examples_file:
        own = read_examples(cfg.examples_file)
        examples.update(own)
        stats["examples_file"] = cfg.examples_file
        stats["builtin_example_types"] = sorted(k for k, w in cfg.weights.items() if w > 0 and k not in own)
        if stats["builtin_example_types"]:
            log(f"{cfg.examples_file} has no examples of {stats['builtin_example_types']}: the built-in ones stand in")
    return found.per_label, examples, stats


def caption_table(classnames: Sequence[str], settings: dict, template_table: pa.Table,
                  log: Callable[[str], None] = print) -> tuple[pa.Table, dict]:
    """The generator's prompt table with LLM captions (same rows, keys, labels and shards as the
    template table); a row the LM gave no usable caption for keeps its template prompt."""
    cfg = CaptionConfig.from_settings(settings["llm"])
    rng = np.random.default_rng([settings["seed"], 1])  # a stream apart from the template prompts'
    backgrounds, examples, source_stats = caption_sources(classnames, settings, cfg, log)  # files before the LM
    phrases = {key: settings.get(key) or [] for key in ("backgrounds", "relations")}
    labels = template_table.column("label").to_pylist()
    plan = plan_prompts(classnames, len(labels), cfg, phrases, rng, labels=labels, backgrounds=backgrounds)
    lm = CaptionModel(cfg)
    log(f"caption LM {cfg.model} on {lm.device}: {len(plan)} captions")
    captions, stats = llm_captions(plan, lm, rng, settings["seed"], log, examples)
    stats.update(source_stats)
    written = [(c, classnames[p["label"]]) for c, p in zip(captions, plan) if c is not None]
    share = naming_share([c for c, _ in written], [n for _, n in written])
    stats["names_class"] = None if share is None else round(share, 4)
    stats["min_naming_share"] = cfg.min_naming_share
    if share is not None:
        line = (f"{share:.1%} of {len(written)} LLM captions name their class (case-insensitive, as a word; "
                f"the reference's sanity bound: 80%)")
        if share < cfg.min_naming_share:
            line = f"WARNING: only {line}, below prompts.llm.min_naming_share = {cfg.min_naming_share}"
        log(line)
    fallback = template_table.column("prompt").to_pylist()
    prompts = [c if c is not None else fallback[i] for i, c in enumerate(captions)]
    sources = ["llm" if c is not None else "template" for c in captions]
    table = template_table.set_column(template_table.schema.get_field_index("prompt"), "prompt",
                                      pa.array(prompts, pa.string()))
    table = table.append_column("prompt_type", pa.array([p["kind"] for p in plan], pa.string()))
    table = table.append_column("prompt_source", pa.array(sources, pa.string()))
    return table, stats
