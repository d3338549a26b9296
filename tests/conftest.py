"""Test setup: Keras 2 before TensorFlow loads (pytest imports this first)."""
import os

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
