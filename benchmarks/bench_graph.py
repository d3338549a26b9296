"""GraphBuilder benchmark (issue 3, item 6): side by side, medians of 3.

  TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/bench_graph.py [--quick]

Five benchmarks (--only), each contender in a fresh subprocess, contenders
interleaved within each repeat so that machine noise hits all of them alike:

  exact  N x d, top-k: the GraphBuilder executor (Beam DirectRunner,
         in_memory and multi_processing with 2 workers) against single-process
         numpy floors doing the same math on an in-memory array, written here
         independently of graph_core; plus a read-only Beam pipeline
         (TFRecords -> validated corpus) to show what reading costs.
  nsl    the executor against nsl.tools.build_graph_from_config brute force
         (lsh_splits=0), same threshold graph (max_neighbors=None); the edge
         sets are compared.
  lsh    the executor in an approximate mode (--approx-mode: 'partition',
         the default, or 'lsh') on 1M x 64; recall@k checked here against
         exact numpy top-k on a sample of nodes.
  nsl-lsh  nsl.tools.build_graph_from_config in LSH mode (--nsl-lsh-splits,
         --nsl-lsh-rounds) against the executor in the modes --nsl-lsh-modes,
         all threshold graphs (max_neighbors=None); recall of each against
         the exact threshold graph, computed here.
  partition-kernel  partition mode's scoring kernel alone, faiss's against
         the former numpy one, on the same groups (the before/after of
         scoring with faiss), in this process.
  kmeans  partition mode's k-means alone (graph_core.partition_centroids)
         on the lsh benchmark's data, for each --kmeans-schedules schedule
         and --kmeans-seeds seeds: its time and the recall@k that 1 to 6
         probes give a node sample (graph_core.recall_by_probes), in this
         process.
  faiss-sweep  builds each faiss index of the lsh benchmark once and prints
         recall@k on its node sample for each --ivf-nprobe-sweep and
         --hnsw-ef-search-sweep value: the pre-run that picks --ivf-nprobe and
         --hnsw-ef-search (the smallest that matches our recall).

Contenders a user could pick instead of GraphBuilder, all benchmark-only
(faiss-cpu, imported only in their own subprocess): in exact, kernel_exact
(graph_core.exact_edges alone, in-process) and faiss_exact (IndexFlatIP);
in lsh, faiss_ivf (IndexIVFFlat) and faiss_hnsw (IndexHNSWFlat). Each faiss
contender L2-normalizes, builds its index (timed), asks every node for its
k + 1 nearest by inner product (cosine) and drops the node itself, on
--faiss-threads OpenMP threads.

Data: a mixture of many Gaussian clusters (about 100 points a cluster, each
cluster with its own spread), so nearest neighbours are meaningful. Writing
the Examples artifacts is timed separately and is not part of any contender.

Wall time is the timed section inside the subprocess (process start and
imports, ~5 s, are reported apart). Peak memory is the largest sum of RSS over
the subprocess and all its descendants (Beam workers included), polled every
50 ms with psutil; RSS sums count shared library pages once per process.
Peak disk is the largest total, polled every 0.5 s, of the files under the
run's output, its Beam temporary folder and a private TMPDIR: the output
plus whatever the run spills (the corpus GraphBuilder stores while it runs);
the output alone is reported beside it.
Results go to stdout and to <work-dir>/results.json.
"""
import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)


# --- data ---------------------------------------------------------------------


