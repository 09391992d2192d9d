"""`python -m symnmf`: the `symnmf` command (cluster, reproduce, bench)."""
import sys

from .cli import main

sys.exit(main())
