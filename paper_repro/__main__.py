import sys

from paper_repro.run_all import main

sys.exit(main())
