"""Synthetic visible-infrared person re-identification data in the real SYSU-MM01, RegDB or LLCM layout.

Why: no real dataset may be downloaded here, yet the readers, the protocols and a training run must be
exercised end to end. The generator draws people procedurally (build, proportions, pose, hair, hat,
bags, garments with patterns) and films them with several cameras (background, scale, position,
viewpoint, light, blur, sensor noise). The infrared rendering drops colour but keeps the shapes and
the garment patterns, with a per-material infrared brightness drawn independently of the visible
colour, so colour alone cannot solve the cross-modal match while silhouettes and textures can.

``ir_coupling`` (0..1, default 0) makes the infrared brightness of clothes, hats, shoes and bags partly
follow their visible colour, as dyes do in real near-infrared: 0 keeps the independent draw (so existing
sets reproduce byte for byte), 1 makes it a fixed function of the colour's luminance and hue family.
Beside every layout, ``captions.jsonl`` gives each crop's ground-truth attributes and a caption
(``synth_captions``); ``--layout captions`` writes a large captioned pretraining set without a ReID split.

Everything is a pure function of (seed, identity, camera, modality, image index): two runs with the
same arguments write byte-identical files, whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

LAYOUTS = ("sysu", "regdb", "llcm", "captions")
DEFAULT_IMAGES_PER_CAMERA = {"sysu": 6, "regdb": 10, "llcm": 5, "captions": 2}
DEFAULT_SIZE = (128, 64)
MAX_IDS = 9999  # identities are 4-digit folder names

VISIBLE, INFRARED = 0, 1

# Part labels of the person label map.
BG, SKIN, HAIR, UPPER, LOWER, SHOES, BAG, HAT = range(8)
NUM_LABELS = 8

PATTERNS = ("plain", "hstripes", "vstripes", "diagonal", "checks", "dots")
_LAYOUT_CODE = {"sysu": 1, "regdb": 2, "llcm": 3, "captions": 4}
_TAG_IDENTITY, _TAG_SCENE, _TAG_CAMERA, _TAG_IMAGE, _TAG_SPLIT, _TAG_COVER, _TAG_CAPTION = range(1, 8)
CAPTIONS_FILE = "captions.jsonl"
DEFAULT_IR_COUPLING = 0.0


class SynthError(ValueError):
    """Bad generator arguments (layout, size, counts, output folder)."""


# --------------------------------------------------------------------------------------------------
# Identities


@dataclass(frozen=True)
class Garment:
    rgb: tuple[float, float, float]
    ir: float  # infrared brightness of the material, independent of its visible colour
    pattern: str
    accent_rgb: tuple[float, float, float]
    accent_ir: float
    period: float  # pattern period as a fraction of the person's height
    angle: float
    duty: float


@dataclass(frozen=True)
class Identity:
    pid: int
    shoulder: float  # half shoulder width / height
    waist: float  # relative to shoulder
    hip: float  # relative to shoulder
    leg_frac: float  # legs / height
    head: float  # head radius / height
    leg_width: float  # relative to hip half width
    skin_rgb: tuple[float, float, float]
    skin_ir: float
    hair_rgb: tuple[float, float, float]
    hair_ir: float
    hair_style: str  # short | long | ponytail | bald
    hat: str  # none | cap | beanie
    hat_rgb: tuple[float, float, float]
    hat_ir: float
    sleeves: str  # short | long
    lower_kind: str  # pants | shorts | skirt
    upper: Garment
    lower: Garment
    shoes_rgb: tuple[float, float, float]
    shoes_ir: float
    bag: str  # none | backpack | shoulder | hand
    bag_side: int  # -1 left, +1 right
    bag_rgb: tuple[float, float, float]
    bag_ir: float
    back_view_prob: float


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A clothing-like colour: a third of garments are greys/black/white, the rest saturated hues."""
    if rng.random() < 0.33:
        v = float(rng.choice([0.08, 0.2, 0.45, 0.7, 0.92]) + rng.uniform(-0.05, 0.05))
        return (v, v, v)
    h, s, v = rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.25, 0.95)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _ir_level(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.08, 0.95))


def _garment(rng: np.random.Generator) -> Garment:
    base_ir = _ir_level(rng)
    # The pattern must show in infrared too: its material differs clearly in brightness.
    delta = rng.uniform(0.22, 0.5) * (1 if base_ir < 0.5 else -1)
    pattern = str(rng.choice(PATTERNS, p=[0.25, 0.17, 0.14, 0.14, 0.15, 0.15]))
    return Garment(
        rgb=_colour(rng),
        ir=base_ir,
        pattern=pattern,
        accent_rgb=_colour(rng),
        accent_ir=float(np.clip(base_ir + delta, 0.03, 0.98)),
        period=float(rng.uniform(0.04, 0.11)),
        angle=float(rng.uniform(0.35, 1.2) * rng.choice([-1, 1])),
        duty=float(rng.uniform(0.35, 0.6)),
    )


