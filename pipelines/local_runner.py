"""Runs the pipeline locally: LocalDagRunner, Beam DirectRunner, SQLite MLMD."""
import os
import sys
from typing import Any, Dict, Optional, Sequence, TextIO

from tfx import v1 as tfx

from tfx_nsl import constants
from tfx_nsl import graph_io
from tfx_nsl import progress
from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator import report
from tfx_nsl.pipelines import datasets
from tfx_nsl.pipelines.nsl_pipeline import create_pipeline

DIGITS_TRAINER_CONFIG = {
    'feature_keys': [datasets.DIGITS_FEATURE],
    'num_classes': datasets.DIGITS_NUM_CLASSES,
    'model': {'hidden_units': [128, 64]},
    'graph': {'max_neighbors': 3, 'multiplier': 0.1},
    # Measured in docs/benchmarks.md (Trainer quality): +38 points under
    # FGSM eps 0.1 over the plain model, no loss of clean accuracy.
    'adversarial': {'multiplier': 1.0, 'adv_step_size': 0.1,
                    'adv_grad_norm': 'infinity',
                    'clip_value_min': 0.0, 'clip_value_max': 1.0},
    'epochs': 10,
    'batch_size': 32,
}


DIGITS_GRAPH_BUILDER_CONFIG = {
    'embedding_features': [datasets.DIGITS_FEATURE],
    'similarity_threshold': 0.85,
    'max_neighbors': 3,
}


DIGITS_GRAPH_AUGMENTATION_CONFIG = {
    'max_neighbors': 3,
    'neighbor_features': [datasets.DIGITS_FEATURE],
}
DIGITS_ROBUSTNESS_CONFIG = {
    'attacks': ['fgsm_linf_eps0.05', 'fgsm_linf_eps0.1', 'fgsm_linf_eps0.2',
                'pgd_linf_eps0.1_steps10_step0.02', 'autoattack_linf_eps0.05',
                'autoattack_linf_eps0.1', 'autoattack_linf_eps0.2'],
    # Gated on robust accuracy (AutoAttack's worst case per example): the
    # plain model reaches about 0.4 here, the NSL model about 0.8.
    'min_attacked_accuracy': {'autoattack_linf_eps0.1': 0.6},
    'clip_min': 0.0,
    'clip_max': 1.0,
}


