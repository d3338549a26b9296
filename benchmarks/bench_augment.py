"""Benchmark: GraphAugmentation's Beam executor vs nsl.tools.pack_nbrs.

Same examples (id, a 128-d float feature, a label) and the same graph (each
node has `--degree` out-edges with random weights); each run is a fresh
subprocess whose wall time (start, imports, the run) and peak memory (RSS
summed over the process and its children, polled every 50 ms) are measured
from outside; "inner" is the timed call alone (the executor's Do, or
pack_nbrs). Reports medians of `--repeats` runs, side by side, and checks in
a separate process that both outputs hold the same neighbor counts.

  TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/bench_augment.py \
      [--num_examples 100000] [--repeats 3]

pack_nbrs reads one uncompressed TFRecord file; our executor reads the TFX
layout (gzip TFRecord shards under Split-train/), as a pipeline gives it.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

FEATURE_DIM = 128
MAX_NEIGHBORS = 3
INPUT_SHARDS = 4


def _make_data(root, num_examples, degree, seed):
  """Writes the TFX Examples layout, a plain TFRecord and a TSV graph."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  split_dir = os.path.join(root, 'examples', 'Split-train')
  os.makedirs(split_dir)
  gz = [tf.io.TFRecordWriter(
      os.path.join(split_dir, f'data-{i:05d}-of-{INPUT_SHARDS:05d}.gz'),
      tf.io.TFRecordOptions(compression_type='GZIP'))
        for i in range(INPUT_SHARDS)]
  with tf.io.TFRecordWriter(os.path.join(root, 'labeled.tfr')) as plain:
    for i in range(num_examples):
      ex = tf.train.Example()
      f = ex.features.feature
      f['id'].bytes_list.value.append(b'n%07d' % i)
      f['x'].float_list.value.extend(
          rng.random(FEATURE_DIM, dtype=np.float32))
      f['label'].int64_list.value.append(i % 10)
      record = ex.SerializeToString()
      plain.write(record)
      gz[i % INPUT_SHARDS].write(record)
  for w in gz:
    w.close()
  graph_dir = os.path.join(root, 'graph')
  os.makedirs(graph_dir)
  pyrng = random.Random(seed)
  with open(os.path.join(graph_dir, 'graph.tsv'), 'w') as f:
    for i in range(num_examples):
      for j in pyrng.sample(range(num_examples), degree + 1):
        if j != i:
          f.write(f'n{i:07d}\tn{j:07d}\t{pyrng.random():f}\n')


def _variant(executor, variant):
  """Variants of the executor, the measurements behind two of its choices:
  'nospill' shuffles the batches themselves on the DirectRunner too (as on
  other runners); 'beamsink' writes with Beam's own TFRecord sink (what
  WriteToTFRecord applies) instead of records.GzipTFRecordSink."""
  from tfx_nsl.components.graph_augmentation import records  # pylint: disable=g-import-not-at-top
  from apache_beam import coders  # pylint: disable=g-import-not-at-top
  from apache_beam.io import tfrecordio  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
  if 'nospill' in variant:
    executor.Executor._spill_dir = lambda self, pipeline: None
  if 'beamsink' in variant:
    records.GzipTFRecordSink = lambda prefix: tfrecordio._TFRecordSink(
        prefix, coders.BytesCoder(), '.gz', 0, None, CompressionTypes.AUTO)


def _run_ours(root, out, mode, beam_args=None):
  mode, _, variant = mode.partition('+')
  from tfx.dsl.components.base import base_beam_executor  # pylint: disable=g-import-not-at-top
  from tfx.types import artifact_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  import tfx_nsl  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_augmentation import executor  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_augmentation import records  # pylint: disable=g-import-not-at-top
  _variant(executor, variant)
  examples = standard_artifacts.Examples()
  examples.uri = os.path.join(root, 'examples')
  examples.split_names = artifact_utils.encode_split_names(['train'])
  # As ExampleGen leaves it (without importing TFX's components here: the
  # executor does not need them, so neither does its measured process).
  examples.set_string_custom_property(records.PAYLOAD_FORMAT_PROPERTY,
                                      'FORMAT_TF_EXAMPLE')
  graph = tfx_nsl.Graph()
  graph.uri = os.path.join(root, 'graph')
  output = standard_artifacts.Examples()
  output.uri = out
  args = beam_args or [f'--direct_running_mode={mode}',
                       f'--direct_num_workers={1 if mode == "in_memory" else 2}']
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=args, tmp_dir=os.path.join(out, '.tmp'))
  start = time.time()
  executor.Executor(context).Do(
      {'examples': [examples], 'graph': [graph]},
      {'augmented_examples': [output]},
      {'max_neighbors': MAX_NEIGHBORS, 'add_undirected_edges': False,
       'id_feature': 'id', 'seed_splits': ['train'], 'neighbor_splits': None,
       'neighbor_features': None, 'unlabeled_as_seeds': False})
  return time.time() - start, os.path.join(out, 'Split-train', '*.gz')