# Colour names and the infrared coupling. Hue families are bins of the HSV hue; greys (low saturation)
# are named by value. The names are the captions' colour words and the coupling's hue families.
COLOUR_NAMES = ("black", "grey", "white", "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
_HUE_BINS = ((0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.54, "teal"), (0.72, "blue"),
             (0.83, "purple"), (0.95, "pink"), (1.01, "red"))  # fmt: skip
# Infrared brightness offset per colour family at coupling 1 (a fixed, arbitrary table: dyes of one
# family reflect near-infrared alike); greys follow luminance only.
_FAMILY_IR_OFFSET = {"red": 0.22, "orange": 0.16, "yellow": 0.08, "green": -0.02, "teal": -0.1, "blue": -0.18,
                     "purple": 0.04, "pink": 0.14, "black": 0.0, "grey": 0.0, "white": 0.0}  # fmt: skip
_MIN_PATTERN_CONTRAST = 0.15  # an accent stays this far from its garment's infrared brightness


def colour_name(rgb: Sequence[float]) -> str:
    """The family name of a material colour (one of ``COLOUR_NAMES``)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if s < 0.2:
        return "black" if v < 0.3 else ("white" if v > 0.8 else "grey")
    return next(name for bound, name in _HUE_BINS if h < bound)


def coupled_ir(rgb: Sequence[float]) -> float:
    """Infrared brightness at coupling 1: a fixed function of luminance and hue family."""
    r, g, b = (float(c) for c in rgb)
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return float(np.clip(0.15 + 0.55 * luminance + _FAMILY_IR_OFFSET[colour_name(rgb)], 0.05, 0.95))


def _mix_ir(independent: float, rgb: Sequence[float], coupling: float) -> float:
    return float((1.0 - coupling) * independent + coupling * coupled_ir(rgb))


def _couple_garment(g: Garment, coupling: float) -> Garment:
    ir = _mix_ir(g.ir, g.rgb, coupling)
    accent = _mix_ir(g.accent_ir, g.accent_rgb, coupling)
    if abs(accent - ir) < _MIN_PATTERN_CONTRAST:  # keep the pattern visible in infrared
        accent = ir + _MIN_PATTERN_CONTRAST * (1.0 if ir < 0.5 else -1.0)
    return replace(g, ir=ir, accent_ir=float(np.clip(accent, 0.03, 0.98)))


def check_ir_coupling(value: float) -> float:
    """Validate the coupling (a number in [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise SynthError(f"--ir-coupling must be a number in 0..1, got {value!r}")
    return float(value)


def make_identity(seed: int, pid: int, ir_coupling: float = DEFAULT_IR_COUPLING) -> Identity:
    """All identity-level attributes, drawn from (seed, pid) only; ``ir_coupling`` then pulls the
    infrared brightness of clothes, hat, shoes and bag towards ``coupled_ir`` of their colour."""
    ident = _draw_identity(seed, pid)
    c = check_ir_coupling(ir_coupling)
    if c == 0.0:
        return ident
    return replace(
        ident,
        upper=_couple_garment(ident.upper, c),
        lower=_couple_garment(ident.lower, c),
        hat_ir=_mix_ir(ident.hat_ir, ident.hat_rgb, c),
        shoes_ir=_mix_ir(ident.shoes_ir, ident.shoes_rgb, c),
        bag_ir=_mix_ir(ident.bag_ir, ident.bag_rgb, c),
    )


def _draw_identity(seed: int, pid: int) -> Identity:
    rng = _rng(seed, _TAG_IDENTITY, pid)
    skin_v = rng.uniform(0.35, 0.95)
    skin = colorsys.hsv_to_rgb(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), skin_v)
    hair_style = str(rng.choice(["short", "long", "ponytail", "bald"], p=[0.45, 0.3, 0.17, 0.08]))
    return Identity(
        pid=pid,
        shoulder=float(rng.uniform(0.095, 0.16)),
        waist=float(rng.uniform(0.68, 0.95)),
        hip=float(rng.uniform(0.72, 1.08)),
        leg_frac=float(rng.uniform(0.43, 0.53)),
        head=float(rng.uniform(0.052, 0.072)),
        leg_width=float(rng.uniform(0.4, 0.56)),
        skin_rgb=(float(skin[0]), float(skin[1]), float(skin[2])),
        skin_ir=float(rng.uniform(0.5, 0.85)),
        hair_rgb=_colour(rng) if rng.random() < 0.15 else (float(rng.uniform(0.03, 0.45)),) * 3,
        hair_ir=float(rng.uniform(0.05, 0.6)),
        hair_style=hair_style,
        hat=str(rng.choice(["none", "cap", "beanie"], p=[0.7, 0.18, 0.12])),
        hat_rgb=_colour(rng),
        hat_ir=_ir_level(rng),
        sleeves=str(rng.choice(["short", "long"])),
        lower_kind=str(rng.choice(["pants", "shorts", "skirt"], p=[0.62, 0.2, 0.18])),
        upper=_garment(rng),
        lower=_garment(rng),
        shoes_rgb=_colour(rng),
        shoes_ir=_ir_level(rng),
        bag=str(rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.4, 0.25, 0.2, 0.15])),
        bag_side=int(rng.choice([-1, 1])),
        bag_rgb=_colour(rng),
        bag_ir=_ir_level(rng),
        back_view_prob=float(rng.uniform(0.2, 0.6)),
    )


# --------------------------------------------------------------------------------------------------
# Cameras and scenes


