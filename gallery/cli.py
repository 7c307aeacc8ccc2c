"""``clipmc gallery stats|export|import|rebuild|compact|erase``: inspect and maintain a gallery.

``stats`` and ``export`` open a FAISS gallery read-only, so they work while a service holds it; the
writing commands need the gallery's lock (stop the service, or use its API: ``POST /gallery/erase``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=("faiss", "milvus"), default="faiss", help="gallery back-end (default: faiss)"
    )
    parser.add_argument(
        "--collection", default=None, help="Milvus collection name (milvus back-end; default clipmc_gallery)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Back-end constructor options from the command line."""
    from clipmc.gallery import GalleryError

    options: dict[str, Any] = dict(extra)
    if args.collection:
        if args.backend != "milvus":
            raise GalleryError("--collection only applies to --backend milvus")
        options["collection"] = args.collection
    return options


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _format_stats(stats: dict[str, Any]) -> str:
    lines = []
    for key, value in stats.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{key:24s} {inner}")
        else:
            lines.append(f"{key:24s} {value}")
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    from clipmc.gallery import GalleryError, GalleryStateError, open_gallery

    try:
        with open_gallery(args.path, backend=args.backend, **_options(args, read_only=True)) as gallery:
            stats = gallery.stats()
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    print(json.dumps(stats, indent=2) if args.json else _format_stats(stats))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from clipmc.gallery import GalleryError, GalleryStateError, open_gallery
    from clipmc.gallery.portable import export_gallery

    try:
        with open_gallery(args.path, backend=args.backend, **_options(args, read_only=True)) as gallery:
            manifest = export_gallery(gallery, args.out, batch_size=args.batch_size)
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    print(f"exported {manifest['count']} items (dim {manifest['dim']}, {manifest['embedding_version']}) to {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from clipmc.gallery import GalleryError, GalleryStateError, open_gallery
    from clipmc.gallery.portable import import_gallery, read_manifest

    try:
        manifest = read_manifest(args.src, verify=not args.no_verify)
        with open_gallery(
            args.path, int(manifest["dim"]), str(manifest["embedding_version"]), backend=args.backend, **_options(args)
        ) as gallery:
            result = import_gallery(
                gallery,
                args.src,
                keep_ids={"keep": True, "new": False, "auto": None}[args.ids],
                batch_size=args.batch_size,
                verify=False,
            )
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    print(
        f"imported {result['count']} items into {args.path}: {result['created']} created, "
        f"{result['existing']} already present ({'kept' if result['kept_ids'] else 'new'} ids)"
    )
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from clipmc.gallery import FaissGallery, GalleryError, GalleryStateError, IndexConfig
    from clipmc.gallery.faiss_backend import DATABASE_NAME

    if args.backend != "faiss":
        return _fail(GalleryError("rebuild applies to the faiss back-end; Milvus builds its own indexes"))
    config: dict[str, Any] = {}
    if args.nlist is not None:
        config["nlist"] = args.nlist
    if args.nprobe is not None:
        config["nprobe"] = args.nprobe
    if args.kind:
        config["kind"] = args.kind
    try:
        if not (args.path / DATABASE_NAME).is_file():
            raise GalleryError(f"no gallery at {args.path} (no {DATABASE_NAME})")
        with FaissGallery(args.path, index=IndexConfig(**config)) as gallery:
            info = gallery.rebuild(args.kind)
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    recall = info.get("recall_at_10")
    extra = (
        f", nlist {info['nlist']}, nprobe {info['nprobe']}, recall@10 {recall:.3f}"
        if info["kind"] == "ivf" and recall is not None
        else ""
    )
    print(f"rebuilt a {info['kind']} index of {info['ntotal']} vectors{extra}; snapshot written")
    return 0


def _open_existing(args: argparse.Namespace) -> Any:
    """Open an existing gallery for writing (never create one by mistyping a path)."""
    from pathlib import Path

    from clipmc.gallery import GalleryError, open_gallery
    from clipmc.gallery.faiss_backend import DATABASE_NAME

    if args.backend == "faiss" and not (Path(args.path) / DATABASE_NAME).is_file():
        raise GalleryError(f"no gallery at {args.path} (no {DATABASE_NAME})")
    return open_gallery(args.path, backend=args.backend, **_options(args))


def _cmd_compact(args: argparse.Namespace) -> int:
    from clipmc.gallery import GalleryError, GalleryStateError

    try:
        with _open_existing(args) as gallery:
            result = gallery.compact(vacuum=args.vacuum)
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    if args.backend == "faiss" and not result["complete"]:
        print("error: a reader kept the WAL checkpoint from finishing; run compact again", file=sys.stderr)
        return 1
    print(f"compacted {args.path}: {result.get('removed', 0)} removed item(s) are off the disk")
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from clipmc.gallery import EraseFilter, GalleryError, GalleryStateError

    try:
        criteria = EraseFilter(
            identity=args.identity, track_id=args.track, cameras=args.camera, since=args.since, until=args.until
        )
        with _open_existing(args) as gallery:
            ids = gallery.find_ids(criteria)
            if ids and not args.yes:
                print(f"{len(ids)} item(s) match; add --yes to erase them", file=sys.stderr)
                return 1
            removed = gallery.remove(ids) if ids else 0
            compacted = gallery.compact() if removed else {"complete": True}
    except (GalleryError, GalleryStateError) as exc:
        return _fail(exc)
    print(f"erased {removed} item(s) from {args.path}" + ("" if compacted.get("complete") else " (compact again)"))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gallery`` with its sub-commands to the ``clipmc`` command line."""
    from pathlib import Path

    parser = subparsers.add_parser(
        "gallery",
        help="inspect, export, import, re-index, compact or erase from a gallery",
        description="Inspect and maintain a gallery directory (or a Milvus collection).",
    )
    commands = parser.add_subparsers(dest="gallery_command", metavar="COMMAND", required=True)

    stats = commands.add_parser("stats", help="counts, index kind and settings of a gallery")
    stats.add_argument("path", help="gallery directory (or Milvus URI)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _add_backend_options(stats)
    stats.set_defaults(func=_cmd_stats)

    export = commands.add_parser("export", help="write every item and vector to a portable directory")
    export.add_argument("path", help="gallery directory (or Milvus URI)")
    export.add_argument("out", help="export directory to create (must not exist or be empty)")
    export.add_argument("--batch-size", type=_positive_int, default=10000)
    _add_backend_options(export)
    export.set_defaults(func=_cmd_export)

    imp = commands.add_parser("import", help="add the items of an export to a gallery (created if missing)")
    imp.add_argument("src", help="export directory")
    imp.add_argument("path", help="gallery directory (or Milvus URI)")
    imp.add_argument(
        "--ids",
        choices=("auto", "keep", "new"),
        default="auto",
        help="keep the exported ids, let the gallery assign new ones, or auto: keep them when the gallery "
        "is empty (default). Use keep to finish an interrupted import.",
    )
    imp.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    imp.add_argument("--batch-size", type=_positive_int, default=10000)
    _add_backend_options(imp)
    imp.set_defaults(func=_cmd_import)

    rebuild = commands.add_parser("rebuild", help="rebuild the FAISS index from the database and snapshot it")
    rebuild.add_argument("path", type=Path, help="gallery directory")
    rebuild.add_argument("--kind", choices=("flat", "ivf"), default=None, help="index kind (default: by size)")
    rebuild.add_argument("--nlist", type=_positive_int, default=None, help="IVF lists (default: about sqrt(n))")
    rebuild.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists scanned per query")
    _add_backend_options(rebuild)
    rebuild.set_defaults(func=_cmd_rebuild)

    compact = commands.add_parser(
        "compact", help="take removed items off the disk now (index snapshot rewritten, SQLite WAL truncated)"
    )
    compact.add_argument("path", help="gallery directory (or Milvus URI)")
    compact.add_argument(
        "--vacuum", action="store_true", help="also rewrite the database file (galleries written by older versions)"
    )
    _add_backend_options(compact)
    compact.set_defaults(func=_cmd_compact)

    erase = commands.add_parser(
        "erase", help="delete every item matching a filter (identity, track, cameras, time range), then compact"
    )
    erase.add_argument("path", help="gallery directory (or Milvus URI)")
    erase.add_argument("--identity", help="items with this identity label")
    erase.add_argument("--track", help="items with this track id")
    erase.add_argument("--camera", action="append", help="items from this camera (repeat for several)")
    erase.add_argument("--since", type=float, help="captured at or after (epoch seconds)")
    erase.add_argument("--until", type=float, help="captured at or before (epoch seconds)")
    erase.add_argument("--yes", action="store_true", help="erase without asking (otherwise: count only)")
    _add_backend_options(erase)
    erase.set_defaults(func=_cmd_erase)
