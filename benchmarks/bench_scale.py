"""GraphBuilder at scale: one approximate graph over N x d embeddings on a
local Flink cluster (or the DirectRunner), with every process's peak memory
(`make bench-scale`; results: docs/benchmarks.md, "GraphBuilder at scale").

The data are bench_graph's clustered embeddings written as an Examples
artifact (reused when present). GraphBuilder runs with its defaults
(Partition(), memory_budget_mb 1024), max_neighbors --k, threshold -1,
directed (undirected=False, so the edges are exactly the top-k). Timed: the
executor's Do() in this process (the job's whole life: submission, workers,
teardown), not the data generation. Sampled every --interval seconds: the
resident memory of every process of the run (this driver, Flink's
JobManager and TaskManager JVMs, Beam's job server, the SDK worker
processes) and the bytes under the graph's output folder (its stored
batches, shards and groups: the run's disk spill). A peak between two
samples can be missed; the JVMs' heaps are capped by their configuration
(tfx_nsl/engines.py). Recall is the component's own estimate on 1,000
sampled nodes against their exact top-k.
"""
import argparse
import collections
import json
import os
import signal
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_graph  # noqa: E402  pylint: disable=g-import-not-at-top

_ROLES = (('TaskManagerRunner', 'flink taskmanager'),
          ('StandaloneSessionClusterEntrypoint', 'flink jobmanager'),
          ('JobServerDriver', 'beam job server'),
          ('tfx-nsl-beam-worker', 'sdk worker'),
          ('sdk_worker_main', 'sdk worker'))


def _role(process, driver):
  if process.pid == driver:
    return 'driver'
  try:
    line = ' '.join(process.cmdline())
  except (psutil.Error, OSError):
    return None
  for needle, role in _ROLES:
    if needle in line:
      return role
  return None


class Sampler(threading.Thread):
  """Peak RSS per process of this process's tree (by role) and peak bytes
  under a folder."""

  def __init__(self, folder, interval):
    super().__init__(daemon=True)
    self._folder = folder
    self._interval = interval
    self._done = threading.Event()
    self.peaks = {}  # pid -> (role, peak rss bytes)
    self.peak_total = 0
    self.peak_disk = 0

  def run(self):
    driver = psutil.Process()
    tick = 0
    while not self._done.is_set():
      total = 0
      # This process's tree only (the clusters it starts, their workers):
      # a CI or another cluster beside it must not count.
      try:
        tree = [driver] + driver.children(recursive=True)
      except psutil.Error:
        tree = [driver]
      for process in tree:
        role = _role(process, driver.pid)
        if role is None:
          continue
        try:
          rss = process.memory_info().rss
        except (psutil.Error, OSError):
          continue
        total += rss
        _, peak = self.peaks.get(process.pid, (role, 0))
        self.peaks[process.pid] = (role, max(peak, rss))
      self.peak_total = max(self.peak_total, total)
      if tick % 5 == 0:
        self.peak_disk = max(self.peak_disk,
                             bench_graph._bytes_under([self._folder]))
      tick += 1
      self._done.wait(self._interval)

  def stop(self):
    self._done.set()
    self.join()

  def by_role(self):
    roles = collections.defaultdict(list)
    for role, peak in self.peaks.values():
      roles[role].append(round(peak / 2**20))
    return {role: sorted(peaks, reverse=True) for role, peaks in roles.items()}


def _flink_bytes(engines):
  """Bytes Flink's tasks wrote to and read from other tasks (the shuffles
  and the hand-offs between unfused steps), summed over the last job."""
  url = f'http://{engines.HOST}:{engines.PORTS["flink"]["rest"]}'
  jobs = engines._http_json(f'{url}/jobs/overview')['jobs']  # pylint: disable=protected-access
  job = max(jobs, key=lambda j: j['start-time'])
  vertices = engines._http_json(f'{url}/jobs/{job["jid"]}')['vertices']  # pylint: disable=protected-access
  return {'written_mib': round(sum(v['metrics']['write-bytes']
                                   for v in vertices) / 2**20),
          'read_mib': round(sum(v['metrics']['read-bytes']
                                for v in vertices) / 2**20),
          'tasks': len(vertices)}


