"""Local Apache Flink and Apache Spark clusters for Beam's portable runner.

`python -m tfx_nsl.engines fetch|up|down|status|args [flink|spark]` (the
Makefile's `engines-fetch`, `flink-up`, `spark-up`, `engines-down`):

* fetch: Beam's job servers as Maven artifacts (`mvn dependency:copy-
  dependencies`) and the engines' own jars from PyPI's pyspark and
  apache-flink-libraries source archives, each file checked against the
  sha256 in `engines.lock`, into a git-ignored cache (`.engines/`).
* up: a Flink session cluster (JobManager + 2 TaskManagers) or a Spark
  standalone cluster (master + 2 workers), each a JVM of its own, plus
  Beam's job server for it; everything listens on 127.0.0.1 only.
* down: stops every process it started, by pid (the process group, so that
  Spark executors and Beam SDK workers go too).

Pipelines reach a cluster with `beam_args(engine)` alone: Beam's
PortableRunner, the engine's job endpoint, and SDK workers as processes
(`--environment_type=PROCESS`) that run `tfx-nsl-beam-worker` from this
environment.

Versions (docs/engines.md says why): Beam 2.59.0 runners; Maven Central
serves Beam's Flink runner for Flink 1.16 only (not 1.17/1.18) and neither
job-server uber jar, so the job servers run from their modules'
classpaths; it lacks `beam-runners-java-job-service` 2.59.0, so that one
module is 2.57.0 (its API is unchanged between the two). Spark 3.2.2 is the
release Beam 2.59's Spark 3 runner is built against.
"""
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ENGINES = ('flink', 'spark')
BEAM_VERSION = '2.59.0'
JOB_SERVICE_VERSION = '2.57.0'
FLINK_VERSION = '1.16.3'
FLINK_RUNNER = 'beam-runners-flink-1.16'
SPARK_VERSION = '3.2.2'
SPARK_RUNNER = 'beam-runners-spark-3'
HOST = '127.0.0.1'
WORKERS = 2  # TaskManagers / Spark workers, one slot or core each

# Ports, away from the engines' defaults so that other local clusters coexist;
# TFX_NSL_PORT_OFFSET shifts them all, for a second cluster of ours (e.g. the
# tests beside a long benchmark).
def _port_offset() -> int:
  value = os.environ.get('TFX_NSL_PORT_OFFSET', '0')
  if not (value.isdigit() and int(value) % 1000 == 0 and int(value) <= 40000):
    raise ValueError(f'TFX_NSL_PORT_OFFSET={value!r}: give a multiple of 1000 '
                     "up to 40000 (smaller steps collide with the other "
                     "engine's ports)")
  return int(value)


_PORT_OFFSET = _port_offset()
PORTS = {engine: {name: port + _PORT_OFFSET for name, port in ports.items()}
         for engine, ports in {
             'flink': {'rest': 18081, 'rpc': 16123, 'blob': 16124,
                       'job': 18099, 'artifact': 18098, 'expansion': 18097},
             'spark': {'master': 17077, 'web': 18080,
                       'job': 18199, 'artifact': 18198, 'expansion': 18197},
         }.items()}

# The engines' jars inside PyPI source archives (name, member prefix).
_DISTRIBUTIONS = {
    'flink': (f'apache-flink-libraries=={FLINK_VERSION}',
              f'apache-flink-libraries-{FLINK_VERSION}.tar.gz',
              f'apache-flink-libraries-{FLINK_VERSION}/deps/', ('lib/', 'bin/')),
    'spark': (f'pyspark=={SPARK_VERSION}', f'pyspark-{SPARK_VERSION}.tar.gz',
              f'pyspark-{SPARK_VERSION}/deps/', ('jars/',)),
}
_RUNNERS = {'flink': FLINK_RUNNER, 'spark': SPARK_RUNNER}
_JOB_SERVER_MAIN = {
    'flink': 'org.apache.beam.runners.flink.FlinkJobServerDriver',
    'spark': 'org.apache.beam.runners.spark.SparkJobServerDriver',
}
# Java 17 closes JDK internals that Flink 1.16 and Spark 3.2 reach into.
_JAVA17_OPTS = [
    '--add-exports=java.base/sun.net.util=ALL-UNNAMED',
    '--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED',
    '--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED',
] + [f'--add-opens=java.base/{p}=ALL-UNNAMED' for p in (
    'java.lang', 'java.lang.invoke', 'java.lang.reflect', 'java.io',
    'java.net', 'java.nio', 'java.text', 'java.time', 'java.util',
    'java.util.concurrent', 'java.util.concurrent.atomic', 'sun.nio.ch',
    'sun.nio.cs', 'sun.security.action', 'sun.util.calendar')]
