"""Procedural "anime-style" clips: cel-shaded characters and props over panning backgrounds.

A stand-in for real episodes that needs no download. Every shot is drawn from its seed alone:
- flat-coloured shapes with dark outlines (characters built from ellipses and polygons: body,
  swinging arms, head, spiky hair, big eyes; props are stars, polygons and discs);
- each object follows a smooth path from a start to an end point while it bobs, sways or spins
  and zooms, and objects overlap in a fixed z-order (occlusion), so the middle of a shot is
  never a cross-fade of its first and last frame;
- a flat or vertical-gradient background with clouds, hills and blocks that the camera pans;
- each drawing is held for 1, 2 or 3 frames (animation "on ones/twos/threes"): held frames
  are exact copies, flagged in `Shot.held`;
- in an episode, every shot gets a new palette, background and cast, and is redrawn until its
  first frame scores at least `min_cut_score` against the previous shot's last frame on
  `cut_score` (the measure PySceneDetect's ContentDetector thresholds, 27 by default).

All lengths are fractions of the frame size, so any (height, width) gives the same look.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Iterator

import cv2
import numpy as np

from ganime_jax.data import synthetic_shapes as shapes
from ganime_jax.errors import UserError

_HUE_WRAP_MARGIN = 0.04  # fraction of the hue circle kept free on each side of red


@dataclasses.dataclass(frozen=True)
class SyntheticAnimeConfig:
    """Every knob of the generator. Pairs are (min, max) ranges sampled uniformly."""

    height: int = 64
    width: int = 128
    characters: tuple[int, int] = (1, 3)
    props: tuple[int, int] = (0, 3)
    # Probability of holding a drawing for 1, 2 and 3 frames.
    hold_probabilities: tuple[float, float, float] = (0.3, 0.5, 0.2)
    character_size: tuple[float, float] = (0.45, 0.8)  # character height / frame height
    prop_size: tuple[float, float] = (0.15, 0.3)  # prop diameter / frame height
    speed: tuple[float, float] = (0.003, 0.012)  # path speed, frame widths per frame
    # Path end points lie in these column and row ranges (fractions of the frame width and
    # height): characters walk across the lower part of the frame.
    path_columns: tuple[float, float] = (0.12, 0.88)
    path_rows: tuple[float, float] = (0.37, 0.88)
    bob_amplitude: float = 0.03  # vertical bobbing, frame heights
    period: tuple[float, float] = (16.0, 40.0)  # bob, sway and arm-swing periods, frames
    sway_degrees: float = 8.0  # amplitude of a character's lean
    arm_swing_degrees: float = 30.0
    prop_spin: tuple[float, float] = (2.0, 8.0)  # prop rotation, degrees per frame
    max_zoom: float = 0.3  # scale changes by up to this factor over a shot
    still_probability: float = 0.4  # chance that an actor holds still for the whole shot
    pan_speed: tuple[float, float] = (0.002, 0.012)  # horizontal camera pan, widths per frame
    max_vertical_pan: float = 0.004  # heights per frame
    gradient_probability: float = 0.5
    background_features: tuple[int, int] = (2, 4)  # clouds/blocks per frame width of canvas
    background_saturation: tuple[float, float] = (0.35, 0.85)
    background_value: tuple[float, float] = (0.45, 0.95)
    outline_width: int = 1
    outline_value: float = 0.22  # brightness of the dark outlines (darker is noisier)
    # Episode shots are redrawn until the cut into them scores at least `min_cut_score` and
    # no step inside them scores above `max_shot_score` (`cut_score`; PySceneDetect cuts at
    # 27). H.264 at crf 10 moves these scores by a few points at most.
    min_cut_score: float = 45.0
    max_shot_score: float = 14.0
    max_style_attempts: int = 16

    def __post_init__(self) -> None:
        if self.height < shapes.MIN_FRAME_SIZE or self.width < shapes.MIN_FRAME_SIZE:
            raise UserError(f"synthetic frames must be at least {shapes.MIN_FRAME_SIZE} pixels "
                            f"high and wide, got {self.height}x{self.width}")
        for name in ("characters", "props", "character_size", "prop_size", "speed",
                     "path_columns", "path_rows", "period", "prop_spin", "pan_speed",
                     "background_features", "background_saturation", "background_value"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise UserError(f"synthetic anime config: {name} must be a (min, max) pair with "
                                f"0 <= min <= max, got {(low, high)}")
        if self.characters[0] + self.props[0] < 1 or self.speed[0] <= 0:
            raise UserError("synthetic anime config: every shot needs at least one moving object "
                            "(characters[0] + props[0] >= 1 and speed[0] > 0)")
        probs = np.asarray(self.hold_probabilities, float)
        if probs.shape != (3,) or (probs < 0).any() or not math.isclose(probs.sum(), 1.0):
            raise UserError("synthetic anime config: hold_probabilities must be 3 non-negative "
                            f"numbers summing to 1, got {self.hold_probabilities}")
        if not 0 <= self.still_probability <= 1:
            raise UserError("synthetic anime config: still_probability must be in [0, 1], got "
                            f"{self.still_probability}")
        if self.outline_width < 1 or self.period[0] <= 0 or self.max_style_attempts < 1:
            raise UserError("synthetic anime config: outline_width, period and "
                            "max_style_attempts must be positive")


@dataclasses.dataclass(frozen=True)
class Shot:
    frames: np.ndarray  # (T, H, W, 3) uint8
    held: np.ndarray  # (T,) bool: frame t is an exact copy of frame t - 1


@dataclasses.dataclass(frozen=True)
class Episode:
    frames: np.ndarray  # (T, H, W, 3) uint8
    cut_frames: list[int]  # first frame of every shot after the first
    shot_bounds: list[tuple[int, int]]  # [start, end) of every shot


def cut_score(frame_a: np.ndarray, frame_b: np.ndarray) -> float:
    """Mean absolute HSV difference of two RGB frames, as PySceneDetect's ContentDetector."""
    hsv_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2HSV).astype(np.int16)
    return float(np.abs(hsv_a - hsv_b).mean())


