"""TFX Trainer modules with NSL graph and/or adversarial regularization.

Three ways in, one data path (`_Inputs`) and one set of NSL wrappers:

  Trainer(run_fn='tfx_nsl.trainer_modules.nsl_trainer.run_fn',
          custom_config={...},  # documented in tfx_nsl.trainer_modules.config
          ...)                  # the built-in model, or `model_fn`
  Trainer(module_file='my_trainer.py', ...)   # run_fn = make_run_fn(model_fn)
  add_nsl(model, fn_args, ...)                 # inside your own run_fn

Examples are Transform's `transformed_examples`, raw examples with the
`transform_graph` applied here, or raw examples without Transform
(`examples_route`); neighbors written by GraphAugmentation take the same
route as their seed. The model trains inside NSL's Keras wrappers; only the
base model is exported, with a `serving_default` signature that parses
serialized tf.Examples holding the raw features the model's inputs come
from (Transform applied inside when used), as a plain Trainer would. The
export is a Keras SavedModel, so `tf.keras.models.load_model` on it gives the
base Keras model back (for gradient-based attacks in evaluation).
"""
import importlib
import os

from absl import logging
import tensorflow as tf

from tfx_nsl import constants
from tfx_nsl import heads
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.nsl_compat import per_feature
from tfx_nsl.trainer_modules.config import TrainerConfig

SAMPLE_WEIGHT = '__sample_weight__'
NBR_PREFIX = constants.NBR_PREFIX
NBR_WEIGHT_SUFFIX = constants.NBR_WEIGHT_SUFFIX
# How training examples relate to Transform (`examples_route`).
AUTO, PLAIN, RAW, TRANSFORMED = 'auto', 'plain', 'raw', 'transformed'
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


def _fixed(spec, name, where):
  if not isinstance(spec, tf.io.FixedLenFeature):
    hint = ('densify it in the preprocessing_fn (e.g. '
            'tft.sparse_tensor_to_dense_with_shape)' if where == TRANSFORMED
            else 'give the Trainer a transform_graph whose preprocessing_fn '
            'densifies it, or a schema with a fixed shape (SchemaGen '
            'infer_feature_shape=True)')
    raise ValueError(f'model input {name!r} is variable-length in the {where} '
                     f'feature spec; the model needs a dense tensor: {hint}')
  # Scalars parse as [1]: one value per example, as Keras inputs expect.
  return tf.io.FixedLenFeature(list(spec.shape) or [1], spec.dtype,
                               spec.default_value)


def _filled(spec, value):
  """`spec` with every missing value parsed as `value` (b'' for strings)."""
  if not isinstance(spec, tf.io.FixedLenFeature):
    return spec  # a missing value is an empty sparse/ragged value already
  size = 1
  for dim in spec.shape:
    size *= dim
  fill = b'' if spec.dtype == tf.string else spec.dtype.as_numpy_dtype(value)
  return tf.io.FixedLenFeature(spec.shape, spec.dtype,
                               default_value=[fill] * size)


def _files(patterns):
  files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
  if not files:
    raise ValueError(f'no example files match {patterns}')
  return files


def _first_example(patterns):
  files = _files(patterns)
  compression = 'GZIP' if files[0].endswith('.gz') else None
  for record in tf.data.TFRecordDataset(files[:1], compression_type=compression
                                        ).take(1):
    return tf.train.Example.FromString(record.numpy())
  raise ValueError(f'the first example file {files[0]} is empty')


_KINDS = {'float_list': tf.float32, 'int64_list': tf.int64,
          'bytes_list': tf.string}


def _agrees(example, spec, required=()):
  """Whether `example` can be an example of `spec`: every feature it shares
  with `spec` has the spec's type, it shares one at least, and it holds
  `required`. NSL's own features (NL_...) do not count."""
  shared = 0
  for name, feature in example.features.feature.items():
    if name.startswith('NL_') or name not in spec:
      continue
    kind = feature.WhichOneof('kind')
    if kind and _KINDS[kind] != spec[name].dtype:
      return False
    shared += 1
  return shared > 0 and all(k in example.features.feature for k in required)