# Pipeline steps that run on the DirectRunner on an engine, and why
# (docs/engines.md); `tfx-nsl run` prints the reason.
DIRECT_FALLBACK: Dict[str, Dict[str, str]] = {'flink': {}, 'spark': {}}
# Appended to a component's Beam args to move it to the DirectRunner.
FALLBACK_ARGS = ('--runner=DirectRunner', '--direct_running_mode=in_memory',
                 '--direct_num_workers=1')
LOCK_FILE = Path(__file__).with_name('engines.lock')
WORKER_COMMAND = 'tfx-nsl-beam-worker'
_TIMEOUT_S = 120
_WORKER_CACHE_MS = 60000


class EngineError(RuntimeError):
  """A cluster that cannot be fetched, started or reached; the message names
  the file or address and the make target that fixes it."""


def home(path: Optional[str] = None) -> Path:
  return Path(path or os.environ.get('TFX_NSL_ENGINES_HOME') or
              '.engines').resolve()


def job_endpoint(engine: str) -> str:
  return f'{HOST}:{PORTS[engine]["job"]}'


def worker_command() -> str:
  """The SDK worker boot of this environment (a console script)."""
  path = Path(sys.executable).with_name(WORKER_COMMAND)
  if not path.exists():
    raise EngineError(f'{path} is missing: install tfx-nsl in this '
                      'environment (make install).')
  return str(path)


_JAVA_SOURCE = Path(__file__).parent / 'java' / 'tfxnsl' / 'ClusterClasspath.java'


def beam_args(engine: str) -> List[str]:
  """Beam pipeline arguments that run a pipeline on the local `engine`."""
  _check_engine(engine)
  return ['--runner=PortableRunner', f'--job_endpoint={job_endpoint(engine)}',
          '--environment_type=PROCESS',
          '--environment_config=' + json.dumps({'command': worker_command()}),
          '--job_server_timeout=60', f'--parallelism={WORKERS}',
          # Keep SDK workers between stages: each start imports TF and TFX.
          f'--environment_cache_millis={_WORKER_CACHE_MS}'] + (
              # Beam's Spark runner caches a stage with several consumers,
              # by default in memory only: an evicted partition would be
              # computed again, and its counters would count twice.
              ['--storage_level=MEMORY_AND_DISK'] if engine == 'spark' else
              # Flink's default pipelined exchanges deadlock where a stage
              # feeds another both directly and as a side input (GraphBuilder's
              # corpus, at 100,000 examples: all idle after the read).
              ['--execution_mode_for_batch=BATCH_FORCED']
          ) + [  # The cluster has the runner's jars (_no_staging_classes).
              '--pipeline_resources_detector_factory_class='
              'tfxnsl.ClusterClasspath']


def check_reachable(endpoint: str, timeout_s: float = 5.0) -> None:
  """Raises EngineError naming `endpoint` when nothing listens there."""
  host, _, port = endpoint.rpartition(':')
  try:
    with socket.create_connection((host or HOST, int(port)), timeout=timeout_s):
      return
  except OSError as e:
    engine = next((n for n in ENGINES if job_endpoint(n) == endpoint), None)
    fix = (f'start it with `make {engine}-up`' if engine else
           'start the job server for that engine')
    raise EngineError(f'No Beam job server answers at {endpoint} ({e}); '
                      f'{fix}.') from e


# ---------------------------------------------------------------- fetch ----

def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _read_lock() -> Dict[str, str]:
  entries = {}
  for line in LOCK_FILE.read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      digest, name = line.split()
      entries[name] = digest
  return entries


