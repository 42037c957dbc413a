"""`python -m thinksae …` (also what torchrun starts: `torchrun -m thinksae train …`)."""

from .cli import exit_process, main

exit_process(main())
