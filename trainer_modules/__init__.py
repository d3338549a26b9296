"""TFX Trainer modules with NSL regularization; see `config` for `custom_config`.

`add_nsl` adds NSL to your own run_fn; `nsl_trainer.run_fn` (and
`nsl_trainer.make_run_fn(model_fn)` for a module_file) is a whole run_fn
configured by `custom_config`.
"""
import importlib

__all__ = ['add_nsl']


def __getattr__(name):
  # Lazy, so that importing `config` does not load TensorFlow.
  if name == 'add_nsl':
    return importlib.import_module(
        'tfx_nsl.trainer_modules.nsl_trainer').add_nsl
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