def _pom(engine: str) -> str:
  beam = 'org.apache.beam'
  return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tfx-nsl</groupId><artifactId>{engine}-job-server</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>{beam}</groupId><artifactId>{_RUNNERS[engine]}</artifactId>
      <version>{BEAM_VERSION}</version>
      <exclusions><exclusion><groupId>{beam}</groupId>
        <artifactId>beam-runners-java-job-service</artifactId></exclusion></exclusions>
    </dependency>
    <dependency><groupId>{beam}</groupId><artifactId>beam-runners-java-job-service</artifactId>
      <version>{JOB_SERVICE_VERSION}</version>
      <exclusions><exclusion><groupId>{beam}</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
    <dependency><groupId>{beam}</groupId><artifactId>beam-sdks-java-expansion-service</artifactId>
      <version>{BEAM_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>1.7.30</version></dependency>
  </dependencies>
</project>
"""


def _job_server_dir(root: Path, engine: str) -> Path:
  return root / engine / 'job-server'


def _dist_dir(root: Path, engine: str) -> Path:
  return root / engine / 'dist'


def _fetched_files(root: Path, engine: str) -> Dict[str, Path]:
  """Lock names of the fetched files of `engine` -> their paths."""
  files = {f'{engine}/{_DISTRIBUTIONS[engine][1]}':
           root / 'downloads' / _DISTRIBUTIONS[engine][1]}
  jars = _job_server_dir(root, engine)
  if jars.is_dir():
    files.update({f'{engine}/job-server/{p.name}': p
                  for p in sorted(jars.glob('*.jar'))})
  return files


def _run(cmd: Sequence[str], what: str, timeout_s: int = 1800) -> None:
  try:
    done = subprocess.run(list(cmd), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except FileNotFoundError as e:
    raise EngineError(f'{what}: {cmd[0]} not found; install it.') from e
  except subprocess.TimeoutExpired as e:
    raise EngineError(f'{what}: no answer in {timeout_s} s ({cmd[0]}).') from e
  if done.returncode:
    tail = '\n'.join((done.stdout + done.stderr).strip().splitlines()[-15:])
    raise EngineError(f'{what} failed ({" ".join(cmd[:3])} ...):\n{tail}')


def fetch(engine: str, root: Optional[Path] = None,
          verify: bool = True) -> None:
  """Fetches and verifies `engine`'s files; a no-op when all are in place
  (`verify=False` only to write a new lock)."""
  root = root or home()
  if verify and _verified(engine, root, quiet=True):
    return
  downloads = root / 'downloads'
  downloads.mkdir(parents=True, exist_ok=True)
  requirement, archive, prefix, members = _DISTRIBUTIONS[engine]
  path, want = downloads / archive, _read_lock().get(f'{engine}/{archive}')
  if path.exists() and verify and _sha256(path) != want:
    path.unlink()  # A partial or changed download: fetch it again.
  if not path.exists():
    print(f'{engine}: downloading {requirement} from PyPI', flush=True)
    _run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary',
          ':all:', '--disable-pip-version-check', '-d', str(downloads),
          requirement], f'pip download {requirement}')
  if verify and _sha256(path) != want:  # Before unpacking anything from it.
    raise EngineError(f'sha256 mismatch for {path} (want {want}, from '
                      f'{LOCK_FILE}); PyPI served another file.')
  jars = _job_server_dir(root, engine)
  shutil.rmtree(jars, ignore_errors=True)
  jars.mkdir(parents=True)
  pom = root / engine / 'pom.xml'
  pom.write_text(_pom(engine))
  print(f'{engine}: resolving Beam {BEAM_VERSION} {_RUNNERS[engine]} from '
        'Maven Central', flush=True)
  _run(['mvn', '-B', '-q', '-f', str(pom), 'dependency:copy-dependencies',
        f'-DoutputDirectory={jars}', '-DincludeScope=runtime'],
       f'mvn dependency:copy-dependencies for {_RUNNERS[engine]}')
  dist = _dist_dir(root, engine)
  shutil.rmtree(dist, ignore_errors=True)
  with tarfile.open(downloads / archive) as tar:
    wanted = [m for m in tar.getmembers() if m.isfile() and any(
        m.name.startswith(prefix + sub) for sub in members)]
    for member in wanted:
      member.name = member.name[len(prefix):]
      tar.extract(member, dist)
  if engine == 'spark':
    # Spark's launcher takes a folder with RELEASE for a binary release.
    (dist / 'RELEASE').write_text(f'Spark {SPARK_VERSION} (from {archive})\n')
  if verify:
    _verified(engine, root, quiet=False)


def _verified(engine: str, root: Path, quiet: bool) -> bool:
  """Whether every fetched file of `engine` is there with its locked sha256
  (raises EngineError naming the file unless `quiet`)."""
  lock = {n: d for n, d in _read_lock().items() if n.startswith(engine + '/')}
  found = _fetched_files(root, engine)
  problems = []
  for name, digest in sorted(lock.items()):
    path = found.get(name)
    if path is None or not path.exists():
      problems.append(f'missing {root / name}')
    elif _sha256(path) != digest:
      problems.append(f'sha256 mismatch for {path} (want {digest})')
  problems += [f'unexpected {found[n]} (not in {LOCK_FILE.name})'
               for n in sorted(set(found) - set(lock))]
  if engine == 'spark' and not (_dist_dir(root, engine) / 'RELEASE').exists():
    problems.append(f'missing {_dist_dir(root, engine)} (not extracted)')
  if engine == 'flink' and not (_dist_dir(root, engine) / 'lib').is_dir():
    problems.append(f'missing {_dist_dir(root, engine) / "lib"} (not extracted)')
  if problems and not quiet:
    raise EngineError(f'{engine} files in {root} do not match {LOCK_FILE}: '
                      + '; '.join(problems[:5]) +
                      f'. Run `make engines-fetch` (it refetches).')
  return not problems


def relock(root: Optional[Path] = None) -> None:
  """Rewrites engines.lock from the fetched files (after a version change)."""
  root = root or home()
  lines = ['# sha256 of every file `python -m tfx_nsl.engines fetch` takes; '
           'rewrite with `python -m tfx_nsl.engines lock`.']
  for engine in ENGINES:
    for name, path in sorted(_fetched_files(root, engine).items()):
      lines.append(f'{_sha256(path)}  {name}')
  LOCK_FILE.write_text('\n'.join(lines) + '\n')


# ------------------------------------------------------------- clusters ----

def _run_dir(root: Path, engine: str) -> Path:
  return root / 'run' / engine


def _state_file(root: Path, engine: str) -> Path:
  return _run_dir(root, engine) / 'pids.json'


def _start(root: Path, engine: str, name: str, cmd: List[str],
           env: Optional[Dict[str, str]] = None) -> int:
  logs = _run_dir(root, engine) / 'logs'
  logs.mkdir(parents=True, exist_ok=True)
  with open(logs / f'{name}.out', 'ab') as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=_run_dir(root, engine),
                            env={**os.environ, **(env or {})},
                            start_new_session=True)
  state = _read_state(root, engine)
  state[name] = proc.pid
  _state_file(root, engine).write_text(json.dumps(state, indent=1))
  return proc.pid


def _read_state(root: Path, engine: str) -> Dict[str, int]:
  path = _state_file(root, engine)
  return json.loads(path.read_text()) if path.exists() else {}


def _ours(pid: int, root: Path) -> bool:
  """Whether `pid` still runs a command of this cluster (each names a path
  under `root`), not a later process that reuses the number."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return str(root).encode() in f.read()
  except OSError:
    return False


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:  # a zombie child of this process is not running
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(')')[-1].split()[0] != 'Z'
  except OSError:
    return True


def _wait(what: str, ready, root: Path, engine: str, name: str,
          timeout_s: float = _TIMEOUT_S) -> None:
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    if ready():
      return
    pid = _read_state(root, engine).get(name)
    if pid and not _alive(pid):
      break
    time.sleep(0.5)
  log = _run_dir(root, engine) / 'logs' / f'{name}.out'
  tail = log.read_text(errors='replace').splitlines()[-8:] if log.exists() else []
  down(engine, root)
  raise EngineError(f'{engine}: {what} not ready after {timeout_s:.0f} s; '
                    f'log {log}:\n' + '\n'.join(tail))


def _http_json(url: str):
  try:
    with urllib.request.urlopen(url, timeout=2) as response:
      return json.loads(response.read())
  except (urllib.error.URLError, OSError, ValueError):
    return None


def _port_open(port: int) -> bool:
  try:
    with socket.create_connection((HOST, port), timeout=1):
      return True
  except OSError:
    return False


def _java() -> str:
  java = shutil.which('java')
  if not java:
    raise EngineError('java not found: the engines need a Java 17 runtime.')
  return java


def _flink_conf(run: Path) -> Path:
  ports = PORTS['flink']
  conf = run / 'conf'
  conf.mkdir(parents=True, exist_ok=True)
  settings = {
      'jobmanager.rpc.address': HOST, 'jobmanager.rpc.port': ports['rpc'],
      'jobmanager.bind-host': HOST, 'taskmanager.bind-host': HOST,
      'taskmanager.host': HOST, 'rest.address': HOST,
      'rest.bind-address': HOST, 'rest.port': ports['rest'],
      'blob.server.port': ports['blob'],
      'jobmanager.memory.process.size': '1024m',
      'taskmanager.memory.process.size': '3072m',
      # Beam's data plane (gRPC) buffers in direct memory: a 100,000 x 128
      # GraphBuilder corpus (one 51 MB element) exhausted the default.
      'taskmanager.memory.task.off-heap.size': '512m',
      # Flink's batch grouping holds all values of one key in the task heap
      # (and a serialized copy): a GraphAugmentation bucket (up to 64 MB of
      # input) needs some 4 times that. The default managed memory (40%,
      # for sorting, which spills to disk) left 225 MB of task heap.
      'taskmanager.memory.managed.size': '256m',
      # Beam's batch stages shuffle many PCollections at once.
      'taskmanager.memory.network.min': '512mb',
      'taskmanager.memory.network.max': '512mb',
      'taskmanager.numberOfTaskSlots': 1, 'parallelism.default': WORKERS,
      'io.tmp.dirs': str(run / 'tmp'),
      'env.java.opts.all': ' '.join(_JAVA17_OPTS),
  }
  (run / 'tmp').mkdir(exist_ok=True)
  (conf / 'flink-conf.yaml').write_text(
      ''.join(f'{k}: {v}\n' for k, v in settings.items()))
  (conf / 'log4j.properties').write_text(
      'rootLogger.level = INFO\n'
      'rootLogger.appenderRef.file.ref = MainAppender\n'
      'appender.main.name = MainAppender\nappender.main.type = File\n'
      'appender.main.fileName = ${sys:log.file}\n'
      'appender.main.layout.type = PatternLayout\n'
      'appender.main.layout.pattern = %d %-5p %c - %m%n\n')
  return conf


def _flink_jvm(dist: Path, conf: Path, which: str):
  """(JVM flags, dynamic properties) that Flink's start scripts would
  compute for a JobManager ('JM') or TaskManager ('TM')."""
  out = subprocess.run(
      [_java(), '-cp', f'{dist}/bin/bash-java-utils.jar:{dist}/lib/*',
       'org.apache.flink.runtime.util.bash.BashJavaUtils',
       f'GET_{which}_RESOURCE_PARAMS', '--configDir', str(conf)],
      capture_output=True, text=True, timeout=60, check=False).stdout
  results = [line.split(':', 1)[1].split() for line in out.splitlines()
             if line.startswith('BASH_JAVA_UTILS_EXEC_RESULT:')]
  if len(results) != 2:
    raise EngineError(f'flink: could not size the {which} JVM from {conf}:\n'
                      + out[-1000:])
  return results[0], ['--configDir', str(conf)] + results[1]


def _job_server(root: Path, engine: str, extra_cp: str = '',
                props: Sequence[str] = (), master: Sequence[str] = ()) -> None:
  ports = PORTS[engine]
  run = _run_dir(root, engine)
  cp = extra_cp + f'{_job_server_dir(root, engine)}/*'
  _start(root, engine, 'job-server', [
      _java(), *_JAVA17_OPTS, *props, '-cp', cp, _JOB_SERVER_MAIN[engine],
      *master, f'--job-host={HOST}', f'--job-port={ports["job"]}',
      f'--artifact-port={ports["artifact"]}',
      f'--expansion-port={ports["expansion"]}',
      f'--artifacts-dir={run / "artifacts"}'])
  _wait('Beam job server', lambda: _port_open(ports['job']), root, engine,
        'job-server')


def _worker_env(root: Path, engine: str) -> Dict[str, str]:
  """Environment of the processes that start SDK workers: their scratch
  folders live under the cluster's run folder, removed by `down`."""
  return {'TFX_NSL_WORKER_ROOT': str(_run_dir(root, engine) / 'workers'),
          'TF_CPP_MIN_LOG_LEVEL': '2'}


def _up_flink(root: Path) -> None:
  dist, run = _dist_dir(root, 'flink'), _run_dir(root, 'flink')
  conf = _flink_conf(run)
  rest = f'http://{HOST}:{PORTS["flink"]["rest"]}/overview'
  logs = run / 'logs'
  processes = [('jobmanager', 'JM', 'org.apache.flink.runtime.entrypoint.'
                'StandaloneSessionClusterEntrypoint')] + [
                    (f'taskmanager-{i}', 'TM', 'org.apache.flink.runtime.'
                     'taskexecutor.TaskManagerRunner') for i in range(WORKERS)]
  for name, which, main_class in processes:
    jvm, dynamic = _flink_jvm(dist, conf, which)
    _start(root, 'flink', name, [
        _java(), *jvm, *_JAVA17_OPTS, f'-Dlog.file={logs / (name + ".log")}',
        f'-Dlog4j.configurationFile=file:{conf / "log4j.properties"}',
        # Beam's runner classes on the cluster's classpath: jobs then stage
        # no jars (_no_staging_classes) and reuse warm classes.
        '-cp', f'{dist}/lib/*:{_job_server_dir(root, "flink")}/*', main_class,
        *dynamic], env=_worker_env(root, 'flink'))
    if which == 'JM':
      _wait('JobManager', lambda: _http_json(rest) is not None, root, 'flink',
            name)
  _wait(f'{WORKERS} TaskManagers',
        lambda: (_http_json(rest) or {}).get('taskmanagers') == WORKERS,
        root, 'flink', 'taskmanager-0')
  _job_server(root, 'flink', extra_cp=f'{_no_staging_classes(root, "flink")}:',
              master=[f'--flink-master={HOST}:{PORTS["flink"]["rest"]}'])


def _no_staging_classes(root: Path, engine: str) -> Path:
  """Compiles the job server's detector of jars to stage with a job
  (tfxnsl.ClusterClasspath: none, as the cluster has them; beam_args sets
  --pipeline_resources_detector_factory_class) into the run folder.

  Beam's default stages the job server's whole classpath (160 MB) with every
  job: a Flink job then took 23 s instead of 8 s here, most of it uploading
  jars and loading their classes anew."""
  classes = _run_dir(root, engine) / 'classes'
  shutil.rmtree(classes, ignore_errors=True)
  tools = {tool: shutil.which(tool) for tool in ('javac', 'jar')}
  for tool, path in tools.items():
    if not path:
      raise EngineError(f'{tool} not found: the {engine} cluster needs a Java '
                        '17 JDK (not only a runtime).')
  _run([tools['javac'], '-d', str(classes), '-cp',
        f'{_job_server_dir(root, engine)}/*', str(_JAVA_SOURCE)],
       'javac ' + _JAVA_SOURCE.name, timeout_s=120)
  # A jar, not a folder: a job whose options lack the detector (a pipeline
  # built without tfx_nsl.beam_executor imported) stages the job server's
  # classpath, and Beam stages files only.
  jar = _run_dir(root, engine) / 'tfxnsl-classpath.jar'
  _run([tools['jar'], '--create', '--file', str(jar), '-C', str(classes), '.'],
       'jar ' + jar.name, timeout_s=120)
  shutil.rmtree(classes)
  return jar


def _up_spark(root: Path) -> None:
  dist, run = _dist_dir(root, 'spark'), _run_dir(root, 'spark')
  ports = PORTS['spark']
  env = {'SPARK_HOME': str(dist), 'SPARK_SCALA_VERSION': '2.12',
         'SPARK_LOCAL_IP': HOST, **_worker_env(root, 'spark')}
  jvm = [_java(), '-Xmx512m', *_JAVA17_OPTS, '-cp', f'{dist}/jars/*']
  master = f'spark://{HOST}:{ports["master"]}'
  web = f'http://{HOST}:{ports["web"]}/json/'
  _start(root, 'spark', 'master', jvm + [
      'org.apache.spark.deploy.master.Master', '--host', HOST,
      '--port', str(ports['master']), '--webui-port', str(ports['web'])], env)
  _wait('Spark master', lambda: _http_json(web) is not None, root, 'spark',
        'master')
  for i in range(WORKERS):
    work = run / f'worker-{i}'
    _start(root, 'spark', f'worker-{i}', jvm + [
        'org.apache.spark.deploy.worker.Worker', master, '--host', HOST,
        '--cores', '1', '--memory', '3g', '--webui-port', '0',
        '--work-dir', str(work)], env)
  _wait(f'{WORKERS} Spark workers',
        lambda: (_http_json(web) or {}).get('aliveworkers') == WORKERS,
        root, 'spark', 'worker-0')
  # Executors are new JVMs for every job: C1 alone starts them faster (a
  # trivial job took 12.5 s instead of 15.9 s here).
  executor_opts = ' '.join(_JAVA17_OPTS + ['-XX:TieredStopAtLevel=1'])
  _job_server(root, 'spark', extra_cp=(
      f'{dist}/jars/*:{_no_staging_classes(root, "spark")}:'), props=[
      f'-Dspark.executor.extraJavaOptions={executor_opts}',
      # Beam's runner classes for the executors, after Spark's own (the
      # order staged jars would have): jobs stage no jars.
      f'-Dspark.executor.extraClassPath={dist}/jars/*:'
      f'{_job_server_dir(root, "spark")}/*',
      # Room to cache stages with several outputs (Beam's Spark runner
      # recomputes evicted ones, and their counters count twice).
      '-Dspark.executor.memory=2g',
      f'-Dspark.local.dir={run / "tmp"}'],
              master=[f'--spark-master-url={master}'])


def is_up(engine: str, root: Optional[Path] = None) -> bool:
  root = root or home()
  state = _read_state(root, engine)
  return bool(state) and all(_alive(p) and _ours(p, root)
                             for p in state.values())


def up(engine: str, root: Optional[Path] = None) -> None:
  """Starts `engine`'s cluster and job server unless they already run."""
  _check_engine(engine)
  root = root or home()
  if is_up(engine, root):
    print(f'{engine}: already up (job endpoint {job_endpoint(engine)})')
    return
  down(engine, root)
  _verified(engine, root, quiet=False)
  busy = [p for p in PORTS[engine].values() if _port_open(p)]
  if busy:
    raise EngineError(f'{engine}: ports {busy} on {HOST} are taken by '
                      'another process; stop it (or `make engines-down`).')
  start = time.time()
  (_up_flink if engine == 'flink' else _up_spark)(root)
  print(f'{engine}: up in {time.time() - start:.1f} s, job endpoint '
        f'{job_endpoint(engine)}, logs in {_run_dir(root, engine) / "logs"}')


def down(engine: str, root: Optional[Path] = None) -> List[int]:
  """Stops every process `up` started for `engine` (their process groups);
  returns the pids that were still running."""
  _check_engine(engine)
  root = root or home()
  state = {name: pid for name, pid in _read_state(root, engine).items()
           if _alive(pid) and _ours(pid, root)}
  stopped = list(state.values())
  for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
    for pid in state.values():
      try:
        os.killpg(pid, sig)
      except (ProcessLookupError, PermissionError):
        pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in state.values()):
      time.sleep(0.2)
  still = [p for p in state.values() if _alive(p)]
  if still:
    raise EngineError(f'{engine}: processes {still} survived SIGKILL.')
  _state_file(root, engine).unlink(missing_ok=True)
  shutil.rmtree(_run_dir(root, engine) / 'workers', ignore_errors=True)
  return stopped


