"""Helper for tests that query a pushed digits model like a serving client."""
import numpy as np

from tfx_nsl import constants
from tfx_nsl.pipelines import datasets


def digits_predictions(pushed_dir, limit=None):
  """(probabilities, labels) of the eval digits, sent as raw tf.Examples
  (pixels only: no label, no id, no NL_ neighbor features)."""
  import tensorflow as tf
  rows = datasets.digits_splits()[constants.EVAL_SPLIT][:limit]
  serialized = [tf.train.Example(features=tf.train.Features(feature={
      datasets.DIGITS_FEATURE: tf.train.Feature(float_list=tf.train.FloatList(
          value=row[datasets.DIGITS_FEATURE]))})).SerializeToString()
                for row in rows]
  serving = tf.saved_model.load(pushed_dir).signatures[
      constants.SERVING_SIGNATURE]
  probabilities = serving(examples=tf.constant(serialized))[
      constants.SERVING_OUTPUT].numpy()
  assert probabilities.shape == (len(rows), datasets.DIGITS_NUM_CLASSES)
  return probabilities, np.array([row[constants.LABEL_FEATURE] for row in rows])
