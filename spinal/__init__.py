"""SPINAL: capture layer-wise activations into Zarr and audit where preference alignment acts across depth."""

__version__ = "0.1.0"
