"""TFX Trainer modules with NSL regularization; see `config` for `custom_config`."""
