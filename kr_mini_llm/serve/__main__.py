import sys

from ..cli.serve import main

sys.exit(main())
