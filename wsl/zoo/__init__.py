"""Model zoos: collections of trained networks' weights plus metadata.

The native format ``"wsl.zoo/1"`` is documented in :mod:`wsl.zoo.format`, the
compressed one (``"wsl.zoo-compressed/1"``: bases plus coefficients) in
:mod:`wsl.zoo.compressed`.
Write with :class:`ZooWriter`, read with :func:`load_zoo` (a :class:`Zoo` of
:class:`ZooModel` rows), train on it with :class:`ZooDataset`, join zoos with
:func:`merge_zoos`.
"""

from __future__ import annotations

from typing import Any

from wsl.zoo.compressed import COMPRESSED_FORMAT, open_compressed_store
from wsl.zoo.format import FORMAT
from wsl.zoo.writer import ZooWriter
from wsl.zoo.zoo import Zoo, ZooIndexError, ZooModel, load_zoo, register_store_opener

register_store_opener(open_compressed_store)  # wsl.zoo-compressed/1 zoos reconstruct their rows on access

__all__ = ["COMPRESSED_FORMAT", "FORMAT", "Zoo", "ZooDataset", "ZooIndexError", "ZooModel", "ZooWriter", "load_zoo",
           "merge_zoos"]


def __getattr__(name: str) -> Any:
    if name == "ZooDataset":
        from wsl.zoo.dataset import ZooDataset

        return ZooDataset
    if name == "merge_zoos":
        from wsl.zoo.merge import merge_zoos

        return merge_zoos
    raise AttributeError(f"module 'wsl.zoo' has no attribute {name!r}")