def clustered(num, dim, seed, points_per_cluster=100):
  """Gaussian clusters with per-cluster spread; float32 [num, dim]."""
  rng = np.random.RandomState(seed)
  num_clusters = max(1, num // points_per_cluster)
  centers = rng.standard_normal((num_clusters, dim)).astype(np.float32)
  spread = rng.uniform(0.25, 0.6, num_clusters).astype(np.float32)
  assignment = rng.randint(num_clusters, size=num)
  out = np.empty((num, dim), np.float32)
  for start in range(0, num, 100_000):
    a = assignment[start:start + 100_000]
    noise = rng.standard_normal((len(a), dim)).astype(np.float32)
    out[start:start + len(a)] = centers[a] + spread[a, None] * noise
  return out


def node_id(i):
  return f'n{i:07d}'


def _write_shard(args):
  path, npy, start, end, gzip = args
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vectors = np.load(npy, mmap_mode='r')
  options = tf.io.TFRecordOptions(compression_type='GZIP' if gzip else None)
  example = tf.train.Example()
  feature = example.features.feature
  with tf.io.TFRecordWriter(path, options) as writer:
    for i in range(start, end):
      feature['id'].bytes_list.value[:] = [node_id(i).encode()]
      feature['emb'].float_list.value[:] = vectors[i].tolist()
      writer.write(example.SerializeToString())


def write_dataset(root, num, dim, seed, shards):
  """<root>/data.npy and an Examples artifact folder <root>/examples with
  Split-train/data-*.gz; reused when present (same size and seed). Returns
  seconds spent."""
  done = os.path.join(root, 'DONE')
  if os.path.exists(done):
    with open(done) as f:
      info = json.load(f)
    if (info['num'], info['dim'], info['seed']) == (num, dim, seed):
      return info
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(os.path.join(root, 'examples', 'Split-train'))
  start = time.time()
  vectors = clustered(num, dim, seed)
  npy = os.path.join(root, 'data.npy')
  np.save(npy, vectors)
  generate = time.time() - start
  bounds = np.linspace(0, num, shards + 1).astype(int)
  jobs = [(os.path.join(root, 'examples', 'Split-train',
                        f'data-{s:05d}-of-{shards:05d}.gz'), npy, int(b),
           int(e), True) for s, (b, e) in enumerate(zip(bounds[:-1],
                                                          bounds[1:]))]
  start = time.time()
  with multiprocessing.get_context('spawn').Pool(2) as pool:
    pool.map(_write_shard, jobs)
  info = {'generate_s': generate, 'write_tfrecords_s': time.time() - start,
          'tfrecord_bytes': sum(os.path.getsize(j[0]) for j in jobs),
          'num': num, 'dim': dim, 'seed': seed}
  with open(done, 'w') as f:
    json.dump(info, f)
  return info


def write_plain_tfrecord(root, name):
  """One uncompressed TFRecord of the same examples (NSL's input)."""
  path = os.path.join(root, name)
  if not os.path.exists(path):
    npy = os.path.join(root, 'data.npy')
    num = len(np.load(npy, mmap_mode='r'))
    _write_shard((path + '.tmp', npy, 0, num, False))
    os.rename(path + '.tmp', path)
  return path


# --- contenders (each runs in its own subprocess) -----------------------------


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def floor_argpartition(spec):
  """Blocked matmul, argpartition top-k, threshold: the plain numpy floor."""
  x = np.load(spec['npy'])
  start = time.time()
  x = _normalize(x)
  n, k, threshold = len(x), spec['k'], spec['threshold']
  block = max(1, (1 << 25) // n)
  src, tgt, weight = [], [], []
  for b in range(0, n, block):
    rows = np.arange(b, min(n, b + block))
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    values = np.take_along_axis(scores, top, axis=1)
    keep = values >= threshold
    src.append(np.repeat(rows, k).reshape(-1, k)[keep])
    tgt.append(top[keep])
    weight.append(values[keep])
  seconds = time.time() - start
  edges = np.concatenate(src), np.concatenate(tgt), np.concatenate(weight)
  np.savez(spec['edges_out'], *edges)
  return {'seconds': seconds, 'edges': int(len(edges[0]))}


def floor_pruned(spec):
  """Same math, selection as graph_core does it (independent code): a per-row
  lower bound of the k-th score from a column sample, one comparison pass,
  then only the survivors are sorted."""
  x = np.load(spec['npy'])
  start = time.time()
  x = _normalize(x)
  n, k, threshold = len(x), spec['k'], spec['threshold']
  block = max(1, (1 << 25) // n)
  src, tgt, weight = [], [], []
  for b in range(0, n, block):
    rows = np.arange(b, min(n, b + block))
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    sample = scores[:, ::max(1, n // 4096)]
    bound = np.partition(sample, sample.shape[1] - k, axis=1)[:, -k]
    r, c = np.nonzero(scores >= np.maximum(bound, threshold)[:, None])
    w = scores[r, c]
    order = np.lexsort((c, -w, r))
    r, c, w = r[order], c[order], w[order]
    first = np.searchsorted(r, r)
    keep = np.arange(len(r)) - first < k
    src.append(rows[r[keep]])
    tgt.append(c[keep])
    weight.append(w[keep])
  seconds = time.time() - start
  return {'seconds': seconds, 'edges': int(sum(len(s) for s in src))}


def kernel_exact(spec):
  """graph_core.exact_edges alone, in this process: the kernel the exact
  executor runs per block, on the whole corpus at once."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  # By path: the package's __init__ would import TFX, which the kernel
  # does not need (nor its memory).
  loader = importlib.util.spec_from_file_location('graph_core', os.path.join(
      _REPO, 'components', 'graph_builder', 'graph_core.py'))
  graph_core = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(graph_core)
  x = np.load(spec['npy'])
  start = time.time()
  vectors, _ = graph_core.prepare_vectors(x, graph_core.COSINE)
  prepared = time.time()
  edges = graph_core.exact_edges(np.arange(len(vectors)), vectors, spec['k'],
                                 spec['threshold'])
  seconds = time.time() - prepared
  np.savez(spec['edges_out'], *edges)
  return {'seconds': seconds, 'prepare_s': prepared - start,
          'edges': int(len(edges.src))}


def _faiss_edges(queries, scores, labels, k, threshold):
  """faiss answers for k + 1 neighbours of the nodes `queries` -> (src, tgt,
  weight) of each one's first k other nodes with score >= threshold (faiss
  may rank a tie above the node itself, or miss it)."""
  other = (labels != queries[:, None]) & (labels >= 0)
  keep = other & (np.cumsum(other, axis=1) <= k) & (scores >= threshold)
  return (np.broadcast_to(queries[:, None], labels.shape)[keep],
          labels[keep].astype(np.int64), scores[keep])


def _faiss_flat_index(faiss, x, knobs):
  del knobs
  index = faiss.IndexFlatIP(x.shape[1])
  index.add(x)
  return index


def _faiss_ivf_index(faiss, x, knobs):
  """IVF-Flat, inner product: spherical k-means (faiss's) on a sample of
  ivf_train_per_list points a list; nlist 0 means 4 sqrt(N)."""
  n, d = x.shape
  nlist = knobs['ivf_nlist'] or int(round(4 * np.sqrt(n)))
  index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist,
                             faiss.METRIC_INNER_PRODUCT)
  index.cp.niter = knobs['ivf_train_iterations']
  index.cp.spherical = True
  train = np.random.RandomState(0).choice(
      n, min(n, knobs['ivf_train_per_list'] * nlist), replace=False)
  index.train(x[np.sort(train)])
  index.add(x)
  index.nprobe = knobs['ivf_nprobe']
  return index


def _faiss_hnsw_index(faiss, x, knobs):
  index = faiss.IndexHNSWFlat(x.shape[1], knobs['hnsw_m'],
                              faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = knobs['hnsw_ef_construction']
  index.add(x)
  index.hnsw.efSearch = knobs['hnsw_ef_search']
  return index


def _faiss_knn(spec, build):
  """Index build and the k-NN of every node, both timed."""
  import faiss  # pylint: disable=g-import-not-at-top
  faiss.omp_set_num_threads(spec['faiss']['threads'])
  x = np.load(spec['npy'])
  start = time.time()
  x = _normalize(x)
  index = build(faiss, x, spec['faiss'])
  built = time.time()
  scores, labels = index.search(x, spec['k'] + 1)
  edges = _faiss_edges(np.arange(len(x)), scores, labels, spec['k'],
                       spec['threshold'])
  seconds = time.time() - start
  np.savez(spec['edges_out'], *edges)
  return {'seconds': seconds, 'build_s': built - start,
          'search_s': start + seconds - built, 'edges': int(len(edges[0])),
          'faiss_version': faiss.__version__}


def faiss_exact(spec):
  return _faiss_knn(spec, _faiss_flat_index)


def faiss_ivf(spec):
  return _faiss_knn(spec, _faiss_ivf_index)


def faiss_hnsw(spec):
  return _faiss_knn(spec, _faiss_hnsw_index)


def faiss_sweep(spec):
  """Each index built once; recall@k on the recall sample per search knob."""
  import faiss  # pylint: disable=g-import-not-at-top
  knobs = spec['faiss']
  faiss.omp_set_num_threads(knobs['threads'])
  x = _normalize(np.load(spec['npy']))
  sample = recall_sample(len(x), spec['recall_sample'])
  truth, _ = sample_truth(x, sample, spec['k'], spec['threshold'])
  start = time.time()
  out = {}
  for name, build, values, set_knob in (
      ('ivf', _faiss_ivf_index, knobs['ivf_nprobe_sweep'],
       lambda index, v: setattr(index, 'nprobe', v)),
      ('hnsw', _faiss_hnsw_index, knobs['hnsw_ef_search_sweep'],
       lambda index, v: setattr(index.hnsw, 'efSearch', v))):
    built = time.time()
    index = build(faiss, x, knobs)
    out[f'{name}_build_s'] = time.time() - built
    for value in values:
      set_knob(index, value)
      searched = time.time()
      scores, labels = index.search(x[sample], spec['k'] + 1)
      src, tgt, _ = _faiss_edges(sample, scores, labels, spec['k'],
                                 spec['threshold'])
      out[f'{name}_{value}'] = {
          'recall': float(np.isin(truth, src * len(x) + tgt).mean()),
          'sample_search_s': time.time() - searched}
      print(name, value, out[f'{name}_{value}'], flush=True)
    del index
  return dict(out, seconds=time.time() - start)


def _executor_run(spec, beam_args):
  from tfx.types import artifact_utils, standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import executor  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder.params import GraphBuilderParams  # pylint: disable=g-import-not-at-top
  from tfx_nsl.types import Graph  # pylint: disable=g-import-not-at-top
  examples = standard_artifacts.Examples()
  examples.uri = spec['examples']
  examples.split_names = artifact_utils.encode_split_names(['train'])
  graph = Graph()
  graph.uri = spec['graph_out']
  shutil.rmtree(graph.uri, ignore_errors=True)
  context = executor.Executor.Context(beam_pipeline_args=beam_args,
                                      tmp_dir=spec['graph_out'] + '-tmp')
  values = GraphBuilderParams(embedding_features=['emb'],
                              **spec['params']).to_exec_properties()
  start = time.time()
  executor.Executor(context).Do({'examples': [examples]}, {'graph': [graph]},
                                values)
  seconds = time.time() - start
  with open(os.path.join(graph.uri, 'stats.json')) as f:
    stats = json.load(f)
  return {'seconds': seconds, 'edges': stats['num_edges'],
          'nodes': stats['num_nodes'],
          'components': [stats.get(k) for k in (
              'isolated_nodes', 'connected_components', 'largest_component')],
          'estimated_recall_at_k': stats.get('estimated_recall_at_k'),
          'partition_probes': stats.get('partition_probes'),
          'counters': stats.get('counters')}


def beam_in_memory(spec):
  return _executor_run(spec, ['--direct_running_mode=in_memory'])


def beam_in_memory_contract(spec):
  """beam_in_memory with the components computed as past the budget: the
  contraction rounds' second job (connectivity.py), timed apart."""
  from tfx_nsl.components.graph_builder import executor  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import graph_core  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder.params import GraphBuilderParams  # pylint: disable=g-import-not-at-top
  # Bytes a node such that the graph's union-find passes the budget twice
  # over (so the contraction runs) and one of at most half its nodes, what
  # the rounds leave, still fits.
  budget = GraphBuilderParams(embedding_features=['emb']).memory_budget_bytes
  graph_core.COMPONENT_BYTES_PER_NODE = -(-2 * budget // spec['n'])
  contract, timed = executor.Executor._contract, []

  def timed_contract(self, *args):
    start = time.time()
    contract(self, *args)
    timed.append(time.time() - start)

  executor.Executor._contract = timed_contract
  result = beam_in_memory(spec)
  result['contract_s'] = timed[0]
  return result


def _numpy_block_edges(query_ids, queries, query_probes, members,
                       max_neighbors, threshold, threads=1, unit=True):
  """Partition mode's kernel before faiss (to 669274f): one numpy matrix
  product per probed partition, against the queries that probe it, on one
  BLAS thread (many small products)."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import graph_core  # pylint: disable=g-import-not-at-top
  del threads  # one worker here
  edges, pairs = [], 0
  with threadpoolctl.threadpool_limits(1, user_api='blas'):
    for partition in np.unique(query_probes[query_probes >= 0]):
      col_ids, columns, names = members(partition)
      rows = np.flatnonzero((query_probes == partition).any(axis=1))
      if len(col_ids) and len(rows):
        edges.append(graph_core.cross_edges(
            query_ids[rows], queries[rows], col_ids, columns, max_neighbors,
            threshold, names, unit=unit))
        pairs += len(rows) * len(col_ids)
  return graph_core.top_k_per_source(graph_core.concat_edges(edges),
                                     max_neighbors), pairs


def beam_in_memory_numpy(spec):
  """beam_in_memory with partition mode's former numpy kernel: the
  before/after of scoring with faiss, on the same data in the same run."""
  from tfx_nsl.components.graph_builder import graph_core  # pylint: disable=g-import-not-at-top
  graph_core.block_edges = _numpy_block_edges
  return beam_in_memory(spec)


def beam_multi_processing(spec):
  return _executor_run(spec, ['--direct_running_mode=multi_processing',
                              '--direct_num_workers=2'])


def beam_read_only(spec):
  """The executor's own read stages and node shards, nothing else."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from tfx.types import artifact_utils, standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import executor  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder.params import GraphBuilderParams  # pylint: disable=g-import-not-at-top
  examples = standard_artifacts.Examples()
  examples.uri = spec['examples']
  examples.split_names = artifact_utils.encode_split_names(['train'])
  params = GraphBuilderParams(embedding_features=['emb'], splits=['train'],
                              **spec['params'])
  start = time.time()
  ex = executor.Executor(executor.Executor.Context(
      beam_pipeline_args=['--direct_running_mode=in_memory']))
  store = tempfile.mkdtemp()
  with beam.Pipeline(options=PipelineOptions(
      ['--direct_running_mode=in_memory'])) as pipeline:
    ex._corpus(pipeline, examples, None, params, store)  # pylint: disable=protected-access
  shutil.rmtree(store)
  return {'seconds': time.time() - start}


def _nsl_build(spec, **lsh):
  from tfx_nsl.nsl_compat import import_nsl  # pylint: disable=g-import-not-at-top
  nsl = import_nsl()
  start = time.time()
  nsl.tools.build_graph_from_config(
      [spec['tfrecord']], spec['graph_out'], nsl.configs.GraphBuilderConfig(
          id_feature_name='id', embedding_feature_name='emb',
          similarity_threshold=spec['threshold'], **lsh))
  return {'seconds': time.time() - start}


def nsl_brute_force(spec):
  return _nsl_build(spec, lsh_splits=0)


def nsl_lsh(spec):
  return _nsl_build(spec, lsh_splits=spec['lsh_splits'],
                    lsh_rounds=spec['lsh_rounds'], random_seed=spec['seed'])


CONTENDERS = {f.__name__: f for f in (
    floor_argpartition, floor_pruned, kernel_exact, faiss_exact, faiss_ivf,
    faiss_hnsw, faiss_sweep, beam_in_memory, beam_in_memory_numpy,
    beam_in_memory_contract, beam_multi_processing,
    beam_read_only, nsl_brute_force, nsl_lsh)}


def child_main(name, spec_path, result_path):
  with open(spec_path) as f:
    spec = json.load(f)
  # 'contender:variant' runs `contender` (variants differ by their spec).
  result = CONTENDERS[name.split(':')[0]](spec)
  result['self_maxrss_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  result['children_maxrss_mb'] = resource.getrusage(
      resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  with open(result_path, 'w') as f:
    json.dump(result, f)


# --- the parent: run, measure, compare ---------------------------------------


def _bytes_under(paths):
  """Bytes of the files under each path (a file or a folder), now."""
  total = 0
  for path in paths:
    if os.path.isfile(path):
      total += os.path.getsize(path)
    for root, _, files in os.walk(path):
      for name in files:
        try:
          total += os.path.getsize(os.path.join(root, name))
        except OSError:  # Removed while walking.
          pass
  return total


def run_contender(name, spec, work, tag):
  import psutil  # pylint: disable=g-import-not-at-top
  spec_path = os.path.join(work, f'{tag}.spec.json')
  result_path = os.path.join(work, f'{tag}.result.json')
  with open(spec_path, 'w') as f:
    json.dump(spec, f)
  # Disk: everything the run has on disk at once, its output included: the
  # output, Beam's temporary folder and a private TMPDIR (spill).
  scratch = os.path.join(work, f'{tag}.tmp')
  folders = [scratch]
  if 'graph_out' in spec:
    folders += [spec['graph_out'], spec['graph_out'] + '-tmp']
  for folder in folders:  # A previous repeat's output is not this run's.
    if os.path.isfile(folder):
      os.remove(folder)
    shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(scratch)
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONWARNINGS='ignore', TMPDIR=scratch)
  log = open(os.path.join(work, f'{tag}.log'), 'w')
  start = time.time()
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--child', name, spec_path,
       result_path], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=_REPO)
  parent = psutil.Process(proc.pid)
  peak = peak_disk = 0
  tick = 0
  while proc.poll() is None:
    total = 0
    try:
      for p in [parent] + parent.children(recursive=True):
        try:
          total += p.memory_info().rss
        except psutil.Error:
          pass
    except psutil.Error:
      pass
    peak = max(peak, total)
    if tick % 10 == 0:  # Walking the folders costs more than the RSS poll.
      peak_disk = max(peak_disk, _bytes_under(folders))
    tick += 1
    time.sleep(0.05)
  wall = time.time() - start
  log.close()
  if proc.returncode:
    raise RuntimeError(f'{name} failed (rc {proc.returncode}); see '
                       f'{os.path.join(work, tag + ".log")}')
  with open(result_path) as f:
    result = json.load(f)
  output = _bytes_under(folders)
  shutil.rmtree(scratch, ignore_errors=True)
  result.update(peak_tree_rss_mb=peak / 2**20, process_wall_s=wall,
                peak_disk_mb=max(peak_disk, output) / 2**20,
                output_mb=output / 2**20)
  print(f'  {tag}: {result["seconds"]:.1f} s (process {wall:.1f} s), peak '
        f'RSS {peak / 2**20:.0f} MB, peak disk {result["peak_disk_mb"]:.0f} '
        f'MB (output {output / 2**20:.0f} MB)', flush=True)
  return result


def run_side_by_side(names, spec_for, work, repeats, label):
  results = {n: [] for n in names}
  for r in range(repeats):
    for name in names:
      results[name].append(run_contender(name, spec_for(name, r), work,
                                         f'{label}-{name}-{r}'))
  summary = {}
  for name, runs in results.items():
    summary[name] = {
        'median_s': statistics.median(x['seconds'] for x in runs),
        'runs_s': [round(x['seconds'], 2) for x in runs],
        'median_peak_mb': statistics.median(x['peak_tree_rss_mb']
                                            for x in runs),
        'median_process_wall_s': statistics.median(x['process_wall_s']
                                                   for x in runs),
        'median_peak_disk_mb': statistics.median(x['peak_disk_mb']
                                                 for x in runs),
        'output_mb': runs[-1]['output_mb'],
        'last': runs[-1],
    }
  return summary


def read_graph_indices(graph):
  """All edges of a graph folder (or of one TSV file, as NSL writes) as int
  arrays (ids are n<index>)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  files = ([os.path.join(graph, f) for f in sorted(os.listdir(graph))
            if f.endswith('.tsv')] if os.path.isdir(graph) else [graph])
  frames = [pd.read_csv(f, sep='\t', header=None, names=['s', 't', 'w'],
                        dtype={'s': str, 't': str}) for f in files]
  frame = pd.concat(frames) if frames else pd.DataFrame(columns=['s', 't', 'w'])
  return (frame['s'].str.slice(1).astype(np.int64).to_numpy(),
          frame['t'].str.slice(1).astype(np.int64).to_numpy(),
          frame['w'].to_numpy(np.float64))


def read_edges(work, label, name):
  """(src, tgt) of a contender's edges: the graph it wrote (executor, NSL),
  else the .npz it saved."""
  if name.startswith(('beam', 'nsl')):
    s, t, _ = read_graph_indices(os.path.join(work, f'{label}-graph-{name}'))
    return s, t
  edges = np.load(os.path.join(work, f'{label}-edges-{name}.npz'))
  return edges['arr_0'], edges['arr_1']


def recall_sample(num, size):
  """The fixed node sample of the recall checks (not the executor's)."""
  return np.sort(np.random.RandomState(12345).choice(num, size, replace=False))


def sample_truth(x, sample, k, threshold):
  """Exact top-k of the `sample` nodes in normalized `x` (ties: lower index)
  as keys src * N + tgt, and each one's k-th similarity."""
  keys, similarity_at_k = [], []
  for b in range(0, len(sample), 64):
    rows = sample[b:b + 64]
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    values = np.take_along_axis(scores, top, axis=1)
    similarity_at_k.extend(values[:, -1].tolist())
    keys.append((rows[:, None] * len(x) + top)[values >= threshold])
  return np.concatenate(keys), similarity_at_k


def threshold_truth(x, threshold):
  """Keys src * N + tgt of the exact threshold graph of normalized `x`:
  every ordered pair of two nodes with similarity >= threshold."""
  n = len(x)
  block = max(1, (1 << 25) // n)
  keys = []
  for b in range(0, n, block):
    rows = np.arange(b, min(n, b + block))
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    r, c = np.nonzero(scores >= threshold)
    keys.append(rows[r] * n + c)
  return np.concatenate(keys)


def faiss_knobs(args):
  return {'threads': args.faiss_threads, 'ivf_nlist': args.ivf_nlist,
          'ivf_nprobe': args.ivf_nprobe,
          'ivf_train_per_list': args.ivf_train_per_list,
          'ivf_train_iterations': args.ivf_train_iterations,
          'hnsw_m': args.hnsw_m,
          'hnsw_ef_construction': args.hnsw_ef_construction,
          'hnsw_ef_search': args.hnsw_ef_search,
          'ivf_nprobe_sweep': [int(v) for v in args.ivf_nprobe_sweep.split(',')],
          'hnsw_ef_search_sweep': [
              int(v) for v in args.hnsw_ef_search_sweep.split(',')]}


def bench_exact(args, work):
  root = os.path.join(work, f'data-{args.exact_n}x{args.exact_d}')
  data = write_dataset(root, args.exact_n, args.exact_d, 1, 4)
  print(f'exact: data {data}', flush=True)
  params = dict(similarity_threshold=args.exact_threshold,
                max_neighbors=args.k, undirected=False)

  def spec_for(name, r):
    return {'npy': os.path.join(root, 'data.npy'),
            'examples': os.path.join(root, 'examples'),
            'graph_out': os.path.join(work, f'exact-graph-{name}'),
            'edges_out': os.path.join(work, f'exact-edges-{name}.npz'),
            'k': args.k, 'threshold': args.exact_threshold, 'params': params,
            'faiss': faiss_knobs(args)}

  names = args.exact_contenders.split(',')
  if 'floor_argpartition' not in names:  # Its edges are the reference below.
    names.insert(0, 'floor_argpartition')
  summary = run_side_by_side(names, spec_for, work, args.repeats, 'exact')
  # The graphs equal the floor's, except where the k-th and (k+1)-th scores
  # of a row differ by float32 rounding (blocks of different shapes round
  # differently): such pairs are counted and their gap is reported.
  x = _normalize(np.load(os.path.join(root, 'data.npy')).astype(np.float64))

  def differ(reference, ours):
    """Edges in one set only, and the largest score gap between the pairs
    that stand in for each other (1.0 if their sources differ)."""
    gap = 0.0
    for (a, b), (c, d) in zip(sorted(reference - ours),
                              sorted(ours - reference)):
      gap = max(gap, abs(float(x[a] @ x[b]) - float(x[c] @ x[d])),
                1.0 if a != c else 0.0)
    return {'edges_only_here': len(ours - reference),
            'edges_only_there': len(reference - ours),
            'max_score_gap_of_differing_edges': gap}

  pairs = {}
  for name in ['floor_argpartition'] + names:
    if name not in pairs and name not in ('floor_pruned', 'beam_read_only'):
      s, t = read_edges(work, 'exact', name)
      pairs[name] = set(zip(s.tolist(), t.tolist()))
  checks = {}
  for name, ours in pairs.items():
    checks[name] = {'edges': len(ours)}
    for reference in ('floor_argpartition', 'faiss_exact'):
      if reference in pairs and reference != name:
        checks[name][f'vs_{reference}'] = differ(pairs[reference], ours)
  return {'data': data, 'params': params, 'faiss': faiss_knobs(args),
          'summary': summary, 'checks': checks}


def bench_nsl(args, work):
  root = os.path.join(work, f'data-{args.nsl_n}x{args.nsl_d}')
  data = write_dataset(root, args.nsl_n, args.nsl_d, 2, 1)
  tfrecord = write_plain_tfrecord(root, 'nsl-input.tfrecord')
  print(f'nsl: data {data}', flush=True)
  params = dict(similarity_threshold=args.nsl_threshold, max_neighbors=None)

  def spec_for(name, r):
    return {'examples': os.path.join(root, 'examples'), 'tfrecord': tfrecord,
            'graph_out': os.path.join(work, f'nsl-graph-{name}'),
            'threshold': args.nsl_threshold, 'params': params}

  names = ['nsl_brute_force', 'beam_in_memory', 'beam_multi_processing']
  summary = run_side_by_side(names, spec_for, work, args.repeats, 'nsl')
  with open(os.path.join(work, 'nsl-graph-nsl_brute_force')) as f:
    nsl_edges = {}
    for line in f:
      s, t, w = line.rstrip('\n').split('\t')
      nsl_edges[(int(s[1:]), int(t[1:]))] = float(w)
  checks = {'nsl_edges': len(nsl_edges)}
  for name in ('beam_in_memory', 'beam_multi_processing'):
    s, t, w = read_graph_indices(os.path.join(work, f'nsl-graph-{name}'))
    ours = dict(zip(zip(s.tolist(), t.tolist()), w.tolist()))
    same = ours.keys() == nsl_edges.keys()
    checks[name] = {
        'edges': len(ours), 'same_edge_set_as_nsl': same,
        'max_weight_diff': max((abs(ours[e] - nsl_edges[e]) for e in ours),
                               default=0.0) if same else None}
  return {'data': data, 'params': params, 'summary': summary,
          'checks': checks}


def bench_lsh(args, work):
  root = os.path.join(work, f'data-{args.lsh_n}x{args.lsh_d}')
  data = write_dataset(root, args.lsh_n, args.lsh_d, 3, 8)
  print(f'lsh: data {data}', flush=True)
  params = dict(similarity_threshold=args.lsh_threshold, max_neighbors=args.k,
                undirected=False)
  # The mode section as JSON-able data (specs travel to subprocesses).
  if args.approx_mode == 'lsh':
    params['mode'] = {'lsh': dict(
        splits=args.lsh_splits, rounds=args.lsh_rounds,
        max_bucket_size=args.lsh_max_bucket_size, recall_sample_size=1000)}
  else:
    params['mode'] = {'partition': dict(
        size=args.partition_size, probes=args.partition_probes,
        target_recall=args.partition_target_recall, recall_sample_size=1000)}

  def spec_for(name, r):
    return {'examples': os.path.join(root, 'examples'),
            'npy': os.path.join(root, 'data.npy'),
            'graph_out': os.path.join(work, f'lsh-graph-{name}'),
            'edges_out': os.path.join(work, f'lsh-edges-{name}.npz'),
            'k': args.k, 'threshold': args.lsh_threshold, 'n': args.lsh_n,
            'params': params, 'faiss': faiss_knobs(args)}

  names = args.lsh_modes.split(',')
  summary = run_side_by_side(names, spec_for, work, args.repeats, 'lsh')
  # Independent recall: exact numpy top-k of a sample of nodes (a seed other
  # than the executor's) against the edges of each contender's last run.
  x = _normalize(np.load(os.path.join(root, 'data.npy')))
  sample = recall_sample(len(x), args.recall_sample)
  truth, similarity_at_k = sample_truth(x, sample, args.k, args.lsh_threshold)
  checks = {'sample': len(sample),
            'mean_similarity_of_kth_neighbor': float(np.mean(similarity_at_k))}
  for name in names:
    s, t = read_edges(work, 'lsh', name)
    checks[name] = {'edges': len(s), 'recall_at_k_checked_here': float(
        np.isin(truth, s * len(x) + t).mean())}
  return {'data': data, 'params': params, 'faiss': faiss_knobs(args),
          'summary': summary, 'checks': checks}


def bench_faiss_sweep(args, work):
  root = os.path.join(work, f'data-{args.lsh_n}x{args.lsh_d}')
  data = write_dataset(root, args.lsh_n, args.lsh_d, 3, 8)
  spec = {'npy': os.path.join(root, 'data.npy'), 'k': args.k,
          'threshold': args.lsh_threshold, 'recall_sample': args.recall_sample,
          'faiss': faiss_knobs(args)}
  return {'data': data, 'faiss': spec['faiss'],
          'sweep': run_contender('faiss_sweep', spec, work, 'faiss-sweep')}


def bench_partition_kernel(args, work):
  """Partition mode's scoring kernel alone, in this process: faiss's
  (graph_core.block_edges) against the former numpy one
  (_numpy_block_edges) on the same groups of --kernel-n x --lsh-d data
  (partition defaults: size 500, 8 probes, groups of 8 partitions), each
  group's home pass as ScoreHome runs it, one thread each; the two
  interleaved group by group, --repeats times; the edges compared."""
  from tfx_nsl.components.graph_builder import graph_core  # pylint: disable=g-import-not-at-top
  from tfx_nsl.components.graph_builder import scoring  # pylint: disable=g-import-not-at-top
  x, _ = graph_core.prepare_vectors(clustered(args.kernel_n, args.lsh_d, 3),
                                    graph_core.COSINE)
  centroids = graph_core.partition_centroids(x, args.kernel_n // 500, 0)
  probes = graph_core.nearest_partitions(x, centroids, 8)
  group_of = graph_core.partition_groups(centroids, 0)
  members = {p: (m, x[m], None) for p in range(len(centroids))
             for m in [np.flatnonzero(probes[:, 0] == p)]}
  home = group_of[probes[:, 0]]
  kernels = {'numpy (before)': _numpy_block_edges,
             'faiss (after)': graph_core.block_edges}
  seconds = {name: [] for name in kernels}
  differ, edges, pairs = 0, 0, 0
  for _ in range(args.repeats):
    totals = dict.fromkeys(kernels, 0.0)
    for group in np.unique(home):
      nodes = np.flatnonzero(home == group)
      query_probes = scoring.in_group(probes[nodes], group_of, group)
      found = {}
      for name, kernel in kernels.items():
        start = time.perf_counter()
        found[name], scored = kernel(nodes, x[nodes], query_probes,
                                     members.get, args.k, -1.0, threads=1)
        totals[name] += time.perf_counter() - start
      pairs += scored
      a, b = (set(zip(e.src.tolist(), e.tgt.tolist())) for e in found.values())
      differ += len(a - b)
      edges += len(a)
    for name, total in totals.items():
      seconds[name].append(total)
  medians = {name: float(np.median(v)) for name, v in seconds.items()}
  return {'n': args.kernel_n, 'd': args.lsh_d, 'groups': int(len(np.unique(home))),
          'pairs_per_run': pairs // args.repeats, 'seconds': seconds,
          'median_s': medians,
          # Near ties at the k-th place: other summation orders round
          # scores apart by an ulp.
          'edges_per_run': edges // args.repeats,
          'edges_only_in_numpy_per_run': differ // args.repeats,
          'ratio_after_over_before': medians['faiss (after)'] /
                                     medians['numpy (before)']}


def _schedule(text):
  """'12x6+25x4' -> ((12, 6), (25, 4)): (points a centroid, Lloyd steps)."""
  return tuple(tuple(int(v) for v in phase.split('x'))
               for phase in text.split('+'))


def bench_kmeans(args, work):
  from tfx_nsl.components.graph_builder import graph_core  # pylint: disable=g-import-not-at-top
  root = os.path.join(work, f'data-{args.lsh_n}x{args.lsh_d}')
  write_dataset(root, args.lsh_n, args.lsh_d, 3, 8)
  x = _normalize(np.load(os.path.join(root, 'data.npy')))
  sample = recall_sample(len(x), args.recall_sample)
  keys, _ = sample_truth(x, sample, args.k, -1.0)
  exact = graph_core.Edges(keys // len(x), keys % len(x),
                           np.zeros(len(keys), np.float32))
  homes_of = lambda c: graph_core.nearest_partitions(x[exact.tgt], c, 1)[:, 0]
  out = {}
  for text in args.kmeans_schedules.split(';'):
    runs = []
    for seed in range(args.kmeans_seeds):
      start = time.perf_counter()
      centroids = graph_core.partition_centroids(
          x, len(x) // args.partition_size, seed, _schedule(text))
      seconds = time.perf_counter() - start
      recall, _ = graph_core.recall_by_probes(
          exact, sample, graph_core.nearest_partitions(x[sample], centroids, 6),
          homes_of(centroids))
      runs.append({'seed': seed, 'seconds': seconds,
                   'recall_by_probes': recall.round(4).tolist()})
      print(text, runs[-1], flush=True)
    out[text] = {'runs': runs,
                 'median_s': float(np.median([r['seconds'] for r in runs])),
                 'mean_recall_by_probes': np.mean(
                     [r['recall_by_probes'] for r in runs], axis=0).round(
                         4).tolist()}
  return out


def bench_nsl_lsh(args, work):
  root = os.path.join(work, f'data-{args.nsl_lsh_n}x{args.nsl_d}')
  data = write_dataset(root, args.nsl_lsh_n, args.nsl_d, 2, 1)
  tfrecord = write_plain_tfrecord(root, 'nsl-input.tfrecord')
  print(f'nsl-lsh: data {data}', flush=True)
  params = dict(similarity_threshold=args.nsl_threshold, max_neighbors=None)
  # Our modes by a file-safe name: 'partition' -> beam_in_memory:partition.
  modes = {'beam_in_memory:' + re.sub(r'[^a-z0-9]+', '_', m.lower()).strip(
      '_'): m for m in args.nsl_lsh_modes.split(';')}

  def spec_for(name, r):
    return {'examples': os.path.join(root, 'examples'), 'tfrecord': tfrecord,
            'graph_out': os.path.join(work, f'nsl-lsh-graph-{name}'),
            'threshold': args.nsl_threshold, 'lsh_splits': args.nsl_lsh_splits,
            'lsh_rounds': args.nsl_lsh_rounds, 'seed': args.nsl_lsh_seed,
            'params': dict(params, mode=modes.get(name))}

  names = ['nsl_lsh'] + list(modes)
  summary = run_side_by_side(names, spec_for, work, args.repeats, 'nsl-lsh')
  x = _normalize(np.load(os.path.join(root, 'data.npy')))
  truth = threshold_truth(x, args.nsl_threshold)
  checks = {'exact_edges': len(truth)}
  for name in names:
    s, t = read_edges(work, 'nsl-lsh', name)
    found = s * len(x) + t
    checks[name] = {'edges': len(s),
                    'recall_vs_exact': float(np.isin(truth, found).mean()),
                    'edges_not_in_exact': int((~np.isin(found, truth)).sum())}
  return {'data': data, 'params': params, 'modes': modes,
          'nsl': {'lsh_splits': args.nsl_lsh_splits,
                  'lsh_rounds': args.nsl_lsh_rounds, 'seed': args.nsl_lsh_seed},
          'summary': summary, 'checks': checks}


def main():
  if len(sys.argv) > 1 and sys.argv[1] == '--child':
    sys.path.insert(0, _REPO)
    child_main(*sys.argv[2:5])
    return
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='small sizes, one repeat: a couple of minutes')
  parser.add_argument('--only', default='exact,nsl,lsh',
                      help='also: nsl-lsh, faiss-sweep, partition-kernel, '
                      'kmeans')
  parser.add_argument('--work-dir', default='/tmp/tfx_nsl_bench_graph')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--exact-n', type=int, default=100_000)
  parser.add_argument('--exact-d', type=int, default=128)
  parser.add_argument('--exact-threshold', type=float, default=-1.0)
  parser.add_argument('--nsl-n', type=int, default=20_000)
  parser.add_argument('--nsl-d', type=int, default=64)
  parser.add_argument('--nsl-threshold', type=float, default=0.9)
  parser.add_argument('--lsh-n', type=int, default=1_000_000)
  parser.add_argument('--kernel-n', type=int, default=200_000,
                      help='nodes of the partition-kernel benchmark')
  parser.add_argument('--lsh-d', type=int, default=64)
  parser.add_argument('--lsh-threshold', type=float, default=-1.0)
  parser.add_argument('--approx-mode', default='partition',
                      choices=['partition', 'lsh'])
  parser.add_argument('--partition-size', type=int, default=500)
  parser.add_argument('--partition-probes', type=int, default=None,
                      help='fixed probes (default: chosen for the target)')
  parser.add_argument('--partition-target-recall', type=float, default=0.95)
  parser.add_argument('--lsh-splits', type=int, default=10)
  parser.add_argument('--lsh-rounds', type=int, default=16)
  parser.add_argument('--lsh-max-bucket-size', type=int, default=2048)
  parser.add_argument('--exact-contenders',
                      default='floor_argpartition,floor_pruned,beam_in_memory',
                      help='also: beam_multi_processing, beam_read_only, '
                      'kernel_exact, faiss_exact')
  parser.add_argument('--lsh-modes', default='beam_in_memory',
                      help='also: beam_in_memory_numpy (the former numpy '
                      'kernel), beam_in_memory_contract (components by the '
                      'contraction rounds, as past the budget), '
                      'beam_multi_processing, faiss_ivf, faiss_hnsw')
  parser.add_argument('--recall-sample', type=int, default=1000)
  parser.add_argument('--faiss-threads', type=int, default=2,
                      help='faiss.omp_set_num_threads')
  parser.add_argument('--ivf-nlist', type=int, default=0,
                      help='faiss_ivf lists; 0: 4 sqrt(N)')
  parser.add_argument('--ivf-nprobe', type=int, default=1,
                      help='faiss_ivf lists searched a query (faiss-sweep, '
                      '1M x 64: the smallest at least our Partition() recall)')
  parser.add_argument('--ivf-train-per-list', type=int, default=40,
                      help='faiss_ivf k-means sample: points a list')
  parser.add_argument('--ivf-train-iterations', type=int, default=10,
                      help='faiss_ivf k-means iterations')
  parser.add_argument('--hnsw-m', type=int, default=32,
                      help='faiss_hnsw links a node')
  parser.add_argument('--hnsw-ef-construction', type=int, default=40,
                      help='faiss_hnsw candidate list while building')
  parser.add_argument('--hnsw-ef-search', type=int, default=64,
                      help='faiss_hnsw candidate list a query (chosen as '
                      '--ivf-nprobe)')
  parser.add_argument('--ivf-nprobe-sweep', default='2,4,8,12,16,24,32',
                      help='faiss-sweep: --ivf-nprobe values tried')
  parser.add_argument('--hnsw-ef-search-sweep', default='16,24,32,48,64,96',
                      help='faiss-sweep: --hnsw-ef-search values tried')
  parser.add_argument('--nsl-lsh-n', type=int, default=50_000,
                      help="nsl-lsh nodes (dimension: --nsl-d, threshold: "
                      "--nsl-threshold); NSL's docs measured LSH at 50,000, "
                      "and its Python loop over pairs grows with N^2")
  parser.add_argument('--nsl-lsh-splits', type=int, default=10,
                      help="NSL's lsh_splits")
  parser.add_argument('--nsl-lsh-rounds', type=int, default=18,
                      help="NSL's lsh_rounds (18 at 10 splits: >= 99.7%% "
                      "recall in NSL's docs)")
  parser.add_argument('--nsl-lsh-seed', type=int, default=0,
                      help="NSL's random_seed")
  parser.add_argument('--nsl-lsh-modes', default='partition;lsh',
                      help="our modes in nsl-lsh, ';'-separated: a mode name "
                      'or the JSON of a section, e.g. \'{"lsh": {"rounds": '
                      "16}}'")
  parser.add_argument('--kmeans-schedules',
                      default='100x10;12x6+25x4+50x3+100x3',
                      help="kmeans: ';'-separated schedules, each phases of "
                      "points a centroid x Lloyd steps joined by '+'")
  parser.add_argument('--kmeans-seeds', type=int, default=4)
  args = parser.parse_args()
  if args.quick:
    args.repeats = 1
    args.exact_n, args.nsl_n, args.lsh_n = 20_000, 3_000, 100_000
    args.nsl_lsh_n = 20_000
  work = os.path.join(args.work_dir, 'quick' if args.quick else 'full')
  os.makedirs(work, exist_ok=True)
  results = {'argv': sys.argv, 'cpus': os.cpu_count()}
  for name in args.only.split(','):
    start = time.time()
    results[name] = {'exact': bench_exact, 'nsl': bench_nsl, 'lsh': bench_lsh,
                     'nsl-lsh': bench_nsl_lsh,
                     'faiss-sweep': bench_faiss_sweep,
                     'partition-kernel': bench_partition_kernel,
                     'kmeans': bench_kmeans}[name](args, work)
    results[name]['bench_seconds'] = time.time() - start
    print(json.dumps({name: results[name]}, indent=1, default=str), flush=True)
    with open(os.path.join(work, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  main()
