"""Scenes of coloured shapes in a 2x2 grid, drawn with Pillow: the CLEVR-like half of the embedded data."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True)
class PlacedShape:
    shape: str
    color: str
    position: str


@dataclass(frozen=True)
class ShapeScene:
    objects: tuple[PlacedShape, ...]


def sample_scene(rng: random.Random) -> ShapeScene:
    """1-3 shapes; each shape kind and colour at most once, so 'the circle' and 'the red shape' are unambiguous."""
    count = rng.randint(1, 3)
    shapes = rng.sample(SHAPES, count)
    colors = rng.sample(sorted(COLORS), count)
    positions = rng.sample(POSITIONS, count)
    return ShapeScene(tuple(PlacedShape(s, c, p) for s, c, p in zip(shapes, colors, positions)))


def render_scene(scene: ShapeScene, rng: random.Random, image_size_px: int) -> Image.Image:
    background = rng.choice([(255, 255, 255), (240, 240, 240), (250, 246, 235)])
    image = Image.new("RGB", (image_size_px, image_size_px), background)
    draw = ImageDraw.Draw(image)
    cell = image_size_px / 2
    for placed in scene.objects:
        row = 0 if placed.position.startswith("top") else 1
        col = 0 if placed.position.endswith("left") else 1
        radius = cell * rng.uniform(0.28, 0.4)
        cx = (col + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLORS[placed.color]
        if placed.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif placed.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image
