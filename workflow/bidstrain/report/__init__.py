"""Report figures, one module per stage, drawn with matplotlib (Agg) into PNG files.

``python -m bidstrain.report <figure> ...`` draws one kind of figure (see
:mod:`bidstrain.report.__main__`); ``workflow/rules/report.smk`` runs it for every stage's
outputs and flags the PNGs for ``snakemake --report``. This module imports nothing heavy,
so the plan and the rule files can read the names below at parse time.
"""

#: Training figures (file stems under ``results/report/train/<experiment>/``).
TRAINING_FIGURES = ("losses", "grad_norm", "lr", "modality_gradients", "throughput", "learning")
#: Checks figures (file stems under ``results/report/checks/<experiment>/``).
CHECKS_FIGURES = ("scale_table", "summary")
