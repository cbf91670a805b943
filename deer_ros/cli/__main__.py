"""``python -m deer_ros.cli``: the same as the ``deer-ros`` console script."""
import sys

from deer_ros.cli import main

sys.exit(main())
