"""The store: the Zarr contract between capture and analysis, its shards and codecs, creation, locking and checks."""
