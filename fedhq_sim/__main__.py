"""``python -m fedhq_sim`` runs the command line."""

import sys

from fedhq_sim.cli import main

sys.exit(main())