@dataclass(frozen=True)
class Camera:
    camid: int
    modality: int
    thermal: bool  # far-infrared (RegDB): warm bodies, cold background
    low_light: bool  # LLCM visible cameras at night
    outdoor: bool
    horizon: float
    wall_rgb: tuple[float, float, float]
    floor_rgb: tuple[float, float, float]
    accent_rgb: tuple[float, float, float]
    wall_ir: float
    floor_ir: float
    accent_ir: float
    texture: str  # panels | tiles | bricks | noise
    texture_scale: float
    props: tuple[tuple[float, float, float, float], ...]  # x0, y0, x1, y1 in [0,1]
    gain: float
    cast: tuple[float, float, float]
    scale: float
    blur: float
    noise: float
    view_bias: float  # added to an identity's back-view probability
    side_prob: float


def _scene_of(layout: str, camid: int) -> int:
    # SYSU cam3 (IR) films the same room as cam2; RegDB's two sensors are co-located; LLCM cameras
    # record both modalities of one scene.
    if layout == "sysu":
        return {3: 2}.get(camid, camid)
    if layout == "regdb":
        return 1
    return camid  # LLCM and the captions set: one scene per camera


def make_camera(seed: int, layout: str, camid: int, modality: int) -> Camera:
    scene = _scene_of(layout, camid)
    s = _rng(seed, _TAG_SCENE, _LAYOUT_CODE[layout], scene)
    outdoor = bool(layout == "sysu" and camid in (4, 5, 6)) or bool(layout != "sysu" and s.random() < 0.4)
    props = []
    for _ in range(int(s.integers(0, 4))):
        x0 = float(s.uniform(-0.1, 0.9))
        w = float(s.uniform(0.05, 0.35))
        y0 = float(s.uniform(0.0, 0.5))
        props.append((x0, y0, x0 + w, float(s.uniform(y0 + 0.15, 1.0))))
    scene_fields = {
        "outdoor": outdoor,
        "horizon": float(s.uniform(0.5, 0.78)),
        "wall_rgb": _colour(s),
        "floor_rgb": _colour(s),
        "accent_rgb": _colour(s),
        "wall_ir": float(s.uniform(0.1, 0.7)),
        "floor_ir": float(s.uniform(0.1, 0.7)),
        "accent_ir": float(s.uniform(0.1, 0.9)),
        "texture": str(s.choice(["panels", "tiles", "bricks", "noise"])),
        "texture_scale": float(s.uniform(0.06, 0.2)),
        "props": tuple(props),
    }
    c = _rng(seed, _TAG_CAMERA, _LAYOUT_CODE[layout], camid, modality)
    thermal = layout == "regdb" and modality == INFRARED
    low_light = layout == "llcm" and modality == VISIBLE
    if modality == VISIBLE:
        gain = float(c.uniform(0.3, 0.6) if low_light else c.uniform(0.7, 1.2))
        cast = tuple(float(x) for x in c.uniform(0.82, 1.12, 3))
        noise = float(c.uniform(0.03, 0.06) if low_light else c.uniform(0.005, 0.02))
        blur = float(c.uniform(0.2, 0.7))
    else:
        gain = float(c.uniform(0.75, 1.15))
        cast = (1.0, 1.0, 1.0)
        noise = float(c.uniform(0.02, 0.05))
        blur = float(c.uniform(0.5, 1.1) if thermal else c.uniform(0.35, 0.9))
    return Camera(
        camid=camid,
        modality=modality,
        thermal=thermal,
        low_light=low_light,
        gain=gain,
        cast=cast,  # type: ignore[arg-type]
        scale=float(c.uniform(0.86, 1.0)),
        blur=blur,
        noise=noise,
        view_bias=float(c.uniform(-0.2, 0.3)),
        side_prob=float(c.uniform(0.1, 0.35)),
        **scene_fields,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------------
# Rendering


def _limb(x0: float, y0: float, x1: float, y1: float, w0: float, w1: float) -> list[tuple[float, float]]:
    """Quadrilateral from (x0, y0) to (x1, y1) with half-widths w0 and w1 across the limb axis."""
    dx, dy = x1 - x0, y1 - y0
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm, dx / norm
    return [(x0 + nx * w0, y0 + ny * w0), (x1 + nx * w1, y1 + ny * w1), (x1 - nx * w1, y1 - ny * w1),
            (x0 - nx * w0, y0 - ny * w0)]  # fmt: skip


def _pattern_mask(g: Garment, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where the accent material shows, in person-relative coordinates (moves and scales with the body)."""
    if g.pattern == "plain":
        return None
    f = 1.0 / g.period
    if g.pattern == "hstripes":
        return (v * f) % 1.0 < g.duty
    if g.pattern == "vstripes":
        return (u * f) % 1.0 < g.duty
    if g.pattern == "diagonal":
        return ((u * math.sin(g.angle) + v * math.cos(g.angle)) * f) % 1.0 < g.duty
    if g.pattern == "checks":
        return ((u * f) % 1.0 < 0.5) ^ ((v * f) % 1.0 < 0.5)
    du, dv = (u * f) % 1.0 - 0.5, (v * f) % 1.0 - 0.5  # dots
    return du * du + dv * dv < (0.32 * g.duty) ** 2 * 4


def _draw_person(
    draw: ImageDraw.ImageDraw, ident: Identity, cx: float, top: float, ph: float, view: str, phase: float
) -> None:
    """Draw the part-label map of one person (front, back or side view) with walking phase in [-1, 1]."""
    poly = draw.polygon
    r = ident.head * ph
    side = view == "side"
    body_scale = 0.62 if side else 1.0
    sw = ident.shoulder * ph * body_scale
    ww = sw * ident.waist
    hw = sw * ident.hip
    y_neck = top + 2 * r
    y_sh = y_neck + 0.02 * ph
    y_hip = top + ph * (1 - ident.leg_frac)
    y_knee = y_hip + 0.5 * (top + ph - y_hip)
    y_foot = top + ph
    lw = max(1.0, hw * ident.leg_width * (1.25 if side else 1.0))
    aw = sw * (0.45 if side else 0.3)

    # Legs: a stride swings the legs in the side view, a small sway in the front/back views.
    legs = []
    for sign in (-1, 1):
        if side:
            ang = 0.32 * phase * sign
            hip_x = cx
        else:
            ang = 0.06 * phase * sign
            hip_x = cx + sign * (hw - lw * 0.95)
        foot_x = hip_x + math.sin(ang) * (y_foot - y_hip)
        knee_x = hip_x + math.sin(ang) * (y_knee - y_hip)
        legs.append((hip_x, knee_x, foot_x))
    hair_long = ident.hair_style == "long"
    back = view == "back"
    if hair_long and not back:
        poly(_limb(cx, top + r, cx, y_sh + 0.09 * ph, r * 1.05, r * 1.1), fill=HAIR)
    if ident.bag == "backpack" and not back:
        bx = cx - ident.bag_side * sw * 0.9 if side else cx
        if side:
            draw.rounded_rectangle((bx - sw * 0.7, y_sh + 0.01 * ph, bx + sw * 0.7, y_hip - 0.02 * ph), 3, fill=BAG)
    for hip_x, knee_x, foot_x in legs:
        poly(_limb(hip_x, y_hip - 0.01 * ph, foot_x, y_foot - 0.015 * ph, lw, lw * 0.8), fill=SKIN)
        if ident.lower_kind == "pants":
            poly(_limb(hip_x, y_hip - 0.01 * ph, foot_x, y_foot - 0.02 * ph, lw * 1.05, lw * 0.85), fill=LOWER)
        elif ident.lower_kind == "shorts":
            k = 0.75
            mid_x = hip_x + (knee_x - hip_x) * k
            poly(_limb(hip_x, y_hip - 0.01 * ph, mid_x, y_hip + (y_knee - y_hip) * k, lw * 1.1, lw * 1.05),
                 fill=LOWER)  # fmt: skip
        draw.ellipse((foot_x - lw * 1.3, y_foot - 0.035 * ph, foot_x + lw * 1.3, y_foot), fill=SHOES)
    if ident.lower_kind == "skirt":
        spread = hw * 1.45
        poly([(cx - hw, y_hip - 0.02 * ph), (cx + hw, y_hip - 0.02 * ph), (cx + spread, y_knee + 0.02 * ph),
              (cx - spread, y_knee + 0.02 * ph)], fill=LOWER)  # fmt: skip
    # Torso (upper garment down past the hip line).
    y_low = y_hip + 0.04 * ph
    poly([(cx - sw, y_sh), (cx + sw, y_sh), (cx + ww, (y_sh + y_hip) / 2), (cx + hw * 1.02, y_low),
          (cx - hw * 1.02, y_low), (cx - ww, (y_sh + y_hip) / 2)], fill=UPPER)  # fmt: skip
    # Arms: skin, then the sleeve over it.
    arm_len = 0.37 * ph
    arms = (1,) if side else (-1, 1)
    for sign in arms:
        ang = (0.35 * phase * sign) if side else (0.08 + 0.05 * phase * sign)
        sx = cx if side else cx + sign * (sw - aw * 0.6)
        ex = sx + math.sin(ang) * arm_len * (1 if side else sign)
        ey = y_sh + math.cos(ang) * arm_len
        poly(_limb(sx, y_sh + aw * 0.5, ex, ey, aw, aw * 0.75), fill=SKIN)
        frac = 0.45 if ident.sleeves == "short" else 0.93
        mx, my = sx + (ex - sx) * frac, y_sh + aw * 0.5 + (ey - y_sh - aw * 0.5) * frac
        poly(_limb(sx, y_sh, mx, my, aw * 1.12, aw * 0.95), fill=UPPER)
        if ident.bag == "hand" and (side or sign == ident.bag_side):
            bw = sw * 0.55
            draw.rectangle((ex - bw, ey, ex + bw, ey + 0.1 * ph), fill=BAG)
    # Neck and head.
    poly(_limb(cx, y_neck - r * 0.3, cx, y_sh + 0.01 * ph, r * 0.45, r * 0.5), fill=SKIN)
    hx = cx + (r * 0.15 * (1 if side else 0))
    draw.ellipse((hx - r * (0.85 if side else 0.9), top, hx + r * (0.85 if side else 0.9), top + 2 * r), fill=SKIN)
    # Hair.
    if ident.hair_style != "bald":
        if back:
            draw.ellipse((hx - r * 0.95, top - r * 0.05, hx + r * 0.95, top + 2 * r * 0.95), fill=HAIR)
            if hair_long:
                poly(_limb(cx, top + r, cx, y_sh + 0.09 * ph, r * 1.0, r * 1.05), fill=HAIR)
        else:
            draw.chord((hx - r * 0.98, top - r * 0.08, hx + r * 0.98, top + r * 1.5), 180, 360, fill=HAIR)
        if ident.hair_style == "ponytail":
            px = hx - (r * 1.0 if side else 0)
            draw.ellipse((px - r * 0.45, top + r * 0.6, px + r * 0.45, top + r * 2.2), fill=HAIR)
    # Hat.
    if ident.hat == "cap":
        draw.chord((hx - r, top - r * 0.25, hx + r, top + r * 1.1), 180, 360, fill=HAT)
        brim = r * (1.5 if side else 1.15)
        draw.rectangle((hx - (r if side else brim), top + r * 0.35, hx + brim, top + r * 0.55), fill=HAT)
    elif ident.hat == "beanie":
        draw.ellipse((hx - r * 1.0, top - r * 0.35, hx + r * 1.0, top + r * 1.1), fill=HAT)
    # Bags in front of the body.
    if ident.bag == "backpack":
        if back:
            draw.rounded_rectangle((cx - sw * 0.75, y_sh + 0.02 * ph, cx + sw * 0.75, y_hip - 0.01 * ph), 3, fill=BAG)
        elif not side:
            for sign in (-1, 1):
                sx = cx + sign * sw * 0.55
                poly(_limb(sx, y_sh, sx, y_sh + 0.16 * ph, max(1.0, sw * 0.1), max(1.0, sw * 0.1)), fill=BAG)
    elif ident.bag == "shoulder":
        sgn = ident.bag_side
        poly(_limb(cx - sgn * sw * 0.8, y_sh, cx + sgn * hw * 1.1, y_hip, max(1.0, sw * 0.09), max(1.0, sw * 0.09)),
             fill=BAG)  # fmt: skip
        bx = cx + sgn * hw * 1.15
        draw.rectangle((bx - sw * 0.4, y_hip - 0.05 * ph, bx + sw * 0.4, y_hip + 0.06 * ph), fill=BAG)


def _background(cam: Camera, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """H x W x 3 (visible) or H x W x 1 (infrared) background of the camera's scene, with a small shift."""
    y = (np.arange(h, dtype=np.float32) / h)[:, None]
    x = (np.arange(w, dtype=np.float32) / w)[None, :] + np.float32(rng.uniform(-0.04, 0.04))
    if cam.modality == INFRARED:
        wall, floor, accent = (np.float32([cam.wall_ir]), np.float32([cam.floor_ir]), np.float32([cam.accent_ir]))
        if cam.thermal:  # cold scene
            wall, floor, accent = wall * 0.4 + 0.05, floor * 0.4 + 0.05, accent * 0.4 + 0.08
    else:
        wall, floor, accent = (np.float32(cam.wall_rgb), np.float32(cam.floor_rgb), np.float32(cam.accent_rgb))
    below = y > cam.horizon  # [H, 1]
    img = np.empty((h, w, len(wall)), np.float32)
    img[:] = np.where(below[..., None], floor, wall)
    s = cam.texture_scale
    if cam.texture == "panels":
        tex = ((x / s) % 1.0 < 0.08) & ~below
    elif cam.texture == "tiles":
        depth = np.maximum(y - cam.horizon, 1e-3)
        tex = ((((x - 0.5) / depth * 0.15 / s) % 1.0 < 0.1) | (((1.0 / depth) * s * 2) % 1.0 < 0.12)) & below
    elif cam.texture == "bricks":
        row = np.floor(y / (s * 0.5))
        tex = ((y / (s * 0.5)) % 1.0 < 0.12) | (((x / s) + 0.5 * (row % 2)) % 1.0 < 0.07)
    else:
        tex = None
    if tex is not None:
        tex = np.broadcast_to(tex, (h, w))
        img[tex] = img[tex] * 0.6 + accent * 0.4
    x_px = x[0] * w
    for x0, y0, x1, y1 in cam.props:
        c0, c1 = np.searchsorted(x_px, x0 * w), np.searchsorted(x_px, x1 * w)
        r0, r1 = round(y0 * h), round(y1 * h)
        img[r0:r1, c0:c1] = accent * 0.8 + img[r0:r1, c0:c1] * 0.2
    # Light falls off away from the scene's light and towards the image bottom.
    img *= (1.05 - 0.25 * np.abs(y - 0.35))[..., None]
    # Smooth large-scale texture noise, seeded per image so that backgrounds differ a little.
    grid = rng.normal(0.0, 0.05, (max(2, h // 12), max(2, w // 12))).astype(np.float32)
    img += np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC))[..., None]
    return img


@dataclass(frozen=True)
class CropPose:
    """Where and how a person stands in one crop (the first draws of the crop's random stream)."""

    ph: float  # person height in pixels
    top: float
    cx: float
    view: str  # front | back | side
    phase: float
    mirror: bool


def _crop_pose(rng: np.random.Generator, ident: Identity, cam: Camera, h: int, w: int) -> CropPose:
    ph = h * float(rng.uniform(0.84, 0.95)) * cam.scale
    foot = h * float(rng.uniform(0.95, 0.995))
    cx = w / 2 + w * float(rng.uniform(-0.06, 0.06))
    p_back = float(np.clip(ident.back_view_prob + cam.view_bias, 0.05, 0.9))
    u = rng.random()
    view = "side" if u < cam.side_prob else ("back" if u < cam.side_prob + (1 - cam.side_prob) * p_back else "front")
    phase = float(rng.uniform(-1, 1))
    mirror = bool(rng.random() < 0.5)
    return CropPose(ph, foot - ph, cx, view, phase, mirror)


def crop_view(seed: int, layout: str, pid: int, camid: int, modality: int, index: int) -> str:
    """The view (front, back or side) of one crop, without rendering it (same draws as ``render_image``)."""
    ident = _draw_identity(seed, pid)  # the view does not depend on the infrared coupling
    cam = make_camera(seed, layout, camid, modality)
    rng = _rng(seed, _TAG_IMAGE, _LAYOUT_CODE[layout], pid, camid, modality, index)
    return _crop_pose(rng, ident, cam, *DEFAULT_SIZE).view


def render_image(seed: int, layout: str, pid: int, camid: int, modality: int, index: int,
                 size: tuple[int, int] = DEFAULT_SIZE,
                 ir_coupling: float = DEFAULT_IR_COUPLING) -> np.ndarray:  # fmt: skip
    """One H x W x 3 uint8 crop of identity ``pid`` seen by camera ``camid`` in ``modality``."""
    h, w = size
    ident = make_identity(seed, pid, ir_coupling)
    cam = make_camera(seed, layout, camid, modality)
    rng = _rng(seed, _TAG_IMAGE, _LAYOUT_CODE[layout], pid, camid, modality, index)

    pose = _crop_pose(rng, ident, cam, h, w)
    ph, top, cx, view, phase, mirror = pose.ph, pose.top, pose.cx, pose.view, pose.phase, pose.mirror

    label_img = Image.new("L", (w, h), BG)
    _draw_person(ImageDraw.Draw(label_img), ident, cx, top, ph, view, phase)
    lab = np.asarray(label_img)
    ir = modality == INFRARED

    if ir:
        table = np.float32([0, ident.skin_ir, ident.hair_ir, ident.upper.ir, ident.lower.ir, ident.shoes_ir,
                            ident.bag_ir, ident.hat_ir])[:, None]  # fmt: skip
        accents = {UPPER: ident.upper.accent_ir, LOWER: ident.lower.accent_ir}
        if cam.thermal:  # far infrared: skin warmest, clothes in between, accessories cooler
            t = table[:, 0]
            table = np.float32([0, 0.92, 0.55, *(0.35 + 0.45 * t[3:5]), 0.3 + 0.3 * t[5], 0.25 + 0.35 * t[6],
                                0.3 + 0.4 * t[7]])[:, None]  # fmt: skip
            accents = {k: 0.35 + 0.45 * v for k, v in accents.items()}
    else:
        table = np.float32([(0, 0, 0), ident.skin_rgb, ident.hair_rgb, ident.upper.rgb, ident.lower.rgb,
                            ident.shoes_rgb, ident.bag_rgb, ident.hat_rgb])  # fmt: skip
        accents = {UPPER: ident.upper.accent_rgb, LOWER: ident.lower.accent_rgb}
    person = table[lab]
    for label, garment in ((UPPER, ident.upper), (LOWER, ident.lower)):
        if garment.pattern == "plain":
            continue
        ys, xs = np.nonzero(lab == label)
        sel = _pattern_mask(garment, (xs - cx) / ph, (ys - top) / ph)
        if sel is not None:
            person[ys[sel], xs[sel]] = np.float32(accents[label])
    # Cylindrical shading across the body and a soft top light.
    half = ident.shoulder * ph * 1.25
    across = np.clip(1.0 - 0.32 * ((np.arange(w, dtype=np.float32) - cx) / half) ** 2, 0.55, 1.0)
    down = 1.08 - 0.18 * (np.arange(h, dtype=np.float32) - top) / ph
    shade = down[:, None] * across[None, :]
    if ir:
        shade = 1.0 - (1.0 - shade) * 0.5
    person *= shade[..., None]
    mask = lab != BG
    if mirror:
        person, mask = person[:, ::-1], mask[:, ::-1]

    img = _background(cam, h, w, rng)
    img[mask] = person[mask]
    img *= np.float32(cam.gain * rng.uniform(0.85, 1.15))
    if not ir:
        img *= np.float32(cam.cast)
    np.clip(img, 0.0, 1.0, out=img)
    # Optics blur, then sensor noise; infrared is one grey channel replicated to RGB as in the real sets.
    pil = Image.fromarray(((img[..., 0] if ir else img) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8))
    blur = cam.blur * float(rng.uniform(0.7, 1.3)) * h / 128.0
    if blur > 0.15:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(pil, dtype=np.float32)
    arr = arr + rng.normal(0.0, cam.noise * 255.0, arr.shape).astype(np.float32)
    out = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1) if ir else out


# --------------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class ImageTask:
    relpath: str
    pid: int
    camid: int
    modality: int
    index: int


@dataclass
class SynthSummary:
    layout: str
    out: Path
    num_images: int
    train_ids: list[int]
    test_ids: list[int]
    seconds: float

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.num_images / max(self.seconds, 1e-9)


def _split(seed: int, ids: list[int], num_test: int, tag: int = 0) -> tuple[list[int], list[int]]:
    order = _rng(seed, _TAG_SPLIT, tag).permutation(len(ids))
    test = sorted(ids[i] for i in order[:num_test])
    train = sorted(ids[i] for i in order[num_test:])
    return train, test


def _cover(seed: int, layout: str, pid: int, cams: Sequence[int], prob: float, minimum: int) -> list[int]:
    """The cameras that see an identity: each with ``prob``, at least ``minimum`` of them."""
    rng = _rng(seed, _TAG_COVER, _LAYOUT_CODE[layout], pid, len(cams), cams[0])
    seen = [c for c in cams if rng.random() < prob]
    if len(seen) < minimum:
        extra = [c for c in rng.permutation(list(cams)).tolist() if c not in seen]
        seen = sorted(seen + extra[: minimum - len(seen)])
    return seen


def _write_ids(path: Path, ids: Iterable[int]) -> None:
    path.write_text(",".join(str(i) for i in ids) + "\n", encoding="utf-8")


def _plan_sysu(out: Path, seed: int, n: int, n_test: int, k: int) -> tuple[list[ImageTask], list[int], list[int]]:
    ids = list(range(1, n + 1))
    trainval, test = _split(seed, ids, n_test)
    n_val = len(trainval) // 4
    val, train = trainval[:n_val], trainval[n_val:]
    (out / "exp").mkdir(parents=True, exist_ok=True)
    _write_ids(out / "exp" / "train_id.txt", train)
    _write_ids(out / "exp" / "val_id.txt", val)
    _write_ids(out / "exp" / "test_id.txt", test)
    tasks = []
    for cam in range(1, 7):
        (out / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for pid in ids:
        cams = _cover(seed, "sysu", pid, (1, 2, 4, 5), 0.8, 1) + _cover(seed, "sysu", pid, (3, 6), 0.8, 1)
        for cam in sorted(cams):
            modality = INFRARED if cam in (3, 6) else VISIBLE
            for i in range(1, k + 1):
                tasks.append(ImageTask(f"cam{cam}/{pid:04d}/{i:04d}.jpg", pid, cam, modality, i))
    return tasks, trainval, test


def _plan_regdb(out: Path, seed: int, n: int, n_test: int, k: int) -> tuple[list[ImageTask], list[int], list[int]]:
    ids = list(range(1, n + 1))
    tasks = []
    for pid in ids:
        for i in range(1, k + 1):
            tasks.append(ImageTask(f"Visible/{pid:04d}/{pid:04d}_v_{i:02d}.jpg", pid, 1, VISIBLE, i))
            tasks.append(ImageTask(f"Thermal/{pid:04d}/{pid:04d}_t_{i:02d}.jpg", pid, 2, INFRARED, i))
    idx = out / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    (out / "Visible").mkdir(exist_ok=True)
    (out / "Thermal").mkdir(exist_ok=True)
    first_split: tuple[list[int], list[int]] = ([], [])
    for split in range(1, 11):
        train, test = _split(seed, ids, n_test, tag=split)
        if split == 1:
            first_split = (train, test)
        label = {pid: i for i, pid in enumerate(train)}
        for modality, name in ((VISIBLE, "visible"), (INFRARED, "thermal")):
            rows = [t for t in tasks if t.modality == modality]
            (idx / f"train_{name}_{split}.txt").write_text(
                "".join(f"{t.relpath} {label[t.pid]}\n" for t in rows if t.pid in label), encoding="utf-8"
            )
            (idx / f"test_{name}_{split}.txt").write_text(
                "".join(f"{t.relpath} {t.pid}\n" for t in rows if t.pid not in label), encoding="utf-8"
            )
    return tasks, first_split[0], first_split[1]


LLCM_VISIBLE_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)


def _plan_llcm(out: Path, seed: int, n: int, n_test: int, k: int) -> tuple[list[ImageTask], list[int], list[int]]:
    ids = list(range(1, n + 1))
    train, test = _split(seed, ids, n_test)
    idx = out / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    _write_ids(idx / "test_id.txt", test)
    train_set = set(train)
    label = {pid: i for i, pid in enumerate(train)}
    tasks = []
    lines: dict[int, list[str]] = {VISIBLE: [], INFRARED: []}
    for pid in ids:
        part = "train" if pid in train_set else "test"
        for modality, cams, tag in ((VISIBLE, LLCM_VISIBLE_CAMERAS, "vis"), (INFRARED, LLCM_NIR_CAMERAS, "nir")):
            for cam in _cover(seed, "llcm", pid, cams, 0.45, 2):
                for i in range(1, k + 1):
                    rel = f"{part}_{tag}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{i:04d}_{tag}.jpg"
                    tasks.append(ImageTask(rel, pid, cam, modality, i))
                    if part == "train":
                        lines[modality].append(f"{rel} {label[pid]}\n")
    for folder in ("train_vis", "train_nir", "test_vis", "test_nir"):
        (out / folder).mkdir(exist_ok=True)
    (idx / "train_vis.txt").write_text("".join(lines[VISIBLE]), encoding="utf-8")
    (idx / "train_nir.txt").write_text("".join(lines[INFRARED]), encoding="utf-8")
    return tasks, train, test


CAPTION_VISIBLE_CAMERAS = (1, 2, 3, 4)
CAPTION_INFRARED_CAMERAS = (5, 6)


def _plan_captions(out: Path, seed: int, n: int, n_test: int, k: int) -> tuple[list[ImageTask], list[int], list[int]]:
    """Pretraining set: every identity in every camera (4 visible, 2 infrared scenes of its own), no split."""
    del n_test  # no ReID split: a pretraining set holds identities out itself
    ids = list(range(1, n + 1))
    (out / "images").mkdir(parents=True, exist_ok=True)
    tasks = []
    for pid in ids:
        for cam in CAPTION_VISIBLE_CAMERAS + CAPTION_INFRARED_CAMERAS:
            modality = INFRARED if cam in CAPTION_INFRARED_CAMERAS else VISIBLE
            for i in range(1, k + 1):
                tasks.append(ImageTask(f"images/{pid:04d}/c{cam}_{i:02d}.jpg", pid, cam, modality, i))
    return tasks, ids, []


_PLANNERS = {"sysu": _plan_sysu, "regdb": _plan_regdb, "llcm": _plan_llcm, "captions": _plan_captions}


def _render_chunk(args: tuple[str, int, str, tuple[int, int], float, list[ImageTask]]) -> int:
    root, seed, layout, size, ir_coupling, tasks = args
    for t in tasks:
        path = os.path.join(root, t.relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arr = render_image(seed, layout, t.pid, t.camid, t.modality, t.index, size, ir_coupling)
        Image.fromarray(arr).save(path, format="JPEG", quality=92)
    return len(tasks)


def parse_size(text: str) -> tuple[int, int]:
    """ "HxW" (e.g. "128x64") to (H, W)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise SynthError(f"size must look like HxW, e.g. 128x64, got {text!r}") from None
    if not (16 <= h <= 1024 and 8 <= w <= 512):
        raise SynthError(f"size {h}x{w} out of range (H 16..1024, W 8..512)")
    return h, w


def generate(
    layout: str,
    out: str | Path,
    num_ids: int,
    *,
    seed: int = 0,
    images_per_camera: int | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    test_ids: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    ir_coupling: float = DEFAULT_IR_COUPLING,
) -> SynthSummary:
    """Write a synthetic dataset in ``layout`` under ``out`` (which must be missing or empty), and
    ``captions.jsonl`` (attributes and a caption per crop) beside it.

    ``test_ids`` defaults to a third of the identities (SYSU, LLCM; of the rest SYSU puts a quarter in
    val_id.txt) or half of them (RegDB, per split); the captions layout has no split and takes none.
    ``workers`` defaults to min(2, CPUs). ``ir_coupling`` (0..1): see the module docstring.
    """
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(num_ids, int) or not 2 <= num_ids <= MAX_IDS:
        raise SynthError(f"--ids must be an integer 2..{MAX_IDS}, got {num_ids!r}")
    k = DEFAULT_IMAGES_PER_CAMERA[layout] if images_per_camera is None else images_per_camera
    if not isinstance(k, int) or k < 1:
        raise SynthError(f"--images-per-camera must be a positive integer, got {k!r}")
    ir_coupling = check_ir_coupling(ir_coupling)
    if layout == "captions" and test_ids is not None:
        raise SynthError("--test-ids: the captions layout has no ReID split (pretrain-clip holds identities out)")
    n_test = (num_ids // 2 if layout == "regdb" else max(1, round(num_ids / 3))) if test_ids is None else test_ids
    if not isinstance(n_test, int) or not 1 <= n_test < num_ids:
        raise SynthError(f"--test-ids must be 1..{num_ids - 1} (some identities must remain for training)")
    h, w = size
    parse_size(f"{h}x{w}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"output {out} exists and is not an empty folder; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    tasks, train, test = _PLANNERS[layout](out, seed, num_ids, n_test, k)
    n_workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    chunk = min(32, max(1, len(tasks) // (4 * n_workers)))
    jobs = [(str(out), seed, layout, (h, w), ir_coupling, tasks[i : i + chunk]) for i in range(0, len(tasks), chunk)]
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc=f"synth {layout}", unit="img", disable=not progress) as bar:
        if n_workers == 1 or len(tasks) < 16:
            for job in jobs:
                bar.update(_render_chunk(job))
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                for done in pool.map(_render_chunk, jobs):
                    bar.update(done)
    from .synth_captions import write_captions  # it builds on this module's identities and cameras

    write_captions(out / CAPTIONS_FILE, seed, layout, tasks, ir_coupling)
    seconds = time.perf_counter() - start
    summary = SynthSummary(layout, out, len(tasks), train, test, seconds)
    log.info(
        "wrote %d %s images (%d train, %d test identities) to %s in %.1fs (%.0f images/min)",
        len(tasks), layout, len(train), len(test), out, seconds, summary.images_per_minute,
    )  # fmt: skip
    return summary
