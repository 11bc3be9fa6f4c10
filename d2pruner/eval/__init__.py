"""Evaluation with lmms-eval (the optional extra ``eval``): the model plugin, the strict grounding tasks, reports.

- :mod:`d2pruner.eval.lmms` — the lmms-eval model ``d2pruner`` (registered by :mod:`d2pruner.eval.plugin`);
- :mod:`d2pruner.eval.settings` — its ``--model_args``, validated once;
- :mod:`d2pruner.eval.task_generation`, :mod:`d2pruner.eval.box_text` — what a task asks for, what is answered;
- :mod:`d2pruner.eval.refcoco` — the strict RefCOCO protocol's ``doc_to_text`` / ``process_results`` / metrics;
- :mod:`d2pruner.eval.examples` — the offline task built from the bundled example photos;
- ``d2pruner/eval/tasks/`` — the task YAMLs (``--include_path``: :data:`TASKS_DIR`);
- :mod:`d2pruner.eval.sweep` — an lmms-eval ``--config`` list for methods × keep ratios (``python -m
  d2pruner.eval.sweep``);
- :mod:`d2pruner.eval.results`, :mod:`d2pruner.eval.markdown`, :mod:`d2pruner.eval.svg` — reading lmms-eval's
  output folders, the table, the plot (``python -m d2pruner.report``).

Importing this package imports nothing from lmms-eval.
"""

from pathlib import Path

#: the task YAMLs shipped with the package: ``--include_path`` this folder
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
