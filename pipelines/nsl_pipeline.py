"""The tfx-nsl pipeline definition, shared by the local and Kubeflow runners."""
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from tfx_nsl import constants
from tfx_nsl import parameters
from tfx_nsl import types as tfx_nsl_types
from tfx_nsl.components import GraphAugmentation
from tfx_nsl.components import GraphBuilder
from tfx_nsl.components import RobustnessEvaluator
from tfx_nsl.trainer_modules.config import TrainerConfig

TRAINER_RUN_FN = 'tfx_nsl.trainer_modules.nsl_trainer.run_fn'


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_model_dir: str,
    trainer_config: Dict[str, Any],
    graph_builder_config: Optional[Dict[str, Any]] = None,
    graph_uri: Optional[str] = None,
    graph_augmentation_config: Optional[Dict[str, Any]] = None,
    splits: Sequence[str] = (constants.TRAIN_SPLIT, constants.EVAL_SPLIT),
    train_steps: int = 1000,
    eval_steps: Optional[int] = None,
    min_accuracy: float = 0.9,
    robustness_config: Optional[Dict[str, Any]] = None,
    train_baseline: bool = False,
    metadata_connection_config: Optional[Any] = None,
    beam_pipeline_args: Sequence[str] = constants.DEFAULT_BEAM_ARGS,
    component_beam_args: Optional[Mapping[str, Sequence[str]]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
  """Builds the NSL pipeline.

  Args:
    pipeline_name: name in ML Metadata (and KFP).
    pipeline_root: where component outputs go.
    data_root: folder of TFRecord files of tf.Examples, one subfolder per split.
    serving_model_dir: Pusher's filesystem destination.
    trainer_config: Trainer `custom_config`, see
      `tfx_nsl.trainer_modules.config`; validated here.
    graph_builder_config: keyword arguments of `GraphBuilder` (e.g.
      embedding_features, similarity_threshold, max_neighbors, mode); None
      builds no graph.
    graph_uri: a folder holding a graph the user already has, in NSL's TSV
      format, brought in with an Importer instead of GraphBuilder.
    graph_augmentation_config: keyword arguments of `GraphAugmentation`
      (max_neighbors, add_undirected_edges, neighbor_features,
      unlabeled_as_seeds, ...); used when there is a graph. The Trainers then
      read the augmented examples.
    splits: split names, each read from the folder of that name under
      `data_root` (e.g. train, eval, unlabeled).
    train_steps: Trainer train steps.
    eval_steps: Trainer validation steps (None: the whole eval split).
    min_accuracy: the Evaluator blesses only models at or above this clean
      accuracy on the eval split.
    robustness_config: keyword arguments of `RobustnessEvaluator` (attacks,
      min_attacked_accuracy, max_accuracy_drop, clip_min, clip_max,
      perturb_features); None evaluates clean accuracy only.
    train_baseline: also train the same model without NSL regularization
      and evaluate it beside the candidate as the baseline.
    metadata_connection_config: ML Metadata connection; None lets the
      orchestrator (e.g. Kubeflow) provide one.
    beam_pipeline_args: arguments for every Beam-based component.
    component_beam_args: {component id: Beam arguments} appended to
      `beam_pipeline_args` for that component only (the last value of a flag
      wins), e.g. to run one step on another runner.
    enable_cache: reuse outputs of unchanged components.
  """
  config = TrainerConfig.from_dict(trainer_config)
  if not 0.0 <= min_accuracy <= 1.0:
    raise ValueError(f'min_accuracy must be in [0, 1], got {min_accuracy}')
  if train_steps < 1:
    raise ValueError(f'train_steps must be >= 1, got {train_steps}')

  example_gen = tfx.components.ImportExampleGen(
      input_base=data_root,
      input_config=example_gen_pb2.Input(splits=[
          example_gen_pb2.Input.Split(name=split, pattern=f'{split}/*')
          for split in splits]))
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'])
  # The unlabeled split lacks the label; TFDV would mark it deprecated.
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True,
      exclude_splits=[s for s in splits if s == constants.UNLABELED_SPLIT])
  if graph_uri and graph_builder_config is not None:
    raise ValueError('give graph_builder_config (build a graph) or graph_uri '
                     '(import one), not both')
  graph_builder = graph = augmentation = None
  if graph_builder_config is not None:
    graph_builder = GraphBuilder(examples=example_gen.outputs['examples'],
                                 **graph_builder_config)
    graph = graph_builder.outputs['graph']
  elif graph_uri:
    graph_builder = tfx.dsl.Importer(
        source_uri=graph_uri, artifact_type=tfx_nsl_types.Graph).with_id('GraphImporter')
    graph = graph_builder.outputs['result']
  training_examples = example_gen.outputs['examples']
  if graph is not None and graph_augmentation_config is not None:
    augmentation = GraphAugmentation(examples=example_gen.outputs['examples'],
                                     graph=graph, **graph_augmentation_config)
    training_examples = augmentation.outputs['augmented_examples']
  def make_trainer(custom_config):
    custom_config[parameters.FINGERPRINT_KEY] = parameters.fingerprint(
        custom_config.get('model_fn'))
    return tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=training_examples,
        schema=schema_gen.outputs['schema'],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
        custom_config=custom_config)
  trainer = make_trainer(config.to_dict())
  baseline_trainer = None
  if train_baseline:
    baseline_trainer = make_trainer(
        {**config.to_dict(), 'graph': None, 'adversarial': None}
    ).with_id('BaselineTrainer')
  evaluator = RobustnessEvaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=(baseline_trainer.outputs['model']
                      if baseline_trainer else None),
      label_key=config.label_key,
      min_clean_accuracy=min_accuracy,
      **(robustness_config or {'attacks': []})).with_id('Evaluator')
  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))

  components: List[Any] = [c for c in (
      example_gen, statistics_gen, schema_gen, graph_builder, augmentation,
      trainer, baseline_trainer, evaluator, pusher) if c is not None]
  by_id = {c.id: c for c in components}
  unknown = sorted(set(component_beam_args or {}) - set(by_id))
  if unknown:
    raise ValueError(f'component_beam_args names {unknown}, which are not '
                     f'components of this pipeline ({sorted(by_id)}).')
  for component_id, args in (component_beam_args or {}).items():
    by_id[component_id].with_beam_pipeline_args(list(args))
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=pipeline_root,
      components=components,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(beam_pipeline_args),
      enable_cache=enable_cache)
