import sys

from jaxsel.cli import main

sys.exit(main())
