"""Kubeflow Pipelines (v2) / Vertex AI Pipelines runner for the tfx-nsl pipeline.

`python -m tfx_nsl.kubeflow.runner --help`; see docs/kubeflow.md.
"""
