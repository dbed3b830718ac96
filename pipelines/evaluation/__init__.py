"""Evaluation: metrics with patient-bootstrap CIs, the report, and where results came from.

``metrics`` (the statistics) -> ``summary`` (a predictions table -> an ``Evaluation``) ->
``outputs`` (metrics / thresholds JSON, curve CSVs; ``render_report``), which writes the HTML
(``report``, from ``templates/report.html.j2``, with ``figures``) and Markdown reports.
``provenance``: the git commit and DVC hashes shown in the report and the model card.
"""
