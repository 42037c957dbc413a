"""`python -m thinksae …` (also what torchrun starts: `torchrun -m thinksae train …`)."""

import sys

from .cli import main

sys.exit(main())
