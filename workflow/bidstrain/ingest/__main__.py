from bidstrain.errors import run_cli
from bidstrain.ingest.records import main

run_cli(main)
