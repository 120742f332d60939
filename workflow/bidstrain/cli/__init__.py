"""The ``bidstrain`` command: the workflow run in a study folder (``bidstrain run``,
``dry-run``, ``validate``, ``report``, ``status``, ``init``), without typing Snakemake's
options for the clone's Snakefile, profiles and the SLURM client."""