def examples_route(config, tft_output, train_files):
  """How the training examples relate to Transform: PLAIN (no Transform),
  RAW (Transform is applied here) or TRANSFORMED (Transform's output)."""
  if tft_output is None:
    if config.examples == TRANSFORMED:
      raise ValueError("custom_config['examples'] is 'transformed' but the "
                       'Trainer has no transform_graph')
    return PLAIN
  if config.examples != AUTO:
    return config.examples
  example = _first_example(train_files)
  transformed = _agrees(example, tft_output.transformed_feature_spec(),
                        config.feature_keys)
  raw = _agrees(example, tft_output.raw_feature_spec())
  if transformed != raw:
    return TRANSFORMED if transformed else RAW
  names = sorted(example.features.feature)
  raise ValueError(
      f'cannot tell whether the training examples (features {names}) are raw '
      'or transformed: they match ' + ('both' if raw else 'neither') +
      " of Transform's raw and transformed feature specs. Set "
      "custom_config['examples'] to 'transformed' or 'raw'.")


def serving_raw_features(tft_output, feature_keys):
  """The raw features that the model's inputs are computed from.

  Transform's layer computes only the outputs whose raw inputs it is given,
  so a raw feature is needed iff leaving it out loses a model input. The
  label, a raw target column and an id therefore never become serving inputs.
  """
  raw_spec = tft_output.raw_feature_spec()
  layer = tft_output.transform_features_layer()

  def computable(names):
    if not names:
      return False
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def outputs(serialized):
      return layer(tf.io.parse_example(
          serialized, {k: raw_spec[k] for k in names}))
    keys = outputs.get_concrete_function().structured_outputs.keys()
    return set(feature_keys) <= set(keys)

  every = sorted(raw_spec)
  if not computable(every):
    raise ValueError(f'model inputs {sorted(feature_keys)} are not all outputs '
                     "of Transform's preprocessing_fn, whose outputs are "
                     f'{sorted(tft_output.transformed_feature_spec())}')
  return [name for name in every
          if not computable([k for k in every if k != name])]


def _as_dense_input(value, name):
  if not isinstance(value, tf.Tensor):
    raise ValueError(f'model input {name!r} is sparse or ragged after '
                     'Transform; densify it in the preprocessing_fn')
  return value[:, tf.newaxis] if value.shape.rank == 1 else value


def _label_type_error(key, dtype):
  return ValueError(
      f'label {key!r} is a {dtype.name} feature; the Trainer needs int class '
      'ids or float values: map it to ids in the preprocessing_fn '
      '(tft.compute_and_apply_vocabulary) and use that output as label_key')


