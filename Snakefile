# bidstrain: BIDS -> ingest -> normalize -> average -> checks -> train -> report.
# Read this file to see the DAG: each stage is one file under workflow/rules/, and each
# has a target rule of the same name (`snakemake ingest`, `snakemake normalize`, ...).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/average.smk"
include: "workflow/rules/checks.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/embed.smk"


# Plain paths, not rules.<name>.input/output: a rule that references other rules makes
# Snakemake hash its whole input list for every input file (quadratic in the file count).
# The normalize tables are not listed: each is an input of its figure group's job, and
# every edge of the DAG costs Snakemake time at cohort scale.
rule all:
    default_target: True
    input:
        paths.MANIFEST,
        PLAN.average_stores,
        paths.CHECKS_SUMMARY,
        paths.trained_model(PLAN.experiment),
        PLAN.report_figures,
        PLAN.embed_targets if CONFIG.embed.enabled else [],
