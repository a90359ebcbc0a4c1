import sys

from brainpipe.cli import main

sys.exit(main())
