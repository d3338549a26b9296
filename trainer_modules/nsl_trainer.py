"""TFX Trainer `run_fn` with NSL regularization.

Use it from the installed package (so it also runs on Kubeflow workers):

  Trainer(run_fn='tfx_nsl.trainer_modules.nsl_trainer.run_fn',
          custom_config=TrainerConfig(...).to_dict(), ...)

The model is trained wrapped in NSL's Keras wrapper; only the base model is
exported, with a `serving_default` signature that parses serialized
tf.Examples holding the raw features, exactly as a plain Trainer would.
"""
import os

from absl import logging

from tfx_nsl import constants
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.trainer_modules.config import TrainerConfig


def _import_function(path):
  import importlib  # pylint: disable=g-import-not-at-top
  module, _, name = path.rpartition('.')
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"custom_config['model_fn'] = {path!r} cannot be "
                     f'imported: {e}') from e


def feature_spec_from_schema(schema_path):
  """Returns {feature: tf.io.FixedLenFeature | ...} from a SchemaGen schema."""
  from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=g-import-not-at-top
  from tfx.utils import io_utils  # pylint: disable=g-import-not-at-top
  schema = io_utils.parse_pbtxt_file(schema_path, schema_pb2.Schema())
  return schema, schema_utils.schema_as_feature_spec(schema).feature_spec


def serving_feature_spec(feature_spec, config):
  """The raw features the base model reads: no label, no NSL features."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  missing = [k for k in config.feature_keys if k not in feature_spec]
  if missing:
    raise ValueError(f'feature_keys {missing} are not in the schema; it has '
                     f'{sorted(feature_spec)}')
  spec = {k: feature_spec[k] for k in config.feature_keys}
  for key, value in spec.items():
    if not isinstance(value, tf.io.FixedLenFeature):
      raise ValueError(
          f'feature {key!r} has a variable length in the schema; the built-in '
          'model needs fixed-length features (SchemaGen with '
          'infer_feature_shape=True, or a Transform that densifies it)')
  return spec


def build_base_model(config, feature_spec):
  """The base Keras model: {feature: [batch, d]} -> class probabilities."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shapes = {k: tuple(v.shape) or (1,) for k, v in feature_spec.items()}
  if config.model_fn:
    return _import_function(config.model_fn)(shapes, config.num_classes)
  inputs = {k: tf.keras.Input(shape=shape, name=k, dtype=feature_spec[k].dtype)
            for k, shape in shapes.items()}
  flat = [tf.keras.layers.Flatten()(tf.cast(x, tf.float32))
          for x in inputs.values()]
  x = flat[0] if len(flat) == 1 else tf.keras.layers.Concatenate()(flat)
  for units in config.model['hidden_units']:
    x = tf.keras.layers.Dense(units, activation='relu')(x)
    if config.model['dropout']:
      x = tf.keras.layers.Dropout(config.model['dropout'])(x)
  outputs = tf.keras.layers.Dense(config.num_classes, activation='softmax',
                                  name=constants.SERVING_OUTPUT)(x)
  return tf.keras.Model(inputs, outputs, name='base_model')


def wrap_with_nsl(base_model, config):
  """Returns the model to train: the base model inside NSL's wrappers."""
  if not config.adversarial:
    return base_model
  nsl = import_nsl()
  adv_config = nsl.configs.make_adv_reg_config(**config.adversarial)
  return nsl.keras.AdversarialRegularization(
      base_model, label_keys=[config.label_key], adv_config=adv_config)


def make_dataset(fn_args, files, config, schema, training):
  """Batches of {feature: tensor, label: tensor} from TFX Examples."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  keys = set(config.feature_keys) | {config.label_key}
  dataset = fn_args.data_accessor.tf_dataset_factory(
      files,
      tfxio.TensorFlowDatasetOptions(
          batch_size=config.batch_size, shuffle=training,
          shuffle_seed=config.seed, num_epochs=None if training else 1),
      schema)
  dataset = dataset.map(lambda batch: {k: v for k, v in batch.items() if k in keys})
  if not config.adversarial:
    dataset = dataset.map(
        lambda batch: ({k: batch[k] for k in config.feature_keys},
                       batch[config.label_key]))
  return dataset.prefetch(tf.data.AUTOTUNE)


def export_serving_model(base_model, serving_spec, path):
  """Saves the base model with a tf.Example-parsing `serving_default`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=constants.SERVING_INPUT)])
  def serve(serialized):
    features = tf.io.parse_example(serialized, serving_spec)
    return {constants.SERVING_OUTPUT: base_model(features, training=False)}

  base_model.save(path, save_format='tf',
                  signatures={constants.SERVING_SIGNATURE: serve})


def run_fn(fn_args):
  """TFX Trainer entry point."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import_nsl()  # also checks that tf.keras is Keras 2
  config = TrainerConfig.from_dict(fn_args.custom_config or {})
  tf.keras.utils.set_random_seed(config.seed)
  schema, feature_spec = feature_spec_from_schema(fn_args.schema_path)
  serving_spec = serving_feature_spec(feature_spec, config)

  base_model = build_base_model(config, serving_spec)
  model = wrap_with_nsl(base_model, config)
  model.compile(
      optimizer=tf.keras.optimizers.Adam(config.learning_rate),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])

  train = make_dataset(fn_args, fn_args.train_files, config, schema, True)
  evaluation = make_dataset(fn_args, fn_args.eval_files, config, schema, False)
  steps_per_epoch = max(1, fn_args.train_steps // config.epochs)
  logging.info('Training %s for %d epochs x %d steps (adversarial: %s)',
               base_model.name, config.epochs, steps_per_epoch,
               config.adversarial)
  model.fit(
      train, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
      validation_data=evaluation, validation_steps=fn_args.eval_steps or None,
      callbacks=[tf.keras.callbacks.TensorBoard(
          log_dir=os.path.join(fn_args.model_run_dir, 'logs'))],
      verbose=2)
  export_serving_model(base_model, serving_spec, fn_args.serving_model_dir)
  logging.info('Exported the base model to %s', fn_args.serving_model_dir)
