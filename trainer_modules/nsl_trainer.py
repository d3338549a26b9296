"""TFX Trainer `run_fn` with NSL graph and/or adversarial regularization.

Use it from the installed package (so it also runs on Kubeflow workers):

  Trainer(run_fn='tfx_nsl.trainer_modules.nsl_trainer.run_fn',
          custom_config={...},  # documented in tfx_nsl.trainer_modules.config
          ...)

The model trains inside NSL's Keras wrappers; only the base model is
exported, with a `serving_default` signature that parses serialized
tf.Examples holding the raw features (Transform applied inside when used),
exactly as a plain Trainer would. The export is a Keras SavedModel, so
`tf.keras.models.load_model` on it gives the base Keras model back (for
gradient-based attacks in evaluation) without changing what is served.
"""
import importlib
import os

from absl import logging
import tensorflow as tf

from tfx_nsl import constants
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.nsl_compat import per_feature
from tfx_nsl.trainer_modules.config import TrainerConfig

SAMPLE_WEIGHT = '__sample_weight__'
# Parsed value of a missing label: marks an unlabeled example.
MISSING_LABEL = -1


def _import_function(path):
  module, _, name = path.rpartition('.')
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"custom_config['model_fn'] = {path!r} cannot be "
                     f'imported: {e}') from e


def make_strategy(config):
  """The tf.distribute strategy named by `config.distribution`."""
  name = config.distribution
  if name in ('auto', 'tpu'):
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
      return tf.distribute.TPUStrategy(resolver)
    except (ValueError, tf.errors.NotFoundError) as e:
      if name == 'tpu':
        raise ValueError(f'distribution is "tpu" but no TPU was found: {e}')
  if name == 'mirrored' or (name == 'auto' and
                            tf.config.list_logical_devices('GPU')):
    return tf.distribute.MirroredStrategy(devices=config.devices)
  return tf.distribute.get_strategy()


def feature_spec_from_schema(schema_path):
  """(schema, {feature: tf.io spec}) from a SchemaGen schema file."""
  from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=g-import-not-at-top
  from tfx.utils import io_utils  # pylint: disable=g-import-not-at-top
  schema = io_utils.parse_pbtxt_file(schema_path, schema_pb2.Schema())
  return schema, schema_utils.schema_as_feature_spec(schema).feature_spec


def _fixed(spec, name):
  if not isinstance(spec, tf.io.FixedLenFeature):
    raise ValueError(
        f'feature {name!r} has a variable length in the schema; NSL training '
        'needs fixed-length features (SchemaGen with infer_feature_shape=True, '
        'or a Transform that densifies it)')
  return spec


def _filled(spec, value):
  """`spec` with every missing value parsed as `value`."""
  size = 1
  for dim in spec.shape:
    size *= dim
  return tf.io.FixedLenFeature(
      spec.shape, spec.dtype,
      default_value=[spec.dtype.as_numpy_dtype(value)] * size)


def training_parse_spec(raw_spec, config, raw_neighbor_features):
  """tf.io spec of training examples: base raw features, the label, and NSL's
  neighbor features, which SchemaGen's schema knows nothing about.

  Neighbor features are derived from the base ones with zero defaults, and a
  missing neighbor's weight defaults to 0, as in NSL. A missing label parses
  as MISSING_LABEL (its example then gets supervised weight 0).
  """
  spec = {name: _fixed(raw_spec[name], name) for name in raw_neighbor_features}
  # Where unlabeled examples exist, SchemaGen sees the label as optional
  # (a VarLenFeature); one value or none, either way.
  spec[config.label_key] = _filled(tf.io.FixedLenFeature(
      [1], raw_spec[config.label_key].dtype), MISSING_LABEL)
  if config.graph:
    nsl = import_nsl()
    prefix = nsl.configs.GraphNeighborConfig().prefix
    weight_suffix = nsl.configs.GraphNeighborConfig().weight_suffix
    for i in range(config.graph['max_neighbors']):
      for name in raw_neighbor_features:
        spec[f'{prefix}{i}_{name}'] = _filled(raw_spec[name], 0)
      spec[f'{prefix}{i}{weight_suffix}'] = tf.io.FixedLenFeature(
          [1], tf.float32, default_value=[0.0])
  return spec


def _files(patterns):
  files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
  if not files:
    raise ValueError(f'no example files match {patterns}')
  return files


