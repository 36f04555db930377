import sys

from ..cli.lora import main

sys.exit(main())
