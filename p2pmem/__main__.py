import sys

from p2pmem.interfaces.cli import main

sys.exit(main())
