"""Ground-truth attributes and captions of synthetic crops (DESIGN.md section 13).

Why: a CLIP text tower only means something once it has learned the world's words. The generator knows
every crop's truth (garments, colours, patterns, carried objects, build, view, camera), so it can write
the captions a small CLIP is pretrained on, and the labels its zero-shot accuracy is measured with.
Infrared captions never name a colour: an infrared crop does not show one. The prompts of the zero-shot
evaluation are built by the same `describe` as the captions, so the two use the same words.

Everything is a pure function of (seed, layout, identity, camera, modality, image index).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.contract import MODALITY_NAMES, atomic_write

from .synth import (
    _LAYOUT_CODE,
    _TAG_CAPTION,
    COLOUR_NAMES,
    INFRARED,
    PATTERNS,
    ImageTask,
    _draw_identity,
    _rng,
    colour_name,
    crop_view,
    make_camera,
)

# Words of each attribute value; the attribute dicts keep the generator's value names.
PATTERN_WORDS = {
    "plain": "plain",
    "hstripes": "horizontal-striped",
    "vstripes": "vertical-striped",
    "diagonal": "diagonal-striped",
    "checks": "checked",
    "dots": "polka-dot",
}
UPPER_WORDS = {"short": "t-shirt", "long": "long-sleeved shirt"}  # by sleeve length
LOWER_WORDS = {"pants": "trousers", "shorts": "shorts", "skirt": "skirt"}
BAG_WORDS = {"none": "", "backpack": "a backpack", "shoulder": "a shoulder bag", "hand": "a handbag"}
BUILD_WORDS = {"slim": "slim ", "medium": "", "broad": "broad-shouldered "}
HAT_WORDS = {"none": "", "cap": "cap", "beanie": "beanie"}
BAGS = tuple(BAG_WORDS)
TEMPLATES = ("{who} in {clothes}{extras}.", "{who} wearing {clothes}{extras}.", "{who} dressed in {clothes}{extras}.")

#: The attributes the pretrained CLIP is evaluated on zero-shot: (field, classes, nuisance fields whose
#: values the class prompts are averaged over).
ZERO_SHOT_ATTRIBUTES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "top_colour": ("upper_colour", COLOUR_NAMES, ("upper_garment", "upper_pattern")),
    "bottom_colour": ("lower_colour", COLOUR_NAMES, ("lower_garment", "lower_pattern")),
    "pattern": ("upper_pattern", PATTERNS, ("upper_garment", "upper_colour")),
    "carried": ("carried", BAGS, ()),
}
_COLOUR_FIELDS = ("upper_colour", "lower_colour", "hat_colour")
_VALUES: dict[str, tuple[str, ...]] = {
    "upper_garment": tuple(UPPER_WORDS),
    "lower_garment": tuple(LOWER_WORDS),
    "upper_pattern": PATTERNS,
    "lower_pattern": PATTERNS,
    "upper_colour": COLOUR_NAMES,
    "lower_colour": COLOUR_NAMES,
}


def _build(shoulder: float) -> str:
    return "slim" if shoulder < 0.117 else ("broad" if shoulder > 0.138 else "medium")


def crop_attributes(seed: int, layout: str, pid: int, camid: int, modality: int, index: int) -> dict[str, Any]:
    """The ground truth of one crop: the person's (the same in both modalities) plus view and camera."""
    ident = _draw_identity(seed, pid)
    cam = make_camera(seed, layout, camid, modality)
    return {
        "build": _build(ident.shoulder),
        "upper_garment": ident.sleeves,
        "upper_colour": colour_name(ident.upper.rgb),
        "upper_pattern": ident.upper.pattern,
        "lower_garment": ident.lower_kind,
        "lower_colour": colour_name(ident.lower.rgb),
        "lower_pattern": ident.lower.pattern,
        "hat": ident.hat,
        "hat_colour": colour_name(ident.hat_rgb) if ident.hat != "none" else None,
        "hair": ident.hair_style,
        "carried": ident.bag,
        "view": crop_view(seed, layout, pid, camid, modality, index),
        "camera": camid,
        "outdoor": cam.outdoor,
    }


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def describe(attrs: Mapping[str, Any], infrared: bool, template: int = 0) -> str:
    """A caption from whatever attributes ``attrs`` holds (missing ones are left out of the sentence).

    Colours are named only when present in ``attrs``: captions of infrared crops pass none
    (``caption``); the zero-shot colour prompts pass them for both modalities.
    """
    prefix = "an infrared photo of" if infrared else "a photo of"
    who = f"{prefix} a {BUILD_WORDS[attrs['build']] if attrs.get('build') else ''}person"
    parts = []
    if attrs.get("upper_garment"):
        words = [attrs.get("upper_colour"), _pattern(attrs.get("upper_pattern")), UPPER_WORDS[attrs["upper_garment"]]]
        parts.append(_article(" ".join(w for w in words if w)))
    if attrs.get("lower_garment"):
        kind = attrs["lower_garment"]
        words = [attrs.get("lower_colour"), _pattern(attrs.get("lower_pattern")), LOWER_WORDS[kind]]
        phrase = " ".join(w for w in words if w)
        parts.append(_article(phrase) if kind == "skirt" else phrase)
    extras = ""
    if attrs.get("hat") and attrs["hat"] != "none":
        extras += ", wearing " + _article(" ".join(w for w in (attrs.get("hat_colour"), HAT_WORDS[attrs["hat"]]) if w))
    if attrs.get("carried") and attrs["carried"] != "none":
        extras += ", carrying " + BAG_WORDS[attrs["carried"]]
    if attrs.get("view"):
        extras += f", seen from the {attrs['view']}"
    if not parts:
        return f"{who}{extras}."
    return f"{prefix} " + TEMPLATES[template].format(who=who[len(prefix) + 1 :], clothes=" and ".join(parts),
                                                     extras=extras)  # fmt: skip


