"""The typed manifest loader's field table: each manifest kind's fields and their types.

`check_manifest(kind, data, path)` rejects a manifest whose fields have the wrong type (a size
given as a string, `active` not a list, a missing `blob`), naming the file and the field, so
that no caller meets a `KeyError`/`TypeError` later. Digests and names are validated here too,
before any path is built from them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sepme_engine.errors import CorruptEntry

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HINT = "remove the entry and create it again"

Check = Callable[[Any], str | None]  # None when fine, else what is wrong


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _int(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool)
    return None if ok and v >= 0 else "must be a non-negative integer"


def _opt_int(v: Any) -> str | None:
    return None if v is None else _int(v)


def _num(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return None if ok and math.isfinite(v) else "must be a finite number"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _dict(v: Any) -> str | None:
    return None if isinstance(v, dict) else "must be an object"


def _digest(v: Any) -> str | None:
    return None if isinstance(v, str) and DIGEST.match(v) else "must be 'sha256:<64 hex digits>'"


def _name(v: Any) -> str | None:
    ok = isinstance(v, str) and _NAME.match(v) and ".." not in v
    return None if ok else "must be a valid sepme name"


def _str_list(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    return None if ok else "must be a list of strings"


def _name_list(v: Any) -> str | None:
    ok = isinstance(v, list) and all(_name(x) is None for x in v)
    return None if ok else "must be a list of valid names"


def blob_error(v: Any) -> str | None:
    """A {digest, size} blob reference."""
    if not isinstance(v, dict):
        return "must be an object {digest, size}"
    return _digest(v.get("digest")) or _int(v.get("size"))


def _files(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be an object {relative path: {digest, size}}"
    for rel, ref in v.items():
        if _relpath(rel) or blob_error(ref):
            return f"entry {str(rel)[:80]!r} is malformed"
    return None


def _link_files(v: Any) -> str | None:
    ok = isinstance(v, dict) and all(
        _relpath(k) is None and _digest(d) is None for k, d in v.items()
    )
    return None if ok else "must map relative paths to digests"


def _relpath(v: Any) -> str | None:
    if not isinstance(v, str) or not v or v.startswith("/") or "\\" in v:
        return "must be a relative path"
    if any(part in ("", ".", "..") for part in v.split("/")):
        return "must be a relative path inside the base"
    return None


def _link(v: Any) -> str | None:
    if not isinstance(v, dict) or not isinstance(v.get("path"), str):
        return "must be an object with a string `path`"
    return _int(v.get("size"))


def _layers(v: Any) -> str | None:
    ok = isinstance(v, list) and all(
        isinstance(x, list)
        and len(x) == 2
        and isinstance(x[0], str)
        and isinstance(x[1], list)
        and len(x[1]) == 2
        and all(_int(d) is None for d in x[1])
        for x in v
    )
    return None if ok else "must be a list of [layer name, [out, in]]"


# kind -> field -> (required, check)
FIELDS: dict[str, dict[str, tuple[bool, Check]]] = {
    "bases": {
        "name": (True, _name),
        "source_type": (True, _str),
        "origin": (True, _str),
        "base_digest": (True, _digest),
        "size": (True, _int),
        "arch": (True, _str),
        "profile": (False, _str),
        "prediction_type": (True, _str),
        "text_width": (True, _int),
        "tokenizer_max_length": (True, _int),
        "cross_attn_layers": (True, _layers),
        "created": (True, _str),
        "notes": (False, _str_list),
        "format": (False, _str),
        "file_format": (False, _str),
        "allow_pickle": (False, _bool),
        "files": (False, _files),
        "link": (False, _link),
        "link_files": (False, _link_files),
    },
    "increments": {
        "base": (True, _name),
        "concept": (True, _name),
        "prompt": (True, _str),
        "method": (True, _str),
        "base_digest": (True, _digest),
        "blob": (True, blob_error),
        "norm": (False, _num),
        "m_k": (False, _opt_int),
        "iterations": (False, _int),
        "stop_reason": (False, _str),
        "created": (True, _str),
        "preserve_prompts": (False, _str_list),
        "settings": (False, _dict),
        "stats": (False, _dict),
    },
    "compositions": {"base": (True, _name), "active": (True, _name_list)},
    "variants": {"base": (True, _name), "active": (True, _name_list), "created": (False, _str)},
    "state": {"default_base": (False, _name)},
}


def kind_of(path: Path, manifests_dir: Path) -> str | None:
    """The manifest kind of a file under manifests/ (None outside it)."""
    try:
        rel = Path(path).relative_to(manifests_dir)
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and rel.parts[0] in FIELDS else None


def check_manifest(kind: str | None, data: dict[str, Any], path: Path) -> None:
    """Raise CorruptEntry naming the file and the first field of the wrong type."""
    fields = FIELDS.get(kind or "", {})
    for key, (required, check) in fields.items():
        if key not in data:
            if required:
                raise CorruptEntry(
                    f"corrupt manifest {path}: field {key!r} is missing", hint=HINT, kind="store"
                )
            continue
        problem = check(data[key])
        if problem:
            raise CorruptEntry(
                f"corrupt manifest {path}: field {key!r} {problem}", hint=HINT, kind="store"
            )
    if kind == "bases" and "files" not in data and "link" not in data:
        raise CorruptEntry(
            f"corrupt manifest {path}: neither 'files' nor 'link' is present",
            hint=HINT,
            kind="store",
        )
