import sys

from dartscc_fast.cli import main

sys.exit(main())