def _run_pack_nbrs(root, out):
  from tfx_nsl.nsl_compat import import_nsl  # pylint: disable=g-import-not-at-top
  nsl = import_nsl()
  os.makedirs(out)
  path = os.path.join(out, 'out.tfr')
  start = time.time()
  nsl.tools.pack_nbrs(os.path.join(root, 'labeled.tfr'), '',
                      os.path.join(root, 'graph', 'graph.tsv'), path,
                      max_nbrs=MAX_NEIGHBORS, id_feature_name='id')
  return time.time() - start, path


def _child(args):
  """One measured run; prints a JSON line with its inner time and output."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if args.child == 'pack_nbrs':
    inner, pattern = _run_pack_nbrs(args.data, args.out)
  else:
    inner, pattern = _run_ours(args.data, args.out, args.child)
  print(json.dumps({'inner_s': inner, 'pattern': pattern}))


def _digest(pattern):
  """(records, total neighbors) of an output; run in a process of its own,
  after the measured one, so that checking costs neither contender."""
  code = f"""
import json, tensorflow as tf
records = nbrs = 0
for path in tf.io.gfile.glob({pattern!r}):
  for raw in tf.data.TFRecordDataset(
      path, compression_type='GZIP' if path.endswith('.gz') else ''):
    records += 1
    nbrs += tf.train.Example.FromString(
        raw.numpy()).features.feature['NL_num_nbrs'].int64_list.value[0]
print(json.dumps([records, nbrs]))
"""
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout
  return tuple(json.loads(out.strip().splitlines()[-1]))


def _measure(cmd):
  """Runs `cmd`; returns (wall s, peak tree RSS bytes, bytes the tree passed
  to write calls (output and any spill; the last poll of each process),
  child's JSON)."""
  import psutil  # pylint: disable=g-import-not-at-top
  start = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  root = psutil.Process(proc.pid)
  peak = 0
  written = {}
  while proc.poll() is None:
    try:
      tree = [root] + root.children(recursive=True)
      rss = 0
      for p in tree:
        try:
          rss += p.memory_info().rss
          written[p.pid] = p.io_counters().write_chars
        except psutil.Error:
          pass
      peak = max(peak, rss)
    except psutil.Error:
      pass
    time.sleep(0.05)
  wall = time.time() - start
  out = proc.stdout.read()
  if proc.returncode:
    raise RuntimeError(f'{cmd} failed with {proc.returncode}')
  return wall, peak, sum(written.values()), json.loads(
      out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_examples', type=int, default=100_000)
  parser.add_argument('--degree', type=int, default=4,
                      help='out-edges per node (>= 3)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--runs', default='pack_nbrs,in_memory',
                      help='also: multi_processing (2 DirectRunner workers); '
                      'a mode may take variants: in_memory+nospill+beamsink')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--data', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--out', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args)
    return

  workdir = tempfile.mkdtemp(prefix='bench_augment_', dir=args.workdir)
  try:
    data = os.path.join(workdir, 'data')
    start = time.time()
    _make_data(data, args.num_examples, args.degree, args.seed)
    print(f'data: {args.num_examples} examples x {FEATURE_DIM}-d float + '
          f'label, {args.degree} out-edges each, max_neighbors '
          f'{MAX_NEIGHBORS} (generated in {time.time() - start:.0f} s)',
          flush=True)
    runs = args.runs.split(',')
    results = {run: [] for run in runs}
    for repeat in range(args.repeats):
      for run in runs:  # Interleaved, so drift hits every contender alike.
        out = os.path.join(workdir, f'out-{run}-{repeat}')
        cmd = [sys.executable, os.path.abspath(__file__), '--child', run,
               '--data', data, '--out', out]
        wall, peak, written, info = _measure(cmd)
        info['records'], info['nbrs'] = _digest(info['pattern'])
        shutil.rmtree(out, ignore_errors=True)
        results[run].append((wall, info['inner_s'], peak, info, written))
        print(f'  {run:<17} run {repeat + 1}: wall {wall:6.1f} s, inner '
              f'{info["inner_s"]:6.1f} s, peak RSS {peak / 2**20:6.0f} MiB, '
              f'written {written / 2**20:5.0f} MiB, '
              f'{info["records"]} records, {info["nbrs"]} neighbors',
              flush=True)
    digests = {(r[3]['records'], r[3]['nbrs'])
               for rows in results.values() for r in rows}
    print(f'outputs agree (records, neighbors): {digests}'
          if len(digests) == 1 else f'OUTPUTS DIFFER: {digests}')
    print(f'\nmedians of {args.repeats} ({os.cpu_count()} cores):')
    print(f'  {"run":<17} {"wall s":>8} {"inner s":>8} {"examples/s":>11} '
          f'{"peak RSS MiB":>13} {"written MiB":>12}   (examples/s: over '
          'inner)')
    for run, rows in results.items():
      wall = statistics.median(r[0] for r in rows)
      inner = statistics.median(r[1] for r in rows)
      peak = statistics.median(r[2] for r in rows)
      written = statistics.median(r[4] for r in rows)
      print(f'  {run:<17} {wall:8.1f} {inner:8.1f} '
            f'{args.num_examples / inner:11.0f} {peak / 2**20:13.0f} '
            f'{written / 2**20:12.0f}')
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
