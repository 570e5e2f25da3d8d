"""`python -m nsfw PATH_OR_URL...`: see nsfw.cli."""

import sys

from nsfw.cli import main

sys.exit(main())
