import sys

from goushi.cli import main

sys.exit(main())
