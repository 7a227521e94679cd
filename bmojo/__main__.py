import sys

from bmojo.cli.main import main

sys.exit(main())
