"""NSL imports and trains on TF 2.16 with Keras 2."""
import numpy as np
import pytest

from tfx_nsl.nsl_compat import check_keras2, import_nsl


def test_tf_keras_is_keras2_in_this_process():
  import tensorflow as tf
  import tf_keras
  check_keras2()
  assert tf.keras.Model is tf_keras.Model
  assert tf_keras.__version__.startswith('2.')


def test_nsl_imports_and_estimator_is_explained():
  nsl = import_nsl()
  assert nsl.__version__ == '1.4.0'
  with pytest.raises(ImportError, match='tf.estimator'):
    _ = nsl.estimator.add_graph_regularization


def _tiny_data(n=256, d=4, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.rand(n, d).astype(np.float32)
  y = (x.sum(axis=1) > d / 2).astype(np.int64)
  return x, y


def _tiny_model(d):
  import tensorflow as tf
  inputs = tf.keras.Input(shape=(d,), name='x')
  hidden = tf.keras.layers.Dense(8, activation='relu')(inputs)
  outputs = tf.keras.layers.Dense(2, activation='softmax')(hidden)
  return tf.keras.Model(inputs, outputs)


def _fit(model, data, epochs=5):
  import tensorflow as tf
  model.compile(optimizer=tf.keras.optimizers.Adam(0.05),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                metrics=[tf.keras.metrics.SparseCategoricalAccuracy('accuracy')])
  dataset = tf.data.Dataset.from_tensor_slices(data).batch(32)
  return model.fit(dataset, epochs=epochs, verbose=0).history


def test_graph_regularization_trains():
  import tensorflow as tf
  tf.keras.utils.set_random_seed(0)
  nsl = import_nsl()
  x, y = _tiny_data()
  neighbor = x[np.random.RandomState(1).permutation(len(x))]
  data = ({'x': x, 'NL_nbr_0_x': neighbor,
           'NL_nbr_0_weight': np.ones((len(x), 1), np.float32)}, y)
  model = nsl.keras.GraphRegularization(
      _tiny_model(4), nsl.configs.make_graph_reg_config(
          max_neighbors=1, multiplier=0.5))
  history = _fit(model, data)
  assert history['loss'][-1] < history['loss'][0]
  assert history['scaled_graph_loss'][-1] > 0.0
  assert history['accuracy'][-1] > 0.8


def test_adversarial_regularization_trains():
  import tensorflow as tf
  tf.keras.utils.set_random_seed(0)
  nsl = import_nsl()
  x, y = _tiny_data()
  model = nsl.keras.AdversarialRegularization(
      _tiny_model(4), label_keys=['label'],
      adv_config=nsl.configs.make_adv_reg_config(multiplier=0.2,
                                                 adv_step_size=0.05))
  history = _fit(model, {'x': x, 'label': y})
  assert history['loss'][-1] < history['loss'][0]
  assert history['scaled_adversarial_loss'][-1] > 0.0
  assert history['accuracy'][-1] > 0.8