def kmeans_sweep(data_dir, settings, k):
  """Partition mode's k-means in this process on the benchmark's data.npy,
  for each `size,iterations,points_per_centroid`: the recall@k that 1 to
  64 probes give 1,000 sampled nodes against their exact top-k
  (graph_core.recall_by_probes: exact for partition mode's scoring), and
  the k-means seconds. Not the component (no Beam, no files)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import graph_core as g  # pylint: disable=g-import-not-at-top
  x, _ = g.prepare_vectors(np.load(os.path.join(data_dir, 'data.npy')),
                           g.COSINE)
  sample = np.sort(np.random.RandomState(1).choice(len(x), 1000,
                                                   replace=False))
  exact = g.exact_edges(sample, x, k, -1.0)
  rows = []
  for setting in settings:
    size, iterations, per = map(int, setting.split(','))
    start = time.time()
    num = len(x) // size
    points = x[np.sort(np.random.RandomState(0).choice(
        len(x), min(len(x), per * num), replace=False))]
    centroids = g.partition_centroids(points, num, 0,
                                      schedule=((per, iterations),))
    kmeans_s = time.time() - start
    recall, error = g.recall_by_probes(
        exact, sample, g.nearest_partitions(x[sample], centroids, 64),
        g.nearest_partitions(x[exact.tgt], centroids, 1)[:, 0])
    rows.append({'size': size, 'iterations': iterations,
                 'points_per_centroid': per, 'kmeans_s': round(kmeans_s, 1),
                 'recall_at_k_by_probes': {
                     p: [round(recall[p - 1], 4), round(error[p - 1], 4)]
                     for p in (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64)
                     if p <= len(recall)}})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--engine', default='flink',
                      choices=['flink', 'spark', 'direct'])
  parser.add_argument('--n', type=int, default=10_000_000)
  parser.add_argument('--d', type=int, default=64)
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--input-files', type=int, default=16)
  parser.add_argument('--mode', default='partition',
                      help="GraphBuilder mode: a name or a section's JSON")
  parser.add_argument('--interval', type=float, default=1.0)
  parser.add_argument('--work-dir', default='/tmp/tfx_nsl_bench_scale')
  parser.add_argument('--output', default=None, help='results JSON path')
  parser.add_argument('--kmeans-sweep', default='',
                      help='instead of the component: space-separated '
                      'size,iterations,points_per_centroid settings '
                      "of partition mode's kernels, run in this process")
  args = parser.parse_args()
  from tfx_nsl import engines  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  work = os.path.abspath(args.work_dir)
  os.makedirs(work, exist_ok=True)
  data_dir = os.path.join(work, f'data-{args.n}x{args.d}')
  start = time.time()
  data = bench_graph.write_dataset(data_dir, args.n, args.d, seed=0,
                                   shards=args.input_files)
  data['prepare_s'] = time.time() - start
  print('data', json.dumps(data), flush=True)
  if args.kmeans_sweep:
    rows = kmeans_sweep(data_dir, args.kmeans_sweep.split(), args.k)
    if args.output:
      with open(args.output, 'w') as f:
        json.dump({'data': data, 'sweep': rows}, f, indent=1)
    return
  spec = {'examples': os.path.join(data_dir, 'examples'),
          'graph_out': os.path.join(work, f'graph-{args.engine}'),
          'params': {'similarity_threshold': -1.0, 'max_neighbors': args.k,
                     'undirected': False, 'mode': args.mode}}
  root = engines.home()
  if args.engine == 'direct':
    beam_args = ['--direct_running_mode=multi_processing',
                 f'--direct_num_workers={engines.WORKERS}']
  else:
    engines.down(args.engine, root)
    engines.fetch(args.engine, root)
    engines.up(args.engine, root)
    beam_args = engines.beam_args(args.engine)
  sampler = Sampler(spec['graph_out'], args.interval)
  sampler.start()
  network = None
  try:
    result = bench_graph._executor_run(spec, beam_args)  # pylint: disable=protected-access
    if args.engine == 'flink':
      network = _flink_bytes(engines)
  finally:
    sampler.stop()
    if args.engine != 'direct':
      engines.down(args.engine, root)
  with open(os.path.join(spec['graph_out'], 'stats.json')) as f:
    stats = json.load(f)
  results = {
      'engine': args.engine, 'n': args.n, 'd': args.d, 'k': args.k,
      'mode': stats['config']['mode'],
      'memory_budget_mb': stats['config']['memory_budget_mb'],
      'do_seconds': result['seconds'], 'nodes': result['nodes'],
      'edges': result['edges'],
      'estimated_recall_at_k': result['estimated_recall_at_k'],
      'partition_probes': stats.get('partition_probes'),
      'calibration_recall_at_k': stats.get('calibration_recall_at_k'),
      'seconds_per_million_nodes': result['seconds'] / args.n * 1e6,
      'peak_rss_mib_by_role': sampler.by_role(),
      'peak_rss_mib_all_processes': round(sampler.peak_total / 2**20),
      'peak_disk_mib': round(sampler.peak_disk / 2**20),
      'flink_task_bytes': network,
      'counters': stats['counters'], 'data': data,
  }
  print(json.dumps(results, indent=1), flush=True)
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
