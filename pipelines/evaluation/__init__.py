"""Evaluation: metrics with patient-bootstrap CIs, the report, and where results came from."""
