"""Text for both arms: the generator's prompt table and the retrieval queries of a task.

Generator prompts combine the class name with background, attribute and relation phrasings, in the
spirit of SynCLR's template prompts; the choice of phrasing is fixed by the seed. Each prompt's class
is chosen by ``class_sampling``: ``turns`` (classes in turn: exact balance, every shard holds every
class) or ``uniform`` (each prompt's class drawn uniformly at random and independently, seeded, as
the reference's synthesize_text.py does with ``random.choice``; per-class counts vary binomially).
Retrieval queries are the task's retrieval templates filled with each class name (for kNN search) and
the per-class substring queries (for caption matching).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from .substring import tokens
from .templates import fill_template

SLOTS = {"background": "backgrounds", "attribute": "attributes", "relation": "relations"}


def fill_prompt(template: str, classname: str, rng: np.random.Generator, phrases: dict[str, list[str]]) -> str:
    """Fill {c} with the class name and each {background}/{attribute}/{relation} with a random phrase."""
    def pick(match: re.Match) -> str:
        slot = match.group(1)
        options = phrases.get(SLOTS[slot]) or []
        if not options:
            raise ValueError(f"prompt template {template!r} uses {{{slot}}} but config key 'prompts.{SLOTS[slot]}' is empty")
        return options[rng.integers(len(options))]

    text = re.sub(r"\{(background|attribute|relation)\}", pick, template)
    return fill_template(text, classname)


CLASS_SAMPLING = ("turns", "uniform")


def prompt_labels(n_classes: int, images: int, sampling: str, seed: int) -> np.ndarray:
    """Each prompt's class: in turn (``turns``) or uniformly at random, independently (``uniform``)."""
    if sampling == "turns":
        return np.arange(images) % n_classes
    if sampling == "uniform":  # a stream of its own: the phrasing draws stay those of the seed
        return np.random.default_rng([seed, 2]).integers(n_classes, size=images)
    raise ValueError(f"config key 'prompts.class_sampling': {sampling!r} is not one of {', '.join(CLASS_SAMPLING)}")


def generator_prompts(classnames: list[str], cfg: dict, shard_size: int) -> pa.Table:
    """One prompt per synthetic image: ``cfg['images']`` rows, classes by ``class_sampling``, split into shards."""
    rng = np.random.default_rng(cfg["seed"])
    phrases = {key: cfg.get(key, []) for key in SLOTS.values()}
    labels = prompt_labels(len(classnames), cfg["images"], cfg.get("class_sampling") or "turns", cfg["seed"])
    rows = {"key": [], "label": [], "classname": [], "prompt": [], "shard": []}
    for i in range(cfg["images"]):
        label = int(labels[i])
        template = cfg["templates"][rng.integers(len(cfg["templates"]))]
        rows["key"].append(f"s{i:07d}")
        rows["label"].append(label)
        rows["classname"].append(classnames[label])
        rows["prompt"].append(fill_prompt(template, classnames[label], rng, phrases))
        rows["shard"].append(i // shard_size)
    return pa.table({**rows, "label": pa.array(rows["label"], pa.int32()), "shard": pa.array(rows["shard"], pa.int32())})


def prompt_table(classnames: list[str], cfg: dict, shard_size: int, log=print) -> tuple[pa.Table, dict]:
    """The generator's prompt table: template prompts, or LLM captions when ``cfg['llm']`` is set
    (rows keep the template table's keys, labels and shards; see :mod:`synret.captions`)."""
    table = generator_prompts(classnames, cfg, shard_size)
    if not cfg.get("llm"):
        return table, {"source": "templates"}
    from .captions import caption_table  # transformers and torch: only when an LLM is configured

    table, stats = caption_table(classnames, cfg, table, log)
    return table, {"source": "llm", **stats}


QUERY_REWRITES = ("none", "all_tokens")


def rewrite_alternatives(alternatives: list[list[str]], rewrite: str = "none") -> list[list[str]]:
    """Apply a substring-query rewrite to one class's alternatives (each a list of terms).

    ``none`` keeps the terms (a multi-word term is a phrase: its words must occur in order);
    ``all_tokens`` makes every whitespace-separated word of a term a term of its own, so each must
    occur somewhere in the caption, in any order, as the reference's Stanford Cars queries do
    (``"AM" AND "General" AND "Hummer"``); a hyphenated word stays a phrase (the reference's
    ``"Type S"`` for "Type-S" matches "type-s" and "type s" but not "type r s").
    Repeated words and alternatives that become identical are kept once; words without a letter or
    digit are dropped.
    """
    if rewrite not in QUERY_REWRITES:
        raise ValueError(f"unknown substring query rewrite {rewrite!r} (config key 'retrieval.substring.rewrite'; "
                         f"choose from {', '.join(QUERY_REWRITES)})")
    if rewrite == "none":
        return [list(terms) for terms in alternatives]
    out: list[list[str]] = []
    for terms in alternatives:
        words = [w for term in terms for w in term.split() if tokens(w)]
        words = list(dict.fromkeys(words))  # words without letters or digits ("&") match nothing
        if words and words not in out:
            out.append(words)
    return out


def template_alternatives(alternatives: list[list[str]], templates: list[str] | None) -> list[list[str]]:
    """One phrase per (alternative, template): the template filled with the alternative's words, as
    the reference's DTD queries ``"{c} texture" OR "{c} pattern" OR ...`` are. None: unchanged."""
    if not templates:
        return [list(terms) for terms in alternatives]
    out = []
    for terms in alternatives:
        for template in templates:
            alternative = [fill_template(template, " ".join(terms))]
            if alternative not in out:
                out.append(alternative)
    return out


def retrieval_queries(task: dict, rewrite: str = "none", templates: list[str] | None = None) -> pa.Table:
    """kNN text queries (templates x classes) and substring queries (alternatives of terms) of a task.

    The substring alternatives of every class are first multiplied by ``templates`` (see
    :func:`template_alternatives`), then reshaped by ``rewrite`` (see :func:`rewrite_alternatives`).
    """
    rows = []
    for label, name in enumerate(task["classnames"]):
        for template in task["retrieval_templates"]:
            rows.append((label, "knn", fill_template(template, name), None))
        alternatives = template_alternatives(task["queries"][label], templates)
        for terms in rewrite_alternatives(alternatives, rewrite):  # every term of one must occur
            rows.append((label, "substring", " AND ".join(terms), list(terms)))
    labels, kinds, queries, terms = zip(*rows) if rows else ((), (), (), ())
    return pa.table(
        {
            "label": pa.array(labels, pa.int32()),
            "kind": pa.array(kinds, pa.string()),
            "query": pa.array(queries, pa.string()),
            "terms": pa.array(terms, pa.list_(pa.string())),
        }
    )
