"""Procedural images of objects with fine-grained attributes, rendered in batches with numpy.

An image shows one object: a shape, filled with a colour and a pattern (drawn as a lighter or
darker shade of that colour), on a background, at a random position, scale and rotation. The
attributes of a batch are sampled first (`sample_attributes`), then drawn all at once (`render`):
shapes are implicit masks on a coordinate grid, so no per-image Python drawing is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "heart", "crescent")
COLORS = {
    "red": (214, 39, 40),
    "orange": (245, 135, 25),
    "yellow": (238, 214, 38),
    "green": (44, 160, 64),
    "blue": (31, 96, 210),
    "purple": (138, 62, 190),
    "pink": (240, 118, 182),
    "brown": (128, 80, 38),
}
PATTERNS = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS = ("plain", "gradient", "noisy", "grid")
# Muted background colours, far enough from the object colours that the object stays visible.
BACKGROUND_COLORS = np.array(
    [(235, 235, 230), (200, 200, 205), (90, 90, 95), (40, 40, 45), (210, 225, 235), (230, 220, 200), (160, 170, 160)],
    dtype=np.float32,
)
FACTORS = {"shape": SHAPES, "color": tuple(COLORS), "pattern": PATTERNS, "background": BACKGROUNDS}


@dataclass(frozen=True)
class Style:
    """How objects are placed and drawn; the pool and the task benchmarks use different styles (a shift)."""

    scale: tuple[float, float] = (0.22, 0.42)  # object radius as a fraction of the image side
    max_offset: float = 0.25  # largest distance of the centre from the image centre, same unit
    max_rotation: float = 0.25  # radians
    color_jitter: float = 18.0  # sd of the per-image RGB jitter of the object colour
    pixel_noise: float = 4.0  # sd of per-pixel noise added to every image
    backgrounds: tuple[str, ...] = BACKGROUNDS


@dataclass
class Attributes:
    """Attributes of a batch of images: indices into the factor tuples plus geometry, one row each."""

    shape: np.ndarray
    color: np.ndarray
    pattern: np.ndarray
    background: np.ndarray
    bg_color: np.ndarray  # (n, 2) indices into BACKGROUND_COLORS (second one for gradients)
    center: np.ndarray  # (n, 2) in [-1, 1] image coordinates
    radius: np.ndarray  # (n,) in image-side units
    rotation: np.ndarray  # (n,)
    jitter: np.ndarray = field(default=None)  # (n, 3) RGB offsets

    def __len__(self) -> int:
        return len(self.shape)

    def take(self, index: np.ndarray) -> "Attributes":
        return Attributes(**{k: v[index] for k, v in self.__dict__.items()})

    def names(self, factor: str) -> list[str]:
        """The attribute values of one factor as names, e.g. ``names("color") -> ["red", ...]``."""
        return [FACTORS[factor][i] for i in getattr(self, factor)]


def factor_index(factor: str, values: list[str] | None) -> np.ndarray:
    """Indices of the allowed values of a factor (all of them when ``values`` is None)."""
    names = FACTORS[factor]
    if values is None:
        return np.arange(len(names))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {factor} value(s) {unknown}; choose from {list(names)}")
    return np.array([names.index(v) for v in values])


def sample_attributes(
    rng: np.random.Generator,
    n: int,
    style: Style,
    fixed: dict[str, np.ndarray] | None = None,
    allowed: dict[str, list[str] | None] | None = None,
) -> Attributes:
    """Sample n objects. ``fixed`` pins factor indices per row; ``allowed`` limits the others."""
    fixed, allowed = fixed or {}, allowed or {}
    allowed = {"background": list(style.backgrounds), **{k: v for k, v in allowed.items() if v is not None}}
    picked = {}
    for factor in FACTORS:
        if factor in fixed:
            picked[factor] = np.asarray(fixed[factor], dtype=np.int64)
        else:
            picked[factor] = rng.choice(factor_index(factor, allowed.get(factor)), size=n)
    angle = rng.uniform(0, 2 * np.pi, n)
    offset = style.max_offset * np.sqrt(rng.uniform(0, 1, n))
    return Attributes(
        **picked,
        bg_color=rng.integers(0, len(BACKGROUND_COLORS), size=(n, 2)),
        center=np.stack([offset * np.cos(angle), offset * np.sin(angle)], axis=1) * 2,
        radius=rng.uniform(*style.scale, n),
        rotation=rng.uniform(-style.max_rotation, style.max_rotation, n),
        jitter=rng.normal(0, style.color_jitter, size=(n, 3)),
    )


def _polygon(r: np.ndarray, phi: np.ndarray, sides: int) -> np.ndarray:
    sector = 2 * np.pi / sides
    return r * np.cos((np.mod(phi + np.pi / 2, sector)) - sector / 2) < np.cos(np.pi / sides)


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of a unit-radius shape in object coordinates (u right, v up)."""
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    if name == "circle":
        return r < 0.95
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if name in ("triangle", "pentagon", "hexagon"):
        return _polygon(r, phi, {"triangle": 3, "pentagon": 5, "hexagon": 6}[name])
    if name == "star":
        spikes = np.abs(np.cos(2.5 * (phi - np.pi / 2)))  # 5 points, one pointing up
        return r < 0.42 + 0.58 * spikes**3
    if name == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    if name == "ring":
        return (r < 0.95) & (r > 0.55)
    if name == "heart":
        x, y = u * 1.15, v * 1.15 + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    if name == "crescent":
        return (r < 0.95) & (np.hypot(u - 0.45, v - 0.15) > 0.75)
    raise ValueError(f"unknown shape {name!r}")