class _Inputs:
  """Reads augmented Examples into what each NSL wrapper expects."""

  def __init__(self, config, raw_spec, tft_output):
    self._config = config
    self._tft_output = tft_output
    # Without Transform the model reads its raw features; with it, the raw
    # features that Transform consumes (neighbors must be transformed too).
    self._raw_features = (
        sorted(set(tft_output.raw_feature_spec()) - {config.label_key})
        if tft_output else list(config.feature_keys))
    self.parse_spec = training_parse_spec(raw_spec, config, self._raw_features)
    self._tft_layer = tft_output.transform_features_layer() if tft_output else None

  def _model_features(self, raw):
    if self._tft_layer is None:
      return {k: raw[k] for k in self._config.feature_keys}
    transformed = self._tft_layer(raw)
    return {k: transformed[k] for k in self._config.feature_keys}

  def _to_model_input(self, parsed):
    config = self._config
    features = self._model_features(
        {k: parsed[k] for k in self._raw_features})
    label = parsed[config.label_key]
    weight = tf.cast(tf.reduce_all(label != MISSING_LABEL, axis=-1,
                                   keepdims=True), tf.float32)
    label = tf.maximum(label, 0)  # any class; its loss has weight 0
    if config.graph:
      nsl = import_nsl()
      prefix = nsl.configs.GraphNeighborConfig().prefix
      weight_suffix = nsl.configs.GraphNeighborConfig().weight_suffix
      for i in range(config.graph['max_neighbors']):
        neighbor = self._model_features(
            {k: parsed[f'{prefix}{i}_{k}'] for k in self._raw_features})
        for key, value in neighbor.items():
          features[f'{prefix}{i}_{key}'] = value
        features[f'{prefix}{i}{weight_suffix}'] = parsed[
            f'{prefix}{i}{weight_suffix}']
    if config.adversarial:
      return {**features, config.label_key: label, SAMPLE_WEIGHT: weight}
    return features, label, weight

  def dataset(self, patterns, training, batch_size):
    files = _files(patterns)
    compression = 'GZIP' if files[0].endswith('.gz') else None
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
      dataset = dataset.shuffle(len(files), seed=self._config.seed)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
      dataset = dataset.shuffle(10_000, seed=self._config.seed).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.map(lambda s: tf.io.parse_example(s, self.parse_spec),
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(self._to_model_input,
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)

  def model_input_spec(self, raw_spec):
    """{model feature: (shape, dtype)} for building the base model."""
    if self._tft_layer is None:
      return {k: (tuple(raw_spec[k].shape) or (1,), raw_spec[k].dtype)
              for k in self._config.feature_keys}
    spec = self._tft_output.transformed_feature_spec()
    return {k: (tuple(spec[k].shape) or (1,), spec[k].dtype)
            for k in self._config.feature_keys}


def build_base_model(config, input_spec):
  """The base Keras model: {feature: tensor} -> class probabilities."""
  if config.model_fn:
    return _import_function(config.model_fn)(
        {k: shape for k, (shape, _) in input_spec.items()}, config.num_classes)
  inputs = {k: tf.keras.Input(shape=shape, name=k, dtype=dtype)
            for k, (shape, dtype) in input_spec.items()}
  model = config.model
  flat = [tf.keras.layers.Flatten()(tf.cast(x, tf.float32))
          for x in inputs.values()]
  x = flat[0] if len(flat) == 1 else tf.keras.layers.Concatenate()(flat)
  if model['type'] == 'cnn':
    x = tf.keras.layers.Reshape(model['image_shape'])(x)
    for filters in model['filters']:
      x = tf.keras.layers.Conv2D(filters, 3, padding='same',
                                 activation='relu')(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
  for units in model['hidden_units']:
    x = tf.keras.layers.Dense(units, activation='relu')(x)
    if model['dropout']:
      x = tf.keras.layers.Dropout(model['dropout'])(x)
  outputs = tf.keras.layers.Dense(config.num_classes, activation='softmax',
                                  name=constants.SERVING_OUTPUT)(x)
  return tf.keras.Model(inputs, outputs, name='base_model')


def wrap_with_nsl(base_model, config):
  """The model to train: the base model inside NSL's Keras wrappers.

  Graph and adversarial together nest the graph wrapper inside the
  adversarial one; neighbor features are then masked out of the attack.
  """
  if not config.graph and not config.adversarial:
    return base_model
  nsl = import_nsl()
  model = base_model
  if config.graph:
    model = nsl.keras.GraphRegularization(
        base_model, nsl.configs.make_graph_reg_config(**config.graph))
  if config.adversarial:
    settings = dict(config.adversarial)
    perturbed = settings.pop('perturb_features') or config.feature_keys
    mask = {k: 0.0 for k in config.feature_keys if k not in perturbed}
    if config.graph:
      prefix = nsl.configs.GraphNeighborConfig().prefix
      weight_suffix = nsl.configs.GraphNeighborConfig().weight_suffix
      for i in range(config.graph['max_neighbors']):
        mask[f'{prefix}{i}{weight_suffix}'] = 0.0
        for k in config.feature_keys:
          mask[f'{prefix}{i}_{k}'] = 0.0
    for bound in ('clip_value_min', 'clip_value_max'):
      settings[bound] = per_feature(settings[bound], perturbed)
    model = nsl.keras.AdversarialRegularization(
        model, label_keys=[config.label_key], sample_weight_key=SAMPLE_WEIGHT,
        adv_config=nsl.configs.make_adv_reg_config(
            feature_mask=mask or None, **settings))
  return model


def _optimizer(config):
  return {'adam': tf.keras.optimizers.Adam,
          'sgd': tf.keras.optimizers.SGD,
          'rmsprop': tf.keras.optimizers.RMSprop}[config.optimizer](
              config.learning_rate)


def _metrics(config):
  accuracy = [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')]
  if config.adversarial:
    # AdversarialRegularization applies `sample_weight_key` itself and does
    # not pass weighted_metrics on to the base model.
    return {'metrics': accuracy}
  # Weighted, so unlabeled seeds (weight 0) do not count.
  return {'weighted_metrics': accuracy}


def export_serving_model(base_model, raw_spec, config, path, tft_output=None):
  """Saves the base model with a tf.Example-parsing `serving_default`."""
  if tft_output is None:
    spec = {k: raw_spec[k] for k in config.feature_keys}
    transform = None
  else:
    spec = {k: v for k, v in tft_output.raw_feature_spec().items()
            if k != config.label_key}
    transform = tft_output.transform_features_layer()
    base_model.tft_layer = transform  # tracked, so it is saved with the model

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=constants.SERVING_INPUT)])
  def serve(serialized):
    features = tf.io.parse_example(serialized, spec)
    if transform is not None:
      features = transform(features)
    inputs = {k: features[k] for k in config.feature_keys}
    return {constants.SERVING_OUTPUT: base_model(inputs, training=False)}

  base_model.save(path, save_format='tf',
                  signatures={constants.SERVING_SIGNATURE: serve})


