"""TFX's penguin pipeline: CSV in, a blessed Keras model pushed."""
import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx_nsl.components import GraphAugmentation, GraphBuilder, RobustnessEvaluator

MODULE_FILE = os.path.join(os.path.dirname(__file__), 'penguin_utils.py')


def create_pipeline(pipeline_name, pipeline_root, data_root, serving_model_dir,
                    metadata_path, train_steps=300, eval_steps=5,
                    min_accuracy=0.8):
  example_gen = tfx.components.CsvExampleGen(input_base=data_root)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'])
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'])
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'])
  transform = tfx.components.Transform(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'], module_file=MODULE_FILE)
  graph = GraphBuilder(
      examples=transform.outputs['transformed_examples'], max_neighbors=5,
      embedding_features=['bill_length_mm_xf', 'bill_depth_mm_xf',
                          'flipper_length_mm_xf', 'body_mass_g_xf'])
  augmentation = GraphAugmentation(
      examples=transform.outputs['transformed_examples'],
      graph=graph.outputs['graph'], max_neighbors=3)
  trainer = tfx.components.Trainer(
      module_file=MODULE_FILE,
      examples=augmentation.outputs['augmented_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
      custom_config={'graph': {'max_neighbors': 3, 'multiplier': 0.1},
                     'adversarial': {'multiplier': 0.2, 'adv_step_size': 0.2}})
  eval_config = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          label_key='species_xf', preprocessing_function_names=[
              'transform_features'])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='SparseCategoricalAccuracy',
                            threshold=tfma.MetricThreshold(
                                value_threshold=tfma.GenericValueThreshold(
                                    lower_bound={'value': min_accuracy}))),
          tfma.MetricConfig(class_name='ExampleCount'),
          tfma.MetricConfig(class_name='MultiClassConfusionMatrixPlot')])],
      slicing_specs=[tfma.SlicingSpec(),
                     tfma.SlicingSpec(feature_keys=['island'])])
  evaluator = RobustnessEvaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      transform_graph=transform.outputs['transform_graph'],
      attacks=['fgsm_linf_eps0.5', 'pgd_linf_eps0.5_steps10_step0.1'],
      min_attacked_accuracy=0.5, eval_config=eval_config)
  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name, pipeline_root=pipeline_root,
      components=[example_gen, statistics_gen, schema_gen, example_validator,
                  transform, graph, augmentation,
                  trainer, evaluator, pusher],
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              metadata_path)),
      beam_pipeline_args=['--direct_running_mode=in_memory',
                          '--direct_num_workers=1'])
