"""Kubeflow Pipelines (v2) runner for the tfx-nsl pipeline lands here."""
