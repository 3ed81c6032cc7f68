import sys

from geomsim.sweep.cli import main

sys.exit(main())