class _Inputs:
  """Reads (augmented) Examples into what each NSL wrapper expects.

  Routes (see `examples_route`): PLAIN parses the model inputs and the label
  from the schema's raw features; TRANSFORMED parses them from Transform's
  output spec; RAW parses raw features, runs Transform's layer on the seed
  and on each neighbor, and takes the label from its outputs when Transform
  computes it. Neighbors carry the same features as their seed, prefixed.
  """

  def __init__(self, config, raw_spec, tft_output=None, route=PLAIN):
    self._config = config
    self._route = route
    keys = config.feature_keys
    self._tft_layer = None
    if route == PLAIN:
      seed = {k: _fixed(raw_spec[k], k, 'raw') for k in keys}
      label_spec = raw_spec
      neighbor = dict(seed)
    elif route == TRANSFORMED:
      spec = tft_output.transformed_feature_spec()
      seed = {k: _fixed(spec[k], k, TRANSFORMED) for k in keys}
      label_spec = spec
      neighbor = dict(seed)
    else:
      transform_raw = tft_output.raw_feature_spec()
      self._tft_layer = tft_output.transform_features_layer()
      seed = dict(transform_raw)
      needed = serving_raw_features(tft_output, keys)
      neighbor = {k: transform_raw[k] for k in needed}
      # The label: Transform's output if it computes one, else a raw feature.
      label_spec = ({} if config.label_key in
                    tft_output.transformed_feature_spec() else
                    {**raw_spec, **transform_raw})
    self._label_parsed = config.label_key in label_spec
    if not self._label_parsed and (route != RAW or label_spec):
      raise ValueError(
          f'label {config.label_key!r} is not a feature of the {route} '
          f'examples, which have {sorted(label_spec)}; set '
          "custom_config['label_key'] to one of them")
    if self._label_parsed:
      if label_spec[config.label_key].dtype == tf.string:
        raise _label_type_error(config.label_key, tf.string)
      # Unlabeled examples (e.g. GraphAugmentation's seeds) leave it out.
      spec = label_spec[config.label_key]
      seed[config.label_key] = _filled(tf.io.FixedLenFeature(
          [1], spec.dtype), MISSING_LABEL if spec.dtype.is_integer else
                                       float('nan'))
    self._seed_features = [k for k in seed if k != config.label_key]
    self._neighbor_features = list(neighbor)
    self.parse_spec = dict(seed)
    if config.graph:
      for i in range(config.graph['max_neighbors']):
        for name, spec in neighbor.items():
          self.parse_spec[f'{NBR_PREFIX}{i}_{name}'] = _filled(spec, 0)
        self.parse_spec[f'{NBR_PREFIX}{i}{NBR_WEIGHT_SUFFIX}'] = (
            tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]))

  def _model_features(self, parsed):
    """(model inputs, Transform's outputs or None) of one example set."""
    if self._tft_layer is None:
      return {k: parsed[k] for k in self._config.feature_keys}, None
    transformed = self._tft_layer(parsed)
    return {k: _as_dense_input(transformed[k], k)
            for k in self._config.feature_keys}, transformed

  def _label_and_weight(self, parsed, transformed):
    key = self._config.label_key
    if self._label_parsed:
      label = parsed[key]
    else:
      label = _as_dense_input(transformed[key], key)
    if label.dtype.is_integer:
      weight = tf.cast(label != MISSING_LABEL, tf.float32)
      return tf.maximum(label, 0), weight  # any class; its loss has weight 0
    if label.dtype.is_floating:
      finite = tf.math.is_finite(label)
      return (tf.where(finite, label, tf.zeros_like(label)),
              tf.cast(finite, tf.float32))
    raise _label_type_error(key, label.dtype)

  def _to_model_input(self, parsed):
    config = self._config
    features, transformed = self._model_features(
        {k: parsed[k] for k in self._seed_features})
    label, weight = self._label_and_weight(parsed, transformed)
    if config.graph:
      for i in range(config.graph['max_neighbors']):
        neighbor, _ = self._model_features(
            {k: parsed[f'{NBR_PREFIX}{i}_{k}'] for k in self._neighbor_features})
        for key, value in neighbor.items():
          features[f'{NBR_PREFIX}{i}_{key}'] = value
        features[f'{NBR_PREFIX}{i}{NBR_WEIGHT_SUFFIX}'] = parsed[
            f'{NBR_PREFIX}{i}{NBR_WEIGHT_SUFFIX}']
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

  def model_input_specs(self, raw_spec, tft_output):
    """{model input: tf.TensorSpec (batch first)} for building the model."""
    spec = raw_spec if self._route == PLAIN else (
        tft_output.transformed_feature_spec())
    return {k: tf.TensorSpec((None, *(tuple(spec[k].shape) or (1,))),
                             spec[k].dtype, name=k)
            for k in self._config.feature_keys}


def build_base_model(config, input_specs):
  """The base Keras model: {feature: tensor} -> the head's output."""
  if config.model_fn:
    return _import_function(config.model_fn)(input_specs, config)
  inputs = {k: tf.keras.Input(type_spec=spec, name=k)
            for k, spec in input_specs.items()}
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
  head = heads.Head('multiclass' if config.head == heads.AUTO else config.head)
  units = config.num_classes if head.kind == 'multiclass' else 1
  activation = (None if head.from_logits or not head.classification else
                'softmax' if head.kind == 'multiclass' else 'sigmoid')
  outputs = tf.keras.layers.Dense(units, activation=activation,
                                  name=head.serving_output)(x)
  return tf.keras.Model(inputs, outputs, name='base_model')


