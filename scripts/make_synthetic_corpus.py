"""Kept for old call lines: the same as `brainpipe synth ...` (see `brainpipe.synthetic`)."""

import sys

from brainpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
