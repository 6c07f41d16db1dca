"""PuzzleLib.Config is cybn.modules.config itself, so settings made through either name are shared."""
import sys

import cybn.modules.config

sys.modules[__name__] = cybn.modules.config
