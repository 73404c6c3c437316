"""python -m pipeline: the same CLI as the `pipeline` console script."""

from .cli import main

main()
