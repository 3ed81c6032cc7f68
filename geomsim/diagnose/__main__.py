import sys

from geomsim.diagnose.cli import main

sys.exit(main())
