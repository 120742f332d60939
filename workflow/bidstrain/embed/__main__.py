from bidstrain.embed.apply import main
from bidstrain.errors import run_cli

run_cli(main)
