"""LLM captions (synret.captions) with tiny random-weight causal LMs built and saved here: real
transformers loading (AutoModelForCausalLM from a local directory) and real sampling."""

from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest
import torch

import synret.captions as captions_module
from synret.captions import (
    EXAMPLES,
    HEADERS,
    PROMPT_TYPES,
    CaptionConfig,
    caption_table,
    few_shot_prompt,
    first_line,
    naming_share,
    plan_prompts,
)
from synret.prompts import generator_prompts, prompt_table

CLASSES = ["cat", "dog", "red star"]


def _tokenizer():
    """A byte-level BPE tokenizer trained on the prompts' own text (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(HEADERS.values()) + [" => ".join(e) for pool in EXAMPLES.values() for e in pool] + CLASSES
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_lm(request, tmp_path_factory) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    if request.param == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, bos_token_id=1, eos_token_id=2))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                           bos_token_id=1, eos_token_id=2))
    out = tmp_path_factory.mktemp(f"tiny_{request.param}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def _settings(model: str, **llm) -> dict:
    return {"images": 30, "templates": ["a {c}", "a photo of a {c}"], "backgrounds": ["beach", "forest", "kitchen"],
            "relations": ["next to", "under"], "seed": 0,
            "llm": {"model": model, "max_new_tokens": 12, "batch_size": 16, **llm}}


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- with a real LM


def test_table_keeps_the_template_rows_and_adds_captions(tiny_lm):
    settings = _settings(tiny_lm)
    template = generator_prompts(CLASSES, settings, 10)
    table, stats = prompt_table(CLASSES, settings, 10, _quiet)
    assert table.column_names == template.column_names + ["prompt_type", "prompt_source"]
    for column in ("key", "label", "classname", "shard"):
        assert table.column(column).equals(template.column(column))
    rows = table.to_pylist()
    llm = [r for r in rows if r["prompt_source"] == "llm"]
    assert stats["source"] == "llm" and stats["missing"] == len(rows) - len(llm)
    assert len(llm) >= 25  # a random LM still writes mostly non-empty, distinct first lines
    for row in llm:
        assert row["prompt"] and "\n" not in row["prompt"] and row["prompt"] == row["prompt"].strip()
    assert {r["prompt_type"] for r in rows} <= {"class", "background", "relation"}
    for row, fallback in zip(rows, template.column("prompt").to_pylist()):
        if row["prompt_source"] == "template":
            assert row["prompt"] == fallback


def test_captions_are_unique(tiny_lm):
    table, _ = prompt_table(CLASSES, _settings(tiny_lm), 10, _quiet)
    captions = [r["prompt"].lower() for r in table.to_pylist() if r["prompt_source"] == "llm"]
    assert len(captions) == len(set(captions))


def test_deterministic_by_seed(tiny_lm):
    a, _ = prompt_table(CLASSES, _settings(tiny_lm), 10, _quiet)
    b, _ = prompt_table(CLASSES, _settings(tiny_lm), 10, _quiet)
    assert a.equals(b)
    other = _settings(tiny_lm)
    other["seed"] = 1
    c, _ = prompt_table(CLASSES, other, 10, _quiet)
    assert c.column("prompt").to_pylist() != a.column("prompt").to_pylist()


def test_exact_repeats_are_resampled_then_fall_back_to_templates(tiny_lm):
    # one class, no examples, near-greedy sampling: every prompt is the same, so is every answer
    settings = _settings(tiny_lm, shots=0, weights={"class": 1.0}, temperature=1e-4, max_rounds=3)
    settings["images"] = 6
    template = generator_prompts(["cat"], settings, 10)
    table, stats = caption_table(["cat"], settings, template, _quiet)
    sources = table.column("prompt_source").to_pylist()
    assert sources.count("llm") <= 1
    assert stats["rounds"] == 3
    assert stats["generated"] == 6 + 2 * (6 - sources.count("llm"))
    assert stats["repeats"] + stats["empty"] == stats["generated"] - sources.count("llm")
    assert stats["repeats"] == 5 + 5 + 5 or stats["empty"] == 6 * 3  # one kept, or every answer empty
    for row, fallback in zip(table.to_pylist(), template.column("prompt").to_pylist()):
        if row["prompt_source"] == "template":
            assert row["prompt"] == fallback


def test_generation_stops_at_the_first_newline(tiny_lm):
    from synret.captions import CaptionModel

    lm = CaptionModel(CaptionConfig.from_settings({"model": tiny_lm, "max_new_tokens": 80}), device="cpu")
    texts = lm.generate([few_shot_prompt("class", ["cat"], np.random.default_rng(i), 3) for i in range(48)], seed=0)
    stopped = [t for t in texts if "\n" in t]
    assert stopped  # some samples drew a newline ...
    for text in stopped:  # ... and ended right there
        assert text.endswith("\n") and text.count("\n") == 1, repr(text)


def test_unloadable_model_names_the_config_key(tmp_path):
    settings = _settings(str(tmp_path / "no-such-lm"))
    with pytest.raises(OSError, match=r"'prompts\.llm\.model'"):
        prompt_table(CLASSES, settings, 10, _quiet)


# ---------------------------------------------------------------- without an LM


def test_no_llm_keeps_the_template_prompts():
    settings = _settings("unused")
    settings.pop("llm")
    table, stats = prompt_table(CLASSES, settings, 10, _quiet)
    assert table.equals(generator_prompts(CLASSES, settings, 10))
    assert stats == {"source": "templates"}
    settings["llm"] = None
    assert prompt_table(CLASSES, settings, 10, _quiet)[0].equals(table)


def test_few_shot_prompt_layout():
    rng = np.random.default_rng(0)
    for kind in PROMPT_TYPES:
        inputs = ["tree frog", "rainforest"] if kind in ("background", "relation") else ["tree frog"]
        lines = few_shot_prompt(kind, inputs, rng, 3).split("\n")
        assert lines[0] == HEADERS[kind]
        assert len(lines) == 5 and len(set(lines[1:4])) == 3
        examples = {f"{', '.join(e[:-1])} => {e[-1]}" for e in EXAMPLES[kind]}
        assert set(lines[1:4]) <= examples
        assert lines[4] == f"{', '.join(inputs)} =>"
    assert few_shot_prompt("class", ["cat"], rng, 0) == f"{HEADERS['class']}\ncat =>"


def test_plan_follows_the_mixing_weights_and_the_lists():
    cfg = CaptionConfig.from_settings({"model": "x", "class_template": "{c} car"})
    plan = plan_prompts(CLASSES, 6000, cfg, {"backgrounds": ["beach", "forest"]}, np.random.default_rng(0))
    counts = collections.Counter(p["kind"] for p in plan)
    for kind, weight in {"class": 0.44, "background": 0.45, "relation": 0.11}.items():
        assert counts[kind] / 6000 == pytest.approx(weight, abs=0.02)
    assert [p["label"] for p in plan[:6]] == [0, 1, 2, 0, 1, 2]
    for p in plan:
        assert p["inputs"][0] == f"{CLASSES[p['label']]} car"
        if p["kind"] == "background":
            assert p["inputs"][1] in ("beach", "forest")
        elif p["kind"] == "relation":
            assert p["inputs"][1] in ("in", "on", "next to", "behind", "in front of", "over", "under", "above",
                                      "below", "beside")
        else:
            assert len(p["inputs"]) == 1
    texture = CaptionConfig.from_settings({"model": "x", "weights": {"class": 0, "texture": 1}})
    assert {p["kind"] for p in plan_prompts(["striped"], 20, texture, {}, np.random.default_rng(0))} == {"texture"}


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"'prompts\.llm': unknown key\(s\) \['temp'\]"):
        CaptionConfig.from_settings({"model": "x", "temp": 0.8})
    with pytest.raises(ValueError, match=r"'prompts\.llm\.model'"):
        CaptionConfig.from_settings({"class_template": "{c} car"})
    with pytest.raises(ValueError, match=r"'prompts\.llm\.weights'"):
        CaptionConfig.from_settings({"model": "x", "weights": {"scene": 1.0}})
    with pytest.raises(ValueError, match=r"'prompts\.llm\.weights'"):
        CaptionConfig.from_settings({"model": "x", "weights": {"class": 0}})
    cfg = CaptionConfig.from_settings({"model": "x", "weights": {"background": 1.0}})
    with pytest.raises(ValueError, match=r"'prompts\.backgrounds'"):
        plan_prompts(CLASSES, 3, cfg, {"backgrounds": []}, np.random.default_rng(0))


def test_defaults_are_the_papers():
    cfg = CaptionConfig.from_settings({"model": "x"})
    assert (cfg.temperature, cfg.top_p, cfg.shots, cfg.max_new_tokens) == (0.8, 0.9, 3, 100)
    assert cfg.weights == {"class": 0.44, "background": 0.45, "relation": 0.11}


def test_first_line():
    assert first_line("  a cat on a mat \nsecond") == "a cat on a mat"
    assert first_line("\n\n  a dog\n") == "a dog"
    assert first_line(" \n ") == ""


# ---------------------------------------------------------------- the reference's files, class naming


def test_naming_share_counts_the_class_as_a_word():
    rows = [
        ("A Tabby CAT on a mat", "cat", True),        # any case
        ("two cats asleep on a sofa", "cat", True),   # plural
        ("the cat's bowl", "cat", True),              # possessive
        ("concatenate the files", "cat", False),      # inside another word
        ("a bobcat in the snow", "cat", False),
        ("a catalogue of lamps", "cat", False),
        ("a Red  Star glows", "red star", True),      # a phrase, any run of spaces between its words
        ("red stars over the bay", "red star", True),
        ("a star that is red", "red star", False),    # its words, but not the phrase
        ("buses in a row", "bus", True),              # plural in -es
        ("an omnibus timetable", "bus", False),
        ("a St. Bernard in the Alps", "St. Bernard", True),
    ]
    assert naming_share([r[0] for r in rows], [r[1] for r in rows]) == pytest.approx(7 / 12)
    for caption, name, named in rows:
        assert naming_share([caption], [name]) == float(named), caption
    assert naming_share([], []) is None


def test_plan_takes_the_rows_labels_and_each_classs_backgrounds():
    cfg = CaptionConfig.from_settings({"model": "x", "weights": {"background": 1.0}})
    per_class = [["beach"], ["forest", "barn"], ["kitchen"]]
    labels = [2, 0, 0, 1, 2, 1, 1]
    plan = plan_prompts(CLASSES, len(labels), cfg, {"backgrounds": []}, np.random.default_rng(0), labels=labels,
                        backgrounds=per_class)
    assert [p["label"] for p in plan] == labels
    for p in plan:
        assert p["inputs"][0] == CLASSES[p["label"]] and p["inputs"][1] in per_class[p["label"]]
    with pytest.raises(ValueError, match=r"'prompts\.backgrounds' is empty .*'dog'"):
        plan_prompts(CLASSES, 3, cfg, {}, np.random.default_rng(0), labels=[0, 1, 0],
                     backgrounds=[["beach"], [], ["kitchen"]])
    # a class without backgrounds is fine while no prompt of it needs one
    assert plan_prompts(CLASSES, 2, cfg, {}, np.random.default_rng(0), labels=[0, 2],
                        backgrounds=[["beach"], [], ["kitchen"]])


def test_few_shot_prompt_takes_the_given_examples():
    own = {"class": [("heron", "a heron in the reeds"), ("otter", "an otter on a rock"), ("vole", "a vole")]}
    lines = few_shot_prompt("class", ["cat"], np.random.default_rng(0), 3, own).split("\n")
    assert sorted(lines[1:4]) == ["heron => a heron in the reeds", "otter => an otter on a rock", "vole => a vole"]


class ScriptedLM:
    """Stands in for CaptionModel: records the prompts; a unique caption per call, naming the query's
    class in three of every four."""

    prompts: list[str] = []

    def __init__(self, cfg, device=None):
        self.cfg, self.device, self.count = cfg, "cpu", itertools.count()
        ScriptedLM.prompts = []

    def generate(self, prompts, seed):
        ScriptedLM.prompts += list(prompts)
        out = []
        for prompt in prompts:
            name = prompt.split("\n")[-1][: -len(" =>")].split(",")[0]
            n = next(self.count)
            out.append(f"caption {n}: something else\n" if n % 4 == 0 else f"caption {n}: a {name} at rest\nmore")
        return out


def _scripted(monkeypatch):
    monkeypatch.setattr(captions_module, "CaptionModel", ScriptedLM)


def _files(tmp_path):
    backgrounds = tmp_path / "imgnet_background_dict.json"
    backgrounds.write_text(json.dumps({"cat": ["Sofa", "Windowsill"], "Dog": ["Kennel"]}))  # no "red star"
    examples = tmp_path / "examples.json"
    examples.write_text(json.dumps({
        "class": [["heron", "a heron in the reeds"], ["otter", "an otter on a rock"], ["vole", "a vole"]],
        "background": [["owl", "barn", "an owl in a barn"], ["crab", "pier", "a crab on a pier"],
                       ["goat", "cliff", "a goat on a cliff"]]}))
    return str(backgrounds), str(examples)


def test_backgrounds_and_examples_files_feed_the_prompts(monkeypatch, tmp_path):
    _scripted(monkeypatch)
    backgrounds, examples = _files(tmp_path)
    settings = _settings("scripted", backgrounds_file={"path": backgrounds, "lowercase": True}, examples_file=examples)
    settings["images"] = 300
    logged = []
    table, stats = prompt_table(CLASSES, settings, 100, logged.append)
    assert stats["source"] == "llm" and stats["missing"] == 0
    assert stats["backgrounds_file"] == backgrounds and stats["classes_without_backgrounds"] == 1
    assert stats["examples_file"] == examples and stats["builtin_example_types"] == ["relation"]
    assert any("1 class(es) have no entry" in line and "red star" in line for line in logged)
    own = {f"{', '.join(e[:-1])} => {e[-1]}" for pool in json.loads(open(examples).read()).values() for e in pool}
    builtin = {f"{', '.join(e[:-1])} => {e[-1]}" for e in EXAMPLES["relation"]}
    allowed = {"cat": {"sofa", "windowsill"}, "dog": {"kennel"}, "red star": {"beach", "forest", "kitchen"}}
    kinds = collections.Counter()
    for prompt in ScriptedLM.prompts:
        lines = prompt.split("\n")
        kind = next(k for k, h in HEADERS.items() if h == lines[0])
        kinds[kind] += 1
        assert set(lines[1:4]) <= (builtin if kind == "relation" else own)
        if kind == "background":
            name, background = lines[4][: -len(" =>")].split(", ")
            assert background in allowed[name], (name, background)
    assert set(kinds) == {"class", "background", "relation"}


def test_naming_share_in_stats_and_warning_below_the_threshold(monkeypatch):
    _scripted(monkeypatch)
    settings = _settings("scripted", min_naming_share=0.8)
    settings["images"] = 40
    logged = []
    table, stats = prompt_table(CLASSES, settings, 10, logged.append)
    rows = table.to_pylist()
    assert all(r["prompt_source"] == "llm" for r in rows)
    assert stats["names_class"] == naming_share([r["prompt"] for r in rows], [r["classname"] for r in rows]) == 0.75
    assert stats["min_naming_share"] == 0.8
    (line,) = [line for line in logged if "name their class" in line]
    assert line.startswith("WARNING: only 75.0% of 40 LLM captions") and "min_naming_share = 0.8" in line
    logged.clear()
    settings["llm"]["min_naming_share"] = 0.7
    _, stats = prompt_table(CLASSES, settings, 10, logged.append)
    (line,) = [line for line in logged if "name their class" in line]
    assert not line.startswith("WARNING") and stats["names_class"] == 0.75


def test_the_bare_class_name_is_checked_not_the_class_template(monkeypatch):
    _scripted(monkeypatch)  # captions say "a cat car": they name "cat", as the reference checks cars
    settings = _settings("scripted", class_template="{c} car")
    settings["images"] = 40
    _, stats = prompt_table(CLASSES, settings, 10, _quiet)
    assert stats["names_class"] == 0.75


def test_missing_caption_files_fail_before_the_lm_loads(tmp_path):
    settings = _settings(str(tmp_path / "no-such-lm"), backgrounds_file={"path": str(tmp_path / "bg.json")})
    with pytest.raises(FileNotFoundError, match=r"config key 'prompts\.llm\.backgrounds_file\.path': file .*bg\.json"):
        prompt_table(CLASSES, settings, 10, _quiet)
    settings = _settings(str(tmp_path / "no-such-lm"), examples_file=str(tmp_path / "utils.py"))
    with pytest.raises(FileNotFoundError, match=r"config key 'prompts\.llm\.examples_file': file .*utils\.py"):
        prompt_table(CLASSES, settings, 10, _quiet)