def wrap_with_nsl(base_model, config):
  """The model to train: the base model inside NSL's Keras wrappers.

  Graph and adversarial together nest the graph wrapper inside the
  adversarial one; neighbor features are then masked out of the attack, as
  are inputs that are not floats (ids, categories), which have no gradient.
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
    floats = [k for k, t in heads.model_inputs(base_model).items()
              if t.dtype.is_floating]
    perturbed = settings.pop('perturb_features') or floats
    mask = {k: 0.0 for k in config.feature_keys if k not in perturbed}
    if config.graph:
      for i in range(config.graph['max_neighbors']):
        mask[f'{NBR_PREFIX}{i}{NBR_WEIGHT_SUFFIX}'] = 0.0
        for k in config.feature_keys:
          mask[f'{NBR_PREFIX}{i}_{k}'] = 0.0
    for bound in ('clip_value_min', 'clip_value_max'):
      settings[bound] = per_feature(settings[bound], perturbed)
    logging.info('Adversarial regularization perturbs %s; left alone: %s',
                 perturbed, sorted(set(config.feature_keys) - set(perturbed)))
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


def _metrics(config, head):
  metrics = head.keras_metrics()
  if config.adversarial:
    # AdversarialRegularization applies `sample_weight_key` itself and does
    # not pass weighted_metrics on to the base model.
    return {'metrics': metrics}
  # Weighted, so unlabeled seeds (weight 0) do not count.
  return {'weighted_metrics': metrics}


def export_serving_model(base_model, raw_spec, config, path, tft_output=None):
  """Saves the base model with a tf.Example-parsing `serving_default`.

  With Transform, the signature parses the raw features that the model's
  inputs are computed from (optional ones stay optional), never the label,
  and applies Transform's layer: the contract of a plain TFX model.
  """
  head = heads.infer(base_model, config.head)
  if tft_output is None:
    spec = {k: raw_spec[k] for k in config.feature_keys}
    transform = None
  else:
    raw = tft_output.raw_feature_spec()
    spec = {k: raw[k] for k in serving_raw_features(tft_output,
                                                     config.feature_keys)}
    transform = tft_output.transform_features_layer()
    base_model.tft_layer = transform  # tracked, so it is saved with the model

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=constants.SERVING_INPUT)])
  def serve(serialized):
    features = tf.io.parse_example(serialized, spec)
    if transform is not None:
      features = transform(features)
    inputs = {k: _as_dense_input(features[k], k) for k in config.feature_keys}
    return {head.serving_output: base_model(inputs, training=False)}

  base_model.save(path, save_format='tf',
                  signatures={constants.SERVING_SIGNATURE: serve})


def _transform_output(fn_args):
  path = fn_args.transform_graph_path or getattr(
      fn_args, 'transform_output', None)
  if not path:
    return None
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  return tft.TFTransformOutput(path)


def _raw_spec(fn_args, tft_output):
  if fn_args.schema_path:
    return feature_spec_from_schema(fn_args.schema_path)[1]
  if tft_output is None:
    raise ValueError('the Trainer needs a schema (SchemaGen) or a '
                     'transform_graph (Transform)')
  return tft_output.raw_feature_spec()


def _inputs(fn_args, config):
  tft_output = _transform_output(fn_args)
  raw_spec = _raw_spec(fn_args, tft_output)
  route = examples_route(config, tft_output, fn_args.train_files)
  if route == PLAIN:
    missing = [k for k in [config.label_key, *config.feature_keys]
               if k not in raw_spec]
    if missing:
      raise ValueError(f'features {missing} are not in the schema, which has '
                       f'{sorted(raw_spec)}')
  return _Inputs(config, raw_spec, tft_output, route), raw_spec, tft_output


def add_nsl(base_model, fn_args, *, label_key, graph=None, adversarial=None,
            batch_size=32, examples=AUTO, seed=0):
  """NSL for your own `run_fn`: (model to fit, train data, eval data).

  `base_model` is your Keras model (dict inputs named as the features it
  reads); build and call this inside your `strategy.scope()` if you use one.
  A compiled `base_model` gives its optimizer, loss and metrics to the
  returned model; else compile that yourself. Fit the returned model as you
  would `base_model`, then export `base_model` with your own code: the NSL
  wrappers are training-only.

    model = build_keras_model(...)                     # yours, compiled
    fit_model, train, evaluation = add_nsl(
        model, fn_args, label_key='species', graph={'max_neighbors': 3},
        adversarial={'multiplier': 0.2, 'adv_step_size': 0.05})
    fit_model.fit(train, steps_per_epoch=fn_args.train_steps,
                  validation_data=evaluation,
                  validation_steps=fn_args.eval_steps)
    model.save(fn_args.serving_model_dir, signatures=...)  # yours

  The data are read from `fn_args` (train/eval files, transform graph,
  schema) by the rules of `examples_route`; `graph` and `adversarial` take
  the keys documented in `tfx_nsl.trainer_modules.config`. Elements are
  (features with neighbors, label, weight), or one dict with the label and
  weight inside for adversarial regularization; weight is 0 for unlabeled
  examples.
  """
  import_nsl()
  config = TrainerConfig.from_dict({
      'feature_keys': list(heads.model_inputs(base_model)),
      'label_key': label_key, 'graph': graph, 'adversarial': adversarial,
      'batch_size': batch_size, 'examples': examples, 'seed': seed})
  inputs, _, _ = _inputs(fn_args, config)
  model = wrap_with_nsl(base_model, config)
  if model is not base_model and base_model._is_compiled:  # pylint: disable=protected-access
    model.compile(**base_model._get_compile_args())  # pylint: disable=protected-access
  return (model,
          inputs.dataset(fn_args.train_files, True, batch_size),
          inputs.dataset(fn_args.eval_files, False, batch_size))


def _train(fn_args, model_fn=None):
  import_nsl()  # also checks that tf.keras is Keras 2
  config = TrainerConfig.from_dict(fn_args.custom_config or {})
  tf.keras.utils.set_random_seed(config.seed)
  inputs, raw_spec, tft_output = _inputs(fn_args, config)
  strategy = make_strategy(config)
  train = inputs.dataset(fn_args.train_files, True, config.batch_size)
  evaluation = inputs.dataset(fn_args.eval_files, False, config.batch_size)
  specs = inputs.model_input_specs(raw_spec, tft_output)
  with strategy.scope():
    base_model = (model_fn(specs, config) if model_fn
                  else build_base_model(config, specs))
    head = heads.infer(base_model, config.head)
    model = wrap_with_nsl(base_model, config)
    model.compile(optimizer=_optimizer(config), loss=head.keras_loss(),
                  **_metrics(config, head))
  steps_per_epoch = max(1, fn_args.train_steps // config.epochs)
  logging.info('Training %s (head %s) on %d replica(s) for %d epochs x %d '
               'steps; graph: %s; adversarial: %s', base_model.name,
               head.name, strategy.num_replicas_in_sync, config.epochs,
               steps_per_epoch, config.graph, config.adversarial)
  model.fit(
      train, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
      validation_data=evaluation, validation_steps=fn_args.eval_steps or None,
      callbacks=[tf.keras.callbacks.TensorBoard(
          log_dir=os.path.join(fn_args.model_run_dir, 'logs'))],
      verbose=2)
  export_serving_model(base_model, raw_spec, config, fn_args.serving_model_dir,
                       tft_output)
  logging.info('Exported the base model to %s', fn_args.serving_model_dir)


def run_fn(fn_args):
  """TFX Trainer entry point (model from `custom_config`)."""
  _train(fn_args)


def make_run_fn(model_fn):
  """A TFX `run_fn` training `model_fn`'s model, for a Trainer `module_file`:

    # my_trainer.py, passed as Trainer(module_file='my_trainer.py', ...)
    from tfx_nsl.trainer_modules.nsl_trainer import make_run_fn
    def model_fn(input_specs, config):  # {name: tf.TensorSpec}, TrainerConfig
      inputs = {k: tf.keras.Input(type_spec=s, name=k) for k, s in input_specs.items()}
      ...
    run_fn = make_run_fn(model_fn)

  TFX packages the module file and ships it to Kubeflow workers, so nothing
  needs to be in the image. The head is inferred from the model's output
  layer unless `custom_config['head']` says.
  """
  def nsl_run_fn(fn_args):
    _train(fn_args, model_fn)
  return nsl_run_fn
