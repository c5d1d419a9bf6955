"""COCO 2017 annotations: the category list, per-image categories and captions.

The real ``instances_train2017.json`` is ~450 MB, most of it segmentation polygons.  The category
list (needed by ``info()``) is read from the end of the file, where COCO writes it, without parsing
the rest; the per-image categories are parsed once with an ``object_hook`` that drops every
polygon as soon as it is decoded, so memory stays near the size of the file text.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from foundation.core.errors import DataError
from foundation_nsd.layout import require_file

_TAIL_BYTES = 1 << 16


def _check_categories(cats: Any, path: Path) -> list[tuple[int, str]]:
    if not isinstance(cats, list) or not cats:
        raise DataError(f"COCO annotations {path}: 'categories' must be a non-empty list")
    out = []
    for c in cats:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"COCO annotations {path}: category entry {c!r} lacks 'id' or 'name'")
        out.append((int(c["id"]), str(c["name"])))
    if len({i for i, _ in out}) != len(out):
        raise DataError(f"COCO annotations {path}: duplicate category ids")
    return sorted(out)


def read_categories(path: Path) -> list[tuple[int, str]]:
    """``[(category id, name), ...]`` ordered by id (COCO's order: 1..90 with gaps)."""
    require_file(path, "COCO instances annotations")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read().decode("utf-8", errors="replace")
    at = tail.rfind('"categories"')
    if at >= 0:
        start = tail.find("[", at)
        if start >= 0:
            try:
                cats, _ = json.JSONDecoder().raw_decode(tail, start)
                return _check_categories(cats, path)
            except (ValueError, DataError):
                pass  # not where COCO puts it: fall back to a full parse
    return _check_categories(_load(path).get("categories"), path)


def _instances_hook(d: dict) -> Any:
    if "category_id" in d and "image_id" in d:
        return (int(d["image_id"]), int(d["category_id"]))  # an annotation: keep only what labels need
    if "file_name" in d or ("counts" in d and "size" in d):
        return None  # an image record or an RLE mask
    return d


def _load(path: Path, hook=None) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh, object_hook=hook)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"COCO annotations {path} are not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"COCO annotations {path}: expected a JSON object at the top level")
    return data


def read_instance_categories(path: Path) -> tuple[dict[int, set[int]], list[tuple[int, str]]]:
    """``(cocoId → set of category ids, categories)`` from an ``instances_*2017.json`` file."""
    require_file(path, "COCO instances annotations")
    data = _load(path, _instances_hook)
    per_image: dict[int, set[int]] = defaultdict(set)
    for image_id, category in _annotation_pairs(data, path, "COCO instances annotations"):
        per_image[image_id].add(category)
    return dict(per_image), _check_categories(data.get("categories"), path)


def read_captions(path: Path) -> dict[int, list[str]]:
    """``cocoId → captions`` (file order) from a ``captions_*2017.json`` file."""
    require_file(path, "COCO captions annotations")
    data = _load(path, lambda d: (int(d["image_id"]), str(d["caption"]).strip())
                 if "caption" in d and "image_id" in d else (None if "file_name" in d else d))
    out: dict[int, list[str]] = defaultdict(list)
    for image_id, caption in _annotation_pairs(data, path, "COCO captions annotations"):
        out[image_id].append(caption)
    return dict(out)


def _annotation_pairs(data: dict, path: Path, what: str) -> list[tuple]:
    """The ``(image id, value)`` pairs the decoding hook made of ``data['annotations']``."""
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{what} {path} have no 'annotations' list")
    return [a for a in anns if isinstance(a, tuple)]
