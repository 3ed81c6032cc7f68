import sys

from geomsim.diagnose.cli import main
from geomsim.watchdog import finish

sys.exit(finish(main()))  # leaves at once if a watched call was left stuck
