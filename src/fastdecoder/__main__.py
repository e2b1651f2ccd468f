"""``python -m fastdecoder ...``: the same as the ``fastdecoder`` command."""
import sys

from fastdecoder.cli import main

sys.exit(main())