@contextlib.contextmanager
def cluster(engine: str, root: Optional[Path] = None):
  """Runs the body with `engine`'s cluster up: one already running is
  reused and left running; one this starts is stopped afterwards."""
  root = root or home()
  started = not is_up(engine, root)
  if started:
    fetch(engine, root)
    up(engine, root)
  try:
    yield beam_args(engine)
  finally:
    if started:
      down(engine, root)


def _check_engine(engine: str) -> None:
  if engine not in ENGINES:
    raise EngineError(f'Unknown engine {engine!r}; choose one of {ENGINES}.')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m tfx_nsl.engines',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('command',
                      choices=['fetch', 'up', 'down', 'status', 'args', 'lock'])
  parser.add_argument('engines', nargs='*', help=f'of {ENGINES}; default: both')
  parser.add_argument('--home', help='cache and run folder (default: '
                      '$TFX_NSL_ENGINES_HOME or ./.engines)')
  args = parser.parse_args(argv)
  root = home(args.home)
  engines = args.engines or list(ENGINES)
  try:
    for engine in engines:
      _check_engine(engine)
    if args.command == 'lock':
      for engine in ENGINES:
        fetch(engine, root, verify=False)
      relock(root)
      return 0
    for engine in engines:
      if args.command == 'fetch':
        fetch(engine, root)
        print(f'{engine}: files verified in {root}')
      elif args.command == 'up':
        fetch(engine, root)
        up(engine, root)
      elif args.command == 'down':
        stopped = down(engine, root)
        print(f'{engine}: stopped {len(stopped)} processes')
      elif args.command == 'status':
        print(f'{engine}: {"up" if is_up(engine, root) else "down"} '
              f'({job_endpoint(engine)})')
      elif args.command == 'args':
        print(' '.join(beam_args(engine)))
  except EngineError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
