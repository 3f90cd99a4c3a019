"""Drawing primitives of the synthetic anime generator: outlined shapes, actors, backgrounds.

Shapes are polygons in an actor's own units (1 = the actor's height) that are rotated,
scaled and moved per frame and filled with OpenCV at sub-pixel precision, so motion of a
fraction of a pixel still changes the antialiased edges.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

MIN_FRAME_SIZE = 16
SUBPIXEL_BITS = 4
_SUBPIXEL_SCALE = 1 << SUBPIXEL_BITS
_ELLIPSE_POINTS = 24
Color = tuple[int, int, int]


def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, _ELLIPSE_POINTS, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def star(num_points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, 2 * num_points, endpoint=False) - math.pi / 2
    radii = np.where(np.arange(2 * num_points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


@dataclasses.dataclass(frozen=True)
class Part:
    """One filled polygon; `swing` (radians) rotates it about `pivot` (arms)."""

    points: np.ndarray  # (N, 2) in actor units
    color: Color
    outline: Color | None
    pivot: tuple[float, float] = (0.0, 0.0)
    swing: float = 0.0
    swing_phase: float = 0.0


@dataclasses.dataclass(frozen=True)
class Motion:
    """A smooth path from `start` to `end` (pixels) with bobbing, sway or spin and zoom."""

    start: np.ndarray
    end: np.ndarray
    num_frames: int
    log_zoom: float  # log of the scale at the end of the shot
    angle: float  # degrees at t = 0
    spin: float  # degrees per frame
    sway: float  # degrees, amplitude of a periodic lean
    bob: float  # pixels, amplitude of a periodic vertical bounce
    periods: np.ndarray  # frames: bob, sway, arm swing
    phases: np.ndarray  # radians: bob, sway, arm swing

    def pose(self, t: float) -> tuple[np.ndarray, float, float, float]:
        """(position, zoom, angle in radians, arm-swing phase) at frame t."""
        u = t / max(self.num_frames - 1, 1)
        # Half linear, half smoothstep: eases in and out but never stands still.
        progress = 0.5 * u + 0.5 * u * u * (3 - 2 * u)
        waves = np.sin(2 * math.pi * t / self.periods + self.phases)
        position = self.start + (self.end - self.start) * progress
        position = position + np.array([0.0, self.bob * waves[0]])
        angle = self.angle + self.spin * t + self.sway * waves[1]
        swing_phase = 2 * math.pi * t / self.periods[2] + self.phases[2]
        return position, math.exp(self.log_zoom * u), math.radians(angle), swing_phase


@dataclasses.dataclass(frozen=True)
class Actor:
    parts: list[Part]  # back to front
    motion: Motion
    size: float  # pixels per actor unit at zoom 1
    outline_width: int

    def draw(self, frame: np.ndarray, t: float) -> None:
        position, zoom, angle, swing_phase = self.motion.pose(t)
        cos, sin = math.cos(angle), math.sin(angle)
        transform = self.size * zoom * np.array([[cos, sin], [-sin, cos]])
        for part in self.parts:
            points = part.points
            if part.swing:
                a = part.swing * math.sin(swing_phase + part.swing_phase)
                rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
                points = (points - part.pivot) @ rotation + part.pivot
            pixels = points @ transform + position
            fixed = np.round(pixels * _SUBPIXEL_SCALE).astype(np.int32)
            cv2.fillPoly(frame, [fixed], part.color, cv2.LINE_AA, SUBPIXEL_BITS)
            if part.outline is not None:
                cv2.polylines(frame, [fixed], True, part.outline, self.outline_width,
                              cv2.LINE_AA, SUBPIXEL_BITS)


def character_parts(rng: np.random.Generator, palette: list[Color], skin: Color,
                    outline: Color, arm_swing_degrees: float) -> list[Part]:
    """A chibi figure 1 unit high centred on the origin: arms, body, head, hair, eyes."""
    shoulder = rng.uniform(0.09, 0.13)
    hem = rng.uniform(0.16, 0.24)
    if rng.uniform() < 0.5:
        body = np.array([[-shoulder, -0.04], [shoulder, -0.04], [hem, 0.5], [-hem, 0.5]])
    else:
        body = ellipse(0.0, 0.24, (shoulder + hem) / 2, 0.27)
    swing = math.radians(arm_swing_degrees) * rng.uniform(0.5, 1.0)
    arms = [Part(ellipse(side * (shoulder + 0.02), 0.13, 0.045, 0.14), palette[1], outline,
                 pivot=(side * (shoulder + 0.02), 0.0), swing=swing,
                 swing_phase=0.0 if side < 0 else math.pi) for side in (-1.0, 1.0)]
    head_y, head_r = -0.22, 0.2
    num_spikes = int(rng.integers(4, 8))
    angles = np.linspace(math.pi, 2 * math.pi, 2 * num_spikes + 1)
    radii = np.where(np.arange(angles.size) % 2 == 1, head_r + rng.uniform(0.06, 0.12),
                     head_r + 0.01)
    cap = np.stack([radii * np.cos(angles), head_y + radii * np.sin(angles)], axis=1)
    fringe = np.array([[0.2, head_y - 0.02], [0.1, head_y - 0.07], [0.0, head_y - 0.05],
                       [-0.1, head_y - 0.07], [-0.2, head_y - 0.02]])
    hair = np.concatenate([cap, fringe])
    look = rng.uniform(-0.015, 0.015)
    eyes = []
    for side in (-1.0, 1.0):
        x = side * 0.075
        eyes += [Part(ellipse(x, head_y + 0.05, 0.05, 0.065), (255, 255, 255), outline),
                 Part(ellipse(x + look, head_y + 0.06, 0.032, 0.046), palette[3], None),
                 Part(ellipse(x + look, head_y + 0.06, 0.014, 0.024), outline, None)]
    return [*arms, Part(body, palette[0], outline),
            Part(ellipse(0.0, head_y, head_r, head_r * 1.05), skin, outline),
            Part(hair, palette[2], outline), *eyes]


def prop_parts(rng: np.random.Generator, color: Color, outline: Color) -> list[Part]:
    """A star, regular polygon or disc of diameter 1 with a light inner mark (shows spin)."""
    kind = rng.integers(3)
    if kind == 0:
        shape = star(int(rng.integers(4, 8)), 0.5, rng.uniform(0.22, 0.3))
    elif kind == 1:
        sides = int(rng.integers(3, 7))
        angles = np.linspace(0.0, 2 * math.pi, sides, endpoint=False)
        shape = 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        shape = ellipse(0.0, 0.0, 0.5, rng.uniform(0.3, 0.5))
    light = tuple(min(255, c + 90) for c in color)
    return [Part(shape, color, outline), Part(ellipse(0.12, -0.1, 0.1, 0.06), light, None)]


@dataclasses.dataclass(frozen=True)
class Background:
    """A painted canvas larger than the frame; the camera window moves across it."""

    canvas: np.ndarray
    start: np.ndarray  # top-left corner (x, y) of the window at t = 0
    velocity: np.ndarray  # pixels per frame (x, y)
    frame_shape: tuple[int, int]

    def view(self, t: float) -> np.ndarray:
        h, w = self.frame_shape
        x, y = np.round(self.start + self.velocity * t).astype(int)
        x = min(max(x, 0), self.canvas.shape[1] - w)
        y = min(max(y, 0), self.canvas.shape[0] - h)
        return self.canvas[y:y + h, x:x + w].copy()


def gradient(height: int, width: int, top: Color, bottom: Color) -> np.ndarray:
    weights = np.linspace(0.0, 1.0, height)[:, None]
    rows = (1 - weights) * np.array(top, float) + weights * np.array(bottom, float)
    return np.repeat(np.round(rows).astype(np.uint8)[:, None, :], width, axis=1)


def draw_background_features(canvas: np.ndarray, rng: np.random.Generator, num_features: int,
                             frame_height: int, cloud: Color, block: Color,
                             ground: Color) -> None:
    """Clouds, blocks (buildings) and rolling hills spread over the whole canvas width."""
    height, width = canvas.shape[:2]
    horizon = height - frame_height * rng.uniform(0.2, 0.4)
    for x in rng.uniform(0, width, size=num_features):
        if rng.uniform() < 0.5:
            y = rng.uniform(0.1, 0.45) * frame_height + (height - frame_height) * rng.uniform()
            for dx in rng.uniform(-0.08, 0.08, size=3) * frame_height:
                radius = frame_height * rng.uniform(0.05, 0.1)
                cv2.ellipse(canvas, (round(x + dx), round(y)), (round(2 * radius), round(radius)),
                            0, 0, 360, cloud, -1, cv2.LINE_AA)
        else:
            half = frame_height * rng.uniform(0.05, 0.12)
            top = horizon - frame_height * rng.uniform(0.15, 0.4)
            cv2.rectangle(canvas, (round(x - half), round(top)), (round(x + half), height),
                          block, -1)
    xs = np.arange(0, width + 8, 4, dtype=float)
    period = frame_height * rng.uniform(1.0, 2.5)
    amplitude = frame_height * rng.uniform(0.03, 0.08)
    ys = horizon + amplitude * np.sin(2 * math.pi * xs / period + rng.uniform(0, 2 * math.pi))
    hills = np.concatenate([np.stack([xs, ys], axis=1), [[xs[-1], height], [0, height]]])
    cv2.fillPoly(canvas, [np.round(hills).astype(np.int32)], ground, cv2.LINE_AA)
