import sys

from geomsim.testbed.cli import main

sys.exit(main())