def _pattern(value: str | None) -> str | None:
    return PATTERN_WORDS[value] if value else None


def caption(attrs: Mapping[str, Any], modality: int, template: int = 0) -> str:
    """The caption of a crop: infrared captions drop every colour."""
    infrared = modality == INFRARED
    shown = {k: v for k, v in attrs.items() if not (infrared and k in _COLOUR_FIELDS)}
    return describe(shown, infrared, template)


#: The parts a partial caption keeps or drops as a whole; within a garment, its colour and pattern words
#: are kept or dropped one by one (the garment word stays, since colour and pattern attach to it).
_CAPTION_PARTS: tuple[tuple[str, ...], ...] = (
    ("build",),
    ("upper_garment", "upper_colour", "upper_pattern"),
    ("lower_garment", "lower_colour", "lower_pattern"),
    ("hat", "hat_colour"),
    ("carried",),
    ("view",),
)


def partial_caption(attrs: Mapping[str, Any], modality: int, rng: np.random.Generator, template: int = 0) -> str:
    """A caption naming a random part of a crop's attributes (at least one part; infrared: no colour).

    Why: a full caption is told apart from the other captions of a batch by its colours alone, so
    contrastive training never needs the words of smaller details (the carried object). A caption
    that names only some parts makes each part's words the evidence the image must match; the
    zero-shot prompts (``class_prompts``) are such one-part captions too.
    """
    keep = rng.random(len(_CAPTION_PARTS)) < 0.5
    if not keep.any():
        keep[int(rng.integers(len(_CAPTION_PARTS)))] = True
    shown: dict[str, Any] = {}
    for part, kept in zip(_CAPTION_PARTS, keep, strict=True):
        if not kept:
            continue
        shown[part[0]] = attrs.get(part[0])
        for extra in part[1:]:
            if part[0] in ("upper_garment", "lower_garment") and rng.random() < 0.5:
                continue
            shown[extra] = attrs.get(extra)
    return caption(shown, modality, template)


def crop_record(seed: int, layout: str, task: ImageTask) -> dict[str, Any]:
    """One JSONL row: path, identity, camera, modality, attributes and caption."""
    attrs = crop_attributes(seed, layout, task.pid, task.camid, task.modality, task.index)
    rng = _rng(seed, _TAG_CAPTION, _LAYOUT_CODE[layout], task.pid, task.camid, task.modality, task.index)
    template = int(rng.integers(len(TEMPLATES)))
    return {
        "path": task.relpath,
        "pid": task.pid,
        "camera": task.camid,
        "modality": MODALITY_NAMES[task.modality],
        "index": task.index,
        "attributes": attrs,
        "caption": caption(attrs, task.modality, template),
    }


def write_captions(path: Path, seed: int, layout: str, tasks: Sequence[ImageTask], ir_coupling: float) -> None:
    """Write ``captions.jsonl``: one row per crop, in the layout's own order (deterministic for a seed).

    ``ir_coupling`` changes infrared brightness, never the attributes; it is recorded on every row so
    a reader knows how much colour the infrared crops carry.
    """
    lines = []
    for task in tasks:
        row = crop_record(seed, layout, task)
        row["ir_coupling"] = ir_coupling
        lines.append(json.dumps(row, sort_keys=True))
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``captions.jsonl`` (raises ValueError naming the line of a malformed row)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in ("path", "caption", "attributes") if k not in row]
                if missing:
                    raise KeyError(", ".join(missing))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a captions row ({exc})") from None
            rows.append(row)
    return rows


def class_prompts(attribute: str, infrared: bool) -> dict[str, list[str]]:
    """Per class of a zero-shot attribute, its prompts (one per combination of the nuisance values).

    Infrared prompts average over garments only where visible ones also average over colours: an
    infrared caption never had a colour, so it is not a nuisance the text tower knows there.
    """
    field, classes, nuisance = ZERO_SHOT_ATTRIBUTES[attribute]
    nuisance = tuple(f for f in nuisance if not (infrared and f in _COLOUR_FIELDS))
    combos: list[tuple[str, ...]] = list(itertools.product(*(_VALUES[f] for f in nuisance)))
    return {c: [describe({field: c, **dict(zip(nuisance, v, strict=True))}, infrared) for v in combos] for c in classes}
