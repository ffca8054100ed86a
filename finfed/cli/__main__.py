import sys

from finfed.cli.main import main

sys.exit(main())
