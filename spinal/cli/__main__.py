"""`python -m spinal.cli`: the same command line as the `spinal` script."""

from spinal.cli.app import main

main()