def _color(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """RGB of an HSV colour whose hue (any real, cyclic) is kept off pure red.

    Shot detectors take hue differences without wrap-around, so the compression noise of a
    red area (hue flipping between 0 and 179) would look like a cut.
    """
    hue = _HUE_WRAP_MARGIN + (hue % 1.0) * (1 - 2 * _HUE_WRAP_MARGIN)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything random about a shot, drawn before rendering."""

    background: shapes.Background
    actors: list[shapes.Actor]  # back to front
    holds: np.ndarray  # frames each drawing is shown

    @property
    def num_frames(self) -> int:
        return int(self.holds.sum())


def _background(rng: np.random.Generator, config: SyntheticAnimeConfig,
                num_frames: int) -> shapes.Background:
    h, w = config.height, config.width
    speed = rng.uniform(*config.pan_speed) * w * rng.choice([-1.0, 1.0])
    vertical = rng.uniform(-1.0, 1.0) * config.max_vertical_pan * h
    canvas_h = h + math.ceil(abs(vertical) * num_frames) + 1
    canvas_w = w + math.ceil(abs(speed) * num_frames) + 1
    hue = rng.uniform()
    sat = rng.uniform(*config.background_saturation)
    val = rng.uniform(*config.background_value)
    top = _color(hue, sat, val)
    if rng.uniform() < config.gradient_probability:
        bottom = _color(hue + rng.uniform(-0.08, 0.08), min(1.0, sat + 0.15), val * 0.6)
    else:
        bottom = top
    canvas = shapes.gradient(canvas_h, canvas_w, top, bottom)
    # Ground: a darker, clearly different hue; blocks: near the complementary hue; clouds: a
    # pale version of the sky.
    per_width = rng.integers(config.background_features[0], config.background_features[1] + 1)
    num_features = max(1, round(per_width * canvas_w / w))
    ground_color = _color(hue + rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), val * 0.7)
    block_color = _color(hue + rng.uniform(0.45, 0.55), rng.uniform(0.3, 0.6), val * 0.8)
    cloud_color = _color(hue, sat * 0.35, min(1.0, val + 0.2))
    shapes.draw_background_features(canvas, rng, num_features, h, cloud_color, block_color,
                                    ground_color)
    start = np.array([canvas_w - w - 1 if speed < 0 else 0,
                      canvas_h - h - 1 if vertical < 0 else 0], float)
    return shapes.Background(canvas, start, np.array([speed, vertical]), (h, w))


def _path(rng: np.random.Generator, config: SyntheticAnimeConfig,
          num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points inside the frame, mostly horizontal, at the drawn speed."""
    h, w = config.height, config.width
    lo_x, hi_x = (c * w for c in config.path_columns)
    lo_y, hi_y = (r * h for r in config.path_rows)
    x0 = rng.uniform(lo_x, hi_x)
    distance = rng.uniform(*config.speed) * w * num_frames
    room_right, room_left = hi_x - x0, x0 - lo_x
    direction = 1.0 if room_right >= room_left else -1.0
    if rng.uniform() < 0.5 and min(room_left, room_right) >= distance:
        direction = -direction
    x1 = x0 + direction * min(distance, max(room_left, room_right))
    return (np.array([x0, rng.uniform(lo_y, hi_y)]), np.array([x1, rng.uniform(lo_y, hi_y)]))


def _motion(rng: np.random.Generator, config: SyntheticAnimeConfig, num_frames: int,
            moving: bool, spin: float, sway: float) -> shapes.Motion:
    start, end = _path(rng, config, num_frames)
    return shapes.Motion(
        start=start, end=end if moving else start, num_frames=num_frames,
        log_zoom=rng.uniform(-1.0, 1.0) * math.log1p(config.max_zoom) * moving,
        angle=rng.uniform(-10.0, 10.0) if spin == 0 else rng.uniform(0.0, 360.0),
        spin=spin * moving, sway=sway * moving,
        bob=config.bob_amplitude * config.height * rng.uniform(0.3, 1.0) * moving,
        periods=rng.uniform(*config.period, size=3), phases=rng.uniform(0, 2 * math.pi, size=3))


def _plan_shot(rng: np.random.Generator, num_drawings: int,
               config: SyntheticAnimeConfig) -> _Plan:
    lengths = np.arange(1, len(config.hold_probabilities) + 1)
    holds = rng.choice(lengths, size=num_drawings, p=config.hold_probabilities)
    num_frames = int(holds.sum())
    background = _background(rng, config, num_frames)
    outline = _color(rng.uniform(), 0.6, config.outline_value)
    num_characters = rng.integers(config.characters[0], config.characters[1] + 1)
    num_props = rng.integers(config.props[0], config.props[1] + 1)
    # Limited animation: some actors stay still, but never all of them.
    moving = rng.uniform(size=num_characters + num_props) >= config.still_probability
    moving[rng.integers(moving.size)] = True
    actors = []
    for i in range(num_characters):
        size = rng.uniform(*config.character_size) * config.height
        sway = rng.uniform(0.3, 1.0) * config.sway_degrees * rng.choice([-1.0, 1.0])
        motion = _motion(rng, config, num_frames, moving[i], spin=0.0, sway=sway)
        palette = [_color(rng.uniform(), rng.uniform(0.5, 0.95), rng.uniform(0.55, 0.95))
                   for _ in range(4)]
        skin = _color(rng.uniform(0.02, 0.1), rng.uniform(0.15, 0.35), rng.uniform(0.85, 1.0))
        parts = shapes.character_parts(rng, palette, skin, outline,
                                       config.arm_swing_degrees * moving[i])
        actors.append(shapes.Actor(parts, motion, size, config.outline_width))
    for i in range(num_characters, num_characters + num_props):
        size = rng.uniform(*config.prop_size) * config.height
        spin = rng.uniform(*config.prop_spin) * rng.choice([-1.0, 1.0])
        motion = _motion(rng, config, num_frames, moving[i], spin=spin, sway=0.0)
        color = _color(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
        actors.append(shapes.Actor(shapes.prop_parts(rng, color, outline), motion, size,
                                   config.outline_width))
    order = rng.permutation(len(actors))
    return _Plan(background, [actors[i] for i in order], holds)


def _draw(plan: _Plan, t: float) -> np.ndarray:
    frame = plan.background.view(t)
    for actor in plan.actors:
        actor.draw(frame, t)
    return frame


def _render(plan: _Plan, first: np.ndarray | None = None) -> Shot:
    frames = np.empty((plan.num_frames, *plan.background.frame_shape, 3), np.uint8)
    held = np.zeros(plan.num_frames, bool)
    t = 0
    for hold in plan.holds:
        frames[t] = first if (t == 0 and first is not None) else _draw(plan, t)
        frames[t + 1:t + hold] = frames[t]
        held[t + 1:t + hold] = True
        t += hold
    return Shot(frames, held)


def render_shot(seed: int, num_drawings: int, config: SyntheticAnimeConfig) -> Shot:
    """One shot of `num_drawings` distinct drawings (T >= num_drawings frames)."""
    if num_drawings < 1:
        raise UserError(f"a shot needs at least one drawing, got num_drawings={num_drawings}")
    return _render(_plan_shot(np.random.default_rng(seed), num_drawings, config))


def _max_motion_score(shot: Shot) -> float:
    """Largest `cut_score` between consecutive frames of a shot (0 for a single drawing)."""
    drawings = shot.frames[~shot.held]
    if len(drawings) < 2:
        return 0.0
    n, h, w, _ = drawings.shape
    hsv = cv2.cvtColor(drawings.reshape(n * h, w, 3), cv2.COLOR_RGB2HSV)
    steps = cv2.absdiff(hsv[h:], hsv[:-h]).reshape(n - 1, h * w * 3)
    return float(steps.sum(axis=1, dtype=np.int64).max()) / (h * w * 3)


def _distinct_shot(seed: int, index: int, num_drawings: int, config: SyntheticAnimeConfig,
                   previous: np.ndarray | None) -> Shot:
    """A shot that starts with a detectable cut and holds no change that looks like one.

    Candidates are drawn until the first frame scores at least `min_cut_score` against
    `previous` and no step inside the shot scores above `max_shot_score`; if none passes in
    `max_style_attempts`, the candidate with the largest (least negative) margin is kept.
    """
    best_margin, best = -math.inf, None
    for attempt in range(config.max_style_attempts):
        plan = _plan_shot(np.random.default_rng([seed, index, attempt]), num_drawings, config)
        first = _draw(plan, 0)
        margin = math.inf if previous is None else cut_score(previous, first) - config.min_cut_score
        shot = None
        if margin >= 0:
            shot = _render(plan, first)
            margin = min(margin, config.max_shot_score - _max_motion_score(shot))
            if margin >= 0:
                return shot
        if margin > best_margin:
            best_margin, best = margin, (plan, first, shot)
    plan, first, shot = best
    return shot if shot is not None else _render(plan, first)


def iter_episode_shots(seed: int, num_shots: int | None, config: SyntheticAnimeConfig,
                       min_drawings: int, max_drawings: int,
                       num_frames: int | None = None) -> Iterator[Shot]:
    """Yields the shots of an episode one at a time (a long episode never sits in memory).

    Give `num_shots`, or `num_shots=None` and `num_frames` for an episode of exactly that many
    frames; then every shot, the last included, keeps at least `min_drawings` frames (shorter
    shots would fall below the minimum scene length of shot detectors), except when
    `num_frames` itself is shorter.
    """
    if not 1 <= min_drawings <= max_drawings:
        raise UserError(f"need 1 <= min_drawings <= max_drawings, got {min_drawings}, "
                        f"{max_drawings}")
    if (num_shots is None) == (num_frames is None):
        raise UserError("give exactly one of num_shots and num_frames for a synthetic episode")
    if (num_shots if num_frames is None else num_frames) < 1:
        raise UserError(f"an episode needs at least one shot and frame, got num_shots="
                        f"{num_shots}, num_frames={num_frames}")
    rng = np.random.default_rng(seed)
    previous, produced, index = None, 0, 0
    while (index < num_shots) if num_frames is None else (produced < num_frames):
        limit = None
        if num_frames is None:
            num_drawings = int(rng.integers(min_drawings, max_drawings + 1))
        elif num_frames - produced < 2 * min_drawings:
            num_drawings = limit = num_frames - produced
        else:
            limit = num_frames - produced - min_drawings
            num_drawings = int(rng.integers(min_drawings, min(max_drawings, limit) + 1))
        shot = _distinct_shot(seed, index, num_drawings, config, previous)
        if limit is not None:
            shot = Shot(shot.frames[:limit], shot.held[:limit])
        previous = shot.frames[-1]
        produced += len(shot.frames)
        index += 1
        yield shot


def render_episode(seed: int, num_shots: int, config: SyntheticAnimeConfig,
                   min_drawings: int, max_drawings: int) -> Episode:
    """All shots of `iter_episode_shots` concatenated, with the true cut positions."""
    shots = list(iter_episode_shots(seed, num_shots, config, min_drawings, max_drawings))
    bounds, start = [], 0
    for shot in shots:
        bounds.append((start, start + len(shot.frames)))
        start += len(shot.frames)
    return Episode(np.concatenate([s.frames for s in shots]), [b[0] for b in bounds[1:]], bounds)
