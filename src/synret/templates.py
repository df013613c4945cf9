"""CLIP prompt templates, filled with class names (torch-free: the prompt jobs import it)."""

from __future__ import annotations


def fill_template(template: str, classname: str) -> str:
    """Fill a CLIP prompt template; ``{a/an}`` becomes the right article for the class name."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.replace("{a/an}", article).replace("{c}", classname).replace("{}", classname)
