"""The sepme store: versioned JSON manifests over content-addressed blobs. Never imports torch."""

from sepme_engine.store.core import SCHEMA_VERSION, BlobRef, Store, validate_name

__all__ = ["SCHEMA_VERSION", "BlobRef", "Store", "validate_name"]