def run_fn(fn_args):
  """TFX Trainer entry point."""
  import_nsl()  # also checks that tf.keras is Keras 2
  config = TrainerConfig.from_dict(fn_args.custom_config or {})
  tf.keras.utils.set_random_seed(config.seed)
  _, raw_spec = feature_spec_from_schema(fn_args.schema_path)
  missing = [k for k in [config.label_key] + (
      [] if fn_args.transform_graph_path else config.feature_keys)
             if k not in raw_spec]
  if missing:
    raise ValueError(f'features {missing} are not in the schema, which has '
                     f'{sorted(raw_spec)}')
  tft_output = None
  if fn_args.transform_graph_path:
    import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)

  strategy = make_strategy(config)
  inputs = _Inputs(config, raw_spec, tft_output)
  train = inputs.dataset(fn_args.train_files, True, config.batch_size)
  evaluation = inputs.dataset(fn_args.eval_files, False, config.batch_size)
  with strategy.scope():
    base_model = build_base_model(config, inputs.model_input_spec(raw_spec))
    model = wrap_with_nsl(base_model, config)
    model.compile(
        optimizer=_optimizer(config),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        **_metrics(config))
  steps_per_epoch = max(1, fn_args.train_steps // config.epochs)
  logging.info('Training %s on %d replica(s) for %d epochs x %d steps; graph: '
               '%s; adversarial: %s', base_model.name,
               strategy.num_replicas_in_sync, config.epochs, steps_per_epoch,
               config.graph, config.adversarial)
  model.fit(
      train, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
      validation_data=evaluation, validation_steps=fn_args.eval_steps or None,
      callbacks=[tf.keras.callbacks.TensorBoard(
          log_dir=os.path.join(fn_args.model_run_dir, 'logs'))],
      verbose=2)
  export_serving_model(base_model, raw_spec, config, fn_args.serving_model_dir,
                       tft_output)
  logging.info('Exported the base model to %s', fn_args.serving_model_dir)