def latest_outputs(metadata_path, pipeline_name):
  """{node_id: {output_key: [mlmd Artifact]}} of each node's latest execution."""
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
  result = {}
  prefix = f'{pipeline_name}.'
  for context in store.get_contexts_by_type('node'):
    if not context.name.startswith(prefix):
      continue
    executions = store.get_executions_by_context(context.id)
    if not executions:
      continue
    latest = max(executions, key=lambda e: (e.create_time_since_epoch, e.id))
    outputs = {}
    events = [e for e in store.get_events_by_execution_ids([latest.id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id(
        [e.artifact_id for e in events])}
    for event in events:
      key = event.path.steps[0].key if event.path.steps else ''
      outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    result[context.name[len(prefix):]] = outputs
  return result


def _custom(artifact, name, default=None):
  value = artifact.custom_properties.get(name)
  if value is None:
    return default
  return value.string_value or value.int_value or value.double_value


def summarize(metadata_path, pipeline_name) -> Dict[str, Any]:
  """Accuracy, blessing and push destination of the latest run."""
  outputs = latest_outputs(metadata_path, pipeline_name)
  summary: Dict[str, Any] = {}
  graph = outputs.get('GraphBuilder', {}).get('graph')
  if graph:
    summary['graph'] = graph_io.read_stats(graph[0].uri)
  evaluation = outputs.get('Evaluator', {})
  if evaluation.get('evaluation'):
    uri = evaluation['evaluation'][0].uri
    summary['accuracies'] = report.load_accuracies(uri)
    summary['example_counts'] = report.load_counts(uri)
    summary['accuracy'] = summary['accuracies'][report.CANDIDATE][attacks.CLEAN]
    summary['threshold_failures'] = report.load_validation(uri)[1]
    summary['report'] = os.path.join(uri, report.REPORT_HTML)
  if evaluation.get('blessing'):
    summary['blessed'] = bool(_custom(evaluation['blessing'][0], 'blessed', 0))
  pushed = outputs.get('Pusher', {}).get('pushed_model')
  if pushed:
    summary['pushed'] = bool(_custom(pushed[0], 'pushed', 0))
    summary['pushed_model'] = _custom(pushed[0], 'pushed_destination')
  return summary


def format_summary(summary):
  lines = ['', 'tfx-nsl run summary']
  graph = summary.get('graph')
  if graph:
    components = graph.get('connected_components')
    lines.append(
        f"  graph: {graph['num_nodes']} nodes, {graph['num_edges']} edges, "
        f"mean out-degree {graph['mean_out_degree']:.2f}, "
        f"{graph['isolated_nodes']} isolated, "
        f"{components if components is not None else '?'} components")
  if 'accuracies' in summary:
    lines.append(report.text_table(summary['accuracies'],
                                   counts=summary.get('example_counts')))
    lines.append(f"  report: {summary['report']}")
  lines.append(f"  blessed: {summary.get('blessed', 'unknown')}")
  for failure in summary.get('threshold_failures', []):
    lines.append(f'    not met: {failure}')
  if summary.get('pushed'):
    lines.append(f"  pushed model: {summary['pushed_model']}")
  else:
    lines.append('  pushed model: none (the model was not blessed)')
  if summary.get('log'):
    lines.append(f"  log: {summary['log']}")
  return '\n'.join(lines)


def run_local(
    output_root: str = 'runs',
    pipeline_name: str = 'tfx-nsl-digits',
    trainer_config: Optional[Dict[str, Any]] = None,
    graph_builder_config: Optional[Dict[str, Any]] = DIGITS_GRAPH_BUILDER_CONFIG,
    graph_augmentation_config: Optional[Dict[str, Any]] = (
        DIGITS_GRAPH_AUGMENTATION_CONFIG),
    train_steps: int = 2000,
    min_accuracy: float = 0.9,
    robustness_config: Optional[Dict[str, Any]] = DIGITS_ROBUSTNESS_CONFIG,
    train_baseline: bool = True,
    beam_pipeline_args: Sequence[str] = constants.DEFAULT_BEAM_ARGS,
    component_beam_args: Optional[Dict[str, Sequence[str]]] = None,
    enable_cache: bool = True,
    verbose: bool = False,
    terminal: Optional[TextIO] = None,
    log_path: Optional[str] = None,
) -> Dict[str, Any]:
  """Runs the digits pipeline under `output_root`; returns the summary.

  Prints a line as each component starts and ends (to `terminal`, else
  stdout), beside whatever else the process prints. `tfx-nsl run` passes
  the `terminal` of `tfx_nsl.progress.quiet`, which has sent everything else
  to `log_path`. Raises `progress.PipelineFailed`.
  """
  output_root = os.path.abspath(output_root)
  data_root = datasets.write_digits(os.path.join(output_root, 'data'))
  metadata_path = os.path.join(output_root, 'metadata', f'{pipeline_name}.db')
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  pipeline = create_pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=os.path.join(output_root, 'pipelines', pipeline_name),
      data_root=data_root,
      serving_model_dir=os.path.join(output_root, 'serving', pipeline_name),
      trainer_config=trainer_config or DIGITS_TRAINER_CONFIG,
      graph_builder_config=graph_builder_config,
      graph_augmentation_config=graph_augmentation_config,
      train_steps=train_steps,
      min_accuracy=min_accuracy,
      robustness_config=robustness_config,
      train_baseline=train_baseline,
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              metadata_path)),
      beam_pipeline_args=beam_pipeline_args,
      component_beam_args=component_beam_args,
      enable_cache=enable_cache)
  quiet = terminal is not None and not verbose
  progress.run_with_progress(
      lambda: tfx.orchestration.LocalDagRunner().run(pipeline),
      terminal or sys.stdout, log_path if quiet else None,
      style=None if quiet else progress.LINES)
  summary = summarize(metadata_path, pipeline_name)
  if quiet:
    summary['log'] = log_path
  return summary
