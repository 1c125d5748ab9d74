"""sepme engine: the library behind the `sepme` CLI (never imports typer or rich).

The public Python API is the names in `__all__`, importable from here::

    from sepme_engine import Store, erase_concepts, compose_concepts, export_model

    store = Store()  # $SEPME_HOME or the user data dir
    report = erase_concepts(store, ["Van Gogh"], base="toy")
    print(report.to_dict())

Each command of the CLI is one of these functions; each returns a frozen dataclass with a
JSON-safe `to_dict()`, and every error it raises on purpose is a `SepmeError` subclass carrying
data (`kind`, `name`, `base`, `path`, `candidates`). The functions whose module has the same name
(`sepme_engine.erase`, `.compose`, `.inspect`, `.export`, `.generate`) are exported under longer
names so that the module stays reachable as `sepme_engine.<module>`.

Names are resolved on first use: `import sepme_engine` imports neither torch nor diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sepme_engine.errors import (
    AlreadyExists,
    BaseMismatch,
    ConfigError,
    Conflict,
    CorruptEntry,
    DeviceUnavailable,
    InvalidInput,
    InvalidName,
    NotFound,
    NullSpaceEmpty,
    OfflineError,
    PickleRefused,
    SchemaTooNew,
    SepmeError,
    StoreLocked,
    TrainingDiverged,
    UnsupportedModel,
)

__version__ = "0.1.0"

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    # the store
    "Store": ("sepme_engine.store", "Store"),
    "BlobRef": ("sepme_engine.store", "BlobRef"),
    "verify_store": ("sepme_engine.store.maintenance", "verify"),
    "prune_store": ("sepme_engine.store.maintenance", "prune"),
    "VerifyReport": ("sepme_engine.store.maintenance", "VerifyReport"),
    "PruneReport": ("sepme_engine.store.maintenance", "PruneReport"),
    "load_config": ("sepme_engine.config", "load_config"),
    "EffectiveConfig": ("sepme_engine.config", "EffectiveConfig"),
    # bases
    "BaseInfo": ("sepme_engine.bases", "BaseInfo"),
    "add_base": ("sepme_engine.bases", "add_base"),
    "get_base": ("sepme_engine.bases", "get_base"),
    "list_bases": ("sepme_engine.bases", "list_bases"),
    "remove_base": ("sepme_engine.bases", "remove_base"),
    "use_base": ("sepme_engine.bases", "use_base"),
    "load_base": ("sepme_engine.bases", "load_base"),
    # erasure and increments
    "erase_concepts": ("sepme_engine.erase.run", "erase"),
    "EraseReport": ("sepme_engine.erase.run", "EraseReport"),
    "ConceptOutcome": ("sepme_engine.erase.run", "ConceptOutcome"),
    "IncrementInfo": ("sepme_engine.increments", "IncrementInfo"),
    "list_increments": ("sepme_engine.increments", "list_increments"),
    "get_increment": ("sepme_engine.increments", "get_increment"),
    "remove_increment": ("sepme_engine.increments", "remove_increment"),
    # composition and variants
    "compose_concepts": ("sepme_engine.compose", "compose"),
    "CompositionResult": ("sepme_engine.compose", "CompositionResult"),
    "VariantInfo": ("sepme_engine.compose", "VariantInfo"),
    "list_variants": ("sepme_engine.compose", "list_variants"),
    "get_variant": ("sepme_engine.compose", "get_variant"),
    "remove_variant": ("sepme_engine.compose", "remove_variant"),
    "rename_variant": ("sepme_engine.compose", "rename_variant"),
    # reading, exporting, sampling
    "inspect_increments": ("sepme_engine.inspect", "inspect"),
    "InspectReport": ("sepme_engine.inspect", "InspectReport"),
    "export_model": ("sepme_engine.export.run", "export"),
    "ExportReport": ("sepme_engine.export.report", "ExportReport"),
    "generate_images": ("sepme_engine.generate", "generate"),
    "GenerateReport": ("sepme_engine.generate", "GenerateReport"),
    "evaluate_base": ("sepme_engine.generate", "evaluate_base"),
    "EvalResult": ("sepme_engine.generate", "EvalResult"),
    # moving increments between stores
    "export_increments": ("sepme_engine.transfer", "export_increments"),
    "import_increments": ("sepme_engine.transfer", "import_increments"),
    "TransferReport": ("sepme_engine.transfer", "TransferReport"),
}

__all__ = [
    "__version__",
    "Store",
    "BlobRef",
    "verify_store",
    "prune_store",
    "VerifyReport",
    "PruneReport",
    "load_config",
    "EffectiveConfig",
    "BaseInfo",
    "add_base",
    "get_base",
    "list_bases",
    "remove_base",
    "use_base",
    "load_base",
    "erase_concepts",
    "EraseReport",
    "ConceptOutcome",
    "IncrementInfo",
    "list_increments",
    "get_increment",
    "remove_increment",
    "compose_concepts",
    "CompositionResult",
    "VariantInfo",
    "list_variants",
    "get_variant",
    "remove_variant",
    "rename_variant",
    "inspect_increments",
    "InspectReport",
    "export_model",
    "ExportReport",
    "generate_images",
    "GenerateReport",
    "evaluate_base",
    "EvalResult",
    "export_increments",
    "import_increments",
    "TransferReport",
    "SepmeError",
    "NotFound",
    "AlreadyExists",
    "InvalidName",
    "InvalidInput",
    "BaseMismatch",
    "StoreLocked",
    "SchemaTooNew",
    "CorruptEntry",
    "ConfigError",
    "UnsupportedModel",
    "PickleRefused",
    "OfflineError",
    "NullSpaceEmpty",
    "TrainingDiverged",
    "DeviceUnavailable",
    "Conflict",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sepme_engine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, for type checkers (`py.typed`); never run. The erase
    # names are left to `__getattr__`: nothing outside erase/ imports it (tests/test_layering.py)
    from sepme_engine.bases import (
        BaseInfo,
        add_base,
        get_base,
        list_bases,
        load_base,
        remove_base,
        use_base,
    )
    from sepme_engine.compose import (
        CompositionResult,
        VariantInfo,
        get_variant,
        list_variants,
        remove_variant,
        rename_variant,
    )
    from sepme_engine.compose import compose as compose_concepts
    from sepme_engine.config import EffectiveConfig, load_config
    from sepme_engine.export.report import ExportReport
    from sepme_engine.export.run import export as export_model
    from sepme_engine.generate import EvalResult, GenerateReport, evaluate_base
    from sepme_engine.generate import generate as generate_images
    from sepme_engine.increments import (
        IncrementInfo,
        get_increment,
        list_increments,
        remove_increment,
    )
    from sepme_engine.inspect import InspectReport
    from sepme_engine.inspect import inspect as inspect_increments
    from sepme_engine.store import BlobRef, Store
    from sepme_engine.store.maintenance import PruneReport, VerifyReport
    from sepme_engine.store.maintenance import prune as prune_store
    from sepme_engine.store.maintenance import verify as verify_store
    from sepme_engine.transfer import TransferReport, export_increments, import_increments
