"""The store's activation codecs: named, lossless, each ending in a crc32c checksum (a recorded store option).

Plain zarr reads every one of them: the codec chain is in the array's own metadata. The name is
recorded in the store's attributes (``codec``) so a reader and the planner can say what a store
cost to write. Measured on real activations by ``benchmarks/bench_write.py`` (docs/benchmarks.md, "Store writes").
"""

from __future__ import annotations

from spinal.errors import InputError

# name -> (zarr bytes-to-bytes codecs before the checksum, as (class name, arguments); description)
CODECS: dict[str, tuple[tuple[tuple[str, dict], ...], str]] = {
    "zstd-1": ((("ZstdCodec", {"level": 1}),), "zstd level 1"),
    "zstd-3": ((("ZstdCodec", {"level": 3}),), "zstd level 3"),
    "blosc-zstd-1-shuffle": ((("BloscCodec", {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}),),
                             "blosc: byte-shuffle, then zstd level 1"),
    "blosc-lz4-shuffle": ((("BloscCodec", {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}),),
                          "blosc: byte-shuffle, then lz4"),
    "blosc-lz4-bitshuffle": ((("BloscCodec", {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}),),
                             "blosc: bit-shuffle, then lz4"),
    "crc32c": ((), "no compression: the checksum only"),
}
DEFAULT_CODEC = "zstd-1"


def check_codec(name: str) -> str:
    if name not in CODECS:
        raise InputError(f"codec={name!r}; choose one of {', '.join(CODECS)} (docs/benchmarks.md, 'Store writes', compares them)")
    return name


def activation_codecs(name: str, itemsize: int) -> list:
    """The bytes-to-bytes codecs of the ``hidden`` array's chunks for codec ``name``; crc32c always last.

    Blosc's typesize is the stored element (2 for bf16/fp16, stored as uint16; 4 for float32), so its shuffle
    groups the bytes holding sign and exponent (which compress) apart from the low mantissa bytes (which do not).
    """
    import zarr.codecs  # here, not at import: every CLI start (even --help) would pay for zarr

    chain = []
    for cls, kw in CODECS[check_codec(name)][0]:
        chain.append(getattr(zarr.codecs, cls)(**kw, **({"typesize": itemsize} if cls == "BloscCodec" else {})))
    return [*chain, zarr.codecs.Crc32cCodec()]