def _pattern_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if name == "plain":
        return np.zeros(u.shape, dtype=bool)
    if name == "striped":
        return np.sin((u + v) * 7.0) > 0.2
    if name == "dotted":
        return np.hypot(np.mod(u * 2.6, 1) - 0.5, np.mod(v * 2.6, 1) - 0.5) < 0.28
    if name == "checkered":
        return (np.floor(u * 2.8) + np.floor(v * 2.8)) % 2 == 0
    raise ValueError(f"unknown pattern {name!r}")


def _backgrounds(attrs: Attributes, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, size = len(attrs), yy.shape[0]
    first = BACKGROUND_COLORS[attrs.bg_color[:, 0]][:, None, None, :]
    second = BACKGROUND_COLORS[attrs.bg_color[:, 1]][:, None, None, :]
    img = np.broadcast_to(first, (n, size, size, 3)).copy()
    kind = attrs.background
    grad = kind == BACKGROUNDS.index("gradient")
    if grad.any():
        t = ((yy + 1) / 2)[None, :, :, None]
        img[grad] = first[grad] * (1 - t) + second[grad] * t
    noisy = kind == BACKGROUNDS.index("noisy")
    if noisy.any():
        img[noisy] += rng.normal(0, 28, size=(int(noisy.sum()), size, size, 1)).astype(np.float32)
    grid = kind == BACKGROUNDS.index("grid")
    if grid.any():
        step = max(size // 6, 2)
        lines = ((np.arange(size)[:, None] % step == 0) | (np.arange(size)[None, :] % step == 0))[None, :, :, None]
        img[grid] = np.where(lines, second[grid] * 0.6, img[grid])
    return img


def render(
    attrs: Attributes, size: int, rng: np.random.Generator, style: Style, chunk: int = 1024
) -> np.ndarray:
    """Draw a batch of objects; returns uint8 images of shape (n, size, size, 3)."""
    out = np.empty((len(attrs), size, size, 3), dtype=np.uint8)
    for start in range(0, len(attrs), chunk):
        rows = np.arange(start, min(start + chunk, len(attrs)))
        out[rows] = _render_chunk(attrs.take(rows), size, rng, style)
    return out


def _render_chunk(attrs: Attributes, size: int, rng: np.random.Generator, style: Style) -> np.ndarray:
    coords = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    yy, xx = np.meshgrid(-coords, coords, indexing="ij")  # y points up
    img = _backgrounds(attrs, yy, xx, rng)
    # object coordinates: translate, rotate, scale (radius is in image-side units; the grid spans 2)
    cos = np.cos(attrs.rotation).astype(np.float32)[:, None, None]
    sin = np.sin(attrs.rotation).astype(np.float32)[:, None, None]
    dx = xx[None] - attrs.center[:, 0, None, None].astype(np.float32)
    dy = yy[None] - attrs.center[:, 1, None, None].astype(np.float32)
    scale = (2 * attrs.radius).astype(np.float32)[:, None, None]
    u, v = (cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale
    inside = np.zeros(u.shape, dtype=bool)
    patterned = np.zeros(u.shape, dtype=bool)
    for i, name in enumerate(SHAPES):
        rows = np.flatnonzero(attrs.shape == i)
        if rows.size:
            inside[rows] = shape_mask(name, u[rows], v[rows])
    for i, name in enumerate(PATTERNS):
        rows = np.flatnonzero(attrs.pattern == i)
        if rows.size:
            patterned[rows] = _pattern_mask(name, u[rows], v[rows])
    base = np.array([COLORS[c] for c in COLORS], dtype=np.float32)[attrs.color] + attrs.jitter.astype(np.float32)
    base = np.clip(base, 0, 255)
    # the pattern is a darker shade on light colours and a lighter one on dark colours
    light = base.mean(axis=1, keepdims=True) > 120
    shade = np.where(light, base * 0.5, base + (255 - base) * 0.55)
    fill = np.where(patterned[..., None], shade[:, None, None, :], base[:, None, None, :])
    img = np.where(inside[..., None], fill, img)
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(style.pixel_noise)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def perturb(images: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """A near-duplicate of each image, like a re-encoded web copy: contrast, brightness and noise changed."""
    x = images.astype(np.float32)
    gain = rng.uniform(0.93, 1.07, size=(len(x), 1, 1, 1))
    offset = rng.uniform(-8, 8, size=(len(x), 1, 1, 1))
    x = x * gain + offset + rng.normal(0, noise, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
