"""Runs the penguin pipeline, plain or with NSL, on one machine.

  python examples/penguin/run.py --output-root runs/penguin [--nsl]
"""
import argparse
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load_pipeline_module(variant):
  """examples/penguin/<variant>/pipeline.py as a module ('plain' or 'nsl')."""
  spec = importlib.util.spec_from_file_location(
      f'penguin_{variant}_pipeline', os.path.join(HERE, variant, 'pipeline.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run(output_root, variant, **kwargs):
  """Runs one variant; returns its serving folder (Pusher's destination)."""
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  from data import write_csv  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  data_root = os.path.join(output_root, 'data')
  write_csv(data_root)
  root = os.path.join(output_root, variant)
  serving = os.path.join(root, 'serving')
  pipeline = load_pipeline_module(variant).create_pipeline(
      pipeline_name=f'penguin-{variant}', pipeline_root=os.path.join(root, 'pipeline'),
      data_root=data_root, serving_model_dir=serving,
      metadata_path=os.path.join(root, 'metadata.db'), **kwargs)
  tfx.orchestration.LocalDagRunner().run(pipeline)
  return serving


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output-root', default='runs/penguin')
  parser.add_argument('--nsl', action='store_true',
                      help='the pipeline with NSL added (nsl/)')
  args = parser.parse_args()
  serving = run(args.output_root, 'nsl' if args.nsl else 'plain')
  pushed = sorted(os.listdir(serving)) if os.path.isdir(serving) else []
  print(f'pushed: {os.path.join(serving, pushed[-1])}' if pushed
        else 'not blessed: nothing pushed')


if __name__ == '__main__':
  main()
