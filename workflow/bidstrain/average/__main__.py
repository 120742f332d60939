from bidstrain.average.cohort import main
from bidstrain.errors import run_cli

run_cli(main)
