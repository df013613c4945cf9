"""Web-like captions for rendered objects: varied, noisy, sometimes wrong or off-topic.

Like alt-texts in LAION, a caption may name the object's attributes in many phrasings, leave some
out, carry the wrong colour, be shouted in upper case, or have nothing to do with the image. This
noise is what CLIP-score filtering has to clean up after retrieval.
"""

from __future__ import annotations

import numpy as np

from .render import COLORS, Attributes

PATTERN_WORDS = {
    "plain": ["plain", "solid", "flat"],
    "striped": ["striped", "stripy", "stripe-patterned"],
    "dotted": ["dotted", "polka-dot", "spotted"],
    "checkered": ["checkered", "plaid", "chequered"],
}
BACKGROUND_WORDS = {
    "plain": ["plain", "simple", "blank"],
    "gradient": ["gradient", "faded", "two-tone"],
    "noisy": ["noisy", "grainy", "speckled"],
    "grid": ["grid", "tiled", "squared"],
}
TEMPLATES = (
    "a {color} {pattern} {shape}",
    "a photo of a {color} {shape}",
    "{color} {shape} on a {background} background",
    "a {pattern} {shape} in {color}",
    "clip art of a {color} {pattern} {shape}",
    "{shape}, {color}, {pattern}",
    "my favourite {color} {shape} sticker",
    "a {shape} painted {color}",
    "the {color} {shape} icon",
    "a small {pattern} {color} {shape} against a {background} backdrop",
    "{pattern} {shape} pattern swatch",
    "image of a {shape}",
    "a {color} thing on a {background} wall",
)
OFF_TOPIC = (
    "IMG_{n}.jpg",
    "a day at the beach",
    "click here for more",
    "product photo {n}",
    "summer sale 50% off",
    "untitled",
    "DSC{n}",
    "best wallpapers of the year",
)


def captions(
    attrs: Attributes,
    rng: np.random.Generator,
    off_topic: float = 0.10,
    wrong_color: float = 0.08,
    upper: float = 0.10,
) -> list[str]:
    """One caption per object; the three probabilities set the share of each kind of noise."""
    color_names = list(COLORS)
    out = []
    for shape, color, pattern, background in zip(
        attrs.names("shape"), attrs.names("color"), attrs.names("pattern"), attrs.names("background")
    ):
        if rng.random() < off_topic:
            out.append(OFF_TOPIC[rng.integers(len(OFF_TOPIC))].format(n=rng.integers(1000, 9999)))
            continue
        if rng.random() < wrong_color:
            color = color_names[(color_names.index(color) + rng.integers(1, len(color_names))) % len(color_names)]
        text = TEMPLATES[rng.integers(len(TEMPLATES))].format(
            shape=shape,
            color=color,
            pattern=PATTERN_WORDS[pattern][rng.integers(3)],
            background=BACKGROUND_WORDS[background][rng.integers(3)],
        )
        out.append(text.upper() if rng.random() < upper else text)
    return out
