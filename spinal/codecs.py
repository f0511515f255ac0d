"""The store's activation codecs: named, lossless, each ending in a crc32c checksum (a recorded store option).

Plain zarr reads every one of them: the codec chain is in the array's own metadata. The name is
recorded in the store's attributes (``codec``) so a reader and the planner can say what a store
cost to write. Measured on real activations by ``benchmarks/bench_write.py`` (README, "Store writes").
"""

from __future__ import annotations

from typing import Callable

from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from spinal.errors import InputError


def _blosc(cname: str, level: int, shuffle: str) -> Callable[[int], list]:
    # typesize = the stored element: 2 for bf16/fp16 (stored as uint16), 4 for float32, so shuffle groups
    # the bytes holding sign and exponent (which compress) apart from the low mantissa bytes (which do not)
    return lambda itemsize: [BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=itemsize)]


CODECS: dict[str, tuple[Callable[[int], list], str]] = {
    "zstd-1": (lambda _: [ZstdCodec(level=1)], "zstd level 1"),
    "zstd-3": (lambda _: [ZstdCodec(level=3)], "zstd level 3"),
    "blosc-zstd-1-shuffle": (_blosc("zstd", 1, "shuffle"), "blosc: byte-shuffle, then zstd level 1"),
    "blosc-lz4-shuffle": (_blosc("lz4", 5, "shuffle"), "blosc: byte-shuffle, then lz4"),
    "blosc-lz4-bitshuffle": (_blosc("lz4", 5, "bitshuffle"), "blosc: bit-shuffle, then lz4"),
    "crc32c": (lambda _: [], "no compression: the checksum only"),
}
DEFAULT_CODEC = "zstd-1"


def check_codec(name: str) -> str:
    if name not in CODECS:
        raise InputError(f"codec={name!r}; choose one of {', '.join(CODECS)} (README, 'Store writes', compares them)")
    return name


def activation_codecs(name: str, itemsize: int) -> list:
    """The bytes-to-bytes codecs of the ``hidden`` array's chunks for codec ``name``; crc32c always last."""
    return [*CODECS[check_codec(name)][0](itemsize), Crc32cCodec()]
