import sys

from fracture_models.cli import run_main
from tuning.tracking.replay import main

sys.exit(run_main(main))
