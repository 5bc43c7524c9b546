import sys

from p2pmem.cli import main

sys.exit(main())
