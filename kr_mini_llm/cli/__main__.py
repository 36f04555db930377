"""`python -m kr_mini_llm.cli` = the `kr-mini-llm` console command."""
import sys

from . import main

sys.exit(main())
