"""TFX's penguin pipeline: CSV in, a blessed Keras model pushed."""
import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

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
  trainer = tfx.components.Trainer(
      module_file=MODULE_FILE,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=eval_steps))
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
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      eval_config=eval_config)
  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name, pipeline_root=pipeline_root,
      components=[example_gen, statistics_gen, schema_gen, example_validator,
                  transform,
                  trainer, evaluator, pusher],
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              metadata_path)),
      beam_pipeline_args=['--direct_running_mode=in_memory',
                          '--direct_num_workers=1'])
