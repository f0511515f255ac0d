"""The `spinal` command line: typer verbs over the configs, errors as one line with exit 2, progress on stderr."""
