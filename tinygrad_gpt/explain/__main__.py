"""`python -m tinygrad_gpt.explain`."""
import sys

from .cli import main

sys.exit(main())
