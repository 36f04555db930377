import sys

from ..cli.dpo import main

sys.exit(main())
