"""``python -m ld3_cli <stage> ...`` (used by torchrun: ``torchrun --nproc_per_node=K -m ld3_cli sample ...``)."""
import sys

from .cli.main import main

sys.exit(main())
