"""Transform and Trainer module of the penguin pipeline (TFX's usual shape).

The raw CSV has missing values and string columns; Transform z-scores the
measurements (a missing one becomes 0, the mean), maps the strings to
vocabulary ids and computes the label from the `species` column.
"""
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio
from tfx_nsl.trainer_modules import add_nsl

NUMERIC = ['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm',
           'body_mass_g']
CATEGORICAL = ['island', 'sex']
TARGET = 'species'
LABEL = 'species_xf'
NUM_CLASSES = 3


def xf(name):
  return f'{name}_xf'


def _dense(x, default):
  """A [batch] tensor of an optional feature, `default` where missing."""
  if not isinstance(x, tf.sparse.SparseTensor):
    return tf.reshape(x, [-1])
  return tf.sparse.to_dense(
      tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]),
      default)[:, 0]


def preprocessing_fn(inputs):
  outputs = {}
  for name in NUMERIC:
    outputs[xf(name)] = _dense(
        tft.scale_to_z_score(tf.cast(inputs[name], tf.float32)), 0.0)
  for name in CATEGORICAL:
    outputs[xf(name)] = tft.compute_and_apply_vocabulary(
        _dense(inputs[name], ''), num_oov_buckets=1, vocab_filename=name)
  outputs[LABEL] = tft.compute_and_apply_vocabulary(
      _dense(inputs[TARGET], ''), vocab_filename=TARGET)
  return outputs


def _input_fn(file_pattern, data_accessor, tft_output, batch_size=32):
  return data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL),
      tft_output.transformed_metadata.schema).repeat()


def _build_keras_model(tf_transform_output):
  inputs = {xf(n): tf.keras.Input(shape=(1,), name=xf(n)) for n in NUMERIC}
  encoded = list(inputs.values())
  for name in CATEGORICAL:
    inputs[xf(name)] = tf.keras.Input(shape=(1,), name=xf(name),
                                      dtype=tf.int64)
    size = tf_transform_output.vocabulary_size_by_name(name) + 1  # + OOV
    encoded.append(tf.keras.layers.CategoryEncoding(
        size, output_mode='one_hot')(inputs[xf(name)]))
  x = tf.keras.layers.Concatenate()(encoded)
  for _ in range(2):
    x = tf.keras.layers.Dense(16, activation='relu')(x)
  outputs = tf.keras.layers.Dense(NUM_CLASSES, name='logits')(x)
  model = tf.keras.Model(inputs, outputs)
  model.compile(
      optimizer=tf.keras.optimizers.Adam(0.01),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
  return model


def _signatures(model, tf_transform_output):
  """serving_default: raw tf.Examples (no label) -> logits; and
  transform_features, which TFMA uses to find the transformed label."""
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  raw_spec.pop(TARGET)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name='examples')])
  def serve(serialized):
    features = model.tft_layer(tf.io.parse_example(serialized, raw_spec))
    return {'logits': model({k: features[k] for k in model.input_names})}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name='examples')])
  def transform_features(serialized):
    return model.tft_layer(tf.io.parse_example(
        serialized, tf_transform_output.raw_feature_spec()))

  return {'serving_default': serve, 'transform_features': transform_features}


def run_fn(fn_args: tfx.components.FnArgs):
  tf.keras.utils.set_random_seed(0)
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  model = _build_keras_model(tft_output)
  fit_model, train, evaluation = add_nsl(
      model, fn_args, label_key=LABEL, **fn_args.custom_config)
  fit_model.fit(train, steps_per_epoch=fn_args.train_steps,
            validation_data=evaluation, validation_steps=fn_args.eval_steps,
            verbose=2)
  model.save(fn_args.serving_model_dir, save_format='tf',
             signatures=_signatures(model, tft_output))
