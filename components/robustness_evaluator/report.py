"""Robustness results: read from TFMA's output, shown as table, PNG and HTML."""
import base64
import collections
import html
import io
import json
import os
import uuid

from tfx_nsl.components.robustness_evaluator import attacks

REPORT_HTML = 'robustness.html'
REPORT_PNG = 'robustness.png'
# TFMA's names of the accuracy the gates apply to (heads.Head.gated_metric);
# a regression head's is 'mean_squared_error'.
ACCURACIES = ('sparse_categorical_accuracy', 'binary_accuracy')
CANDIDATE = 'candidate'
BASELINE = 'baseline'


def load_accuracies(evaluation_uri, metric=None):
  """{model name: {attack name: accuracy}} of the overall slice (or of
  `metric`, a TFMA metric name)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  result = collections.defaultdict(dict)
  for metrics in tfma.load_metrics(evaluation_uri):
    if metrics.slice_key.single_slice_keys:
      continue
    for item in metrics.metric_keys_and_values:
      key = item.key
      if (key.name == metric if metric else key.name in ACCURACIES) and (
          not key.is_diff):
        model = key.model_name or CANDIDATE
        result[model][key.output_name or attacks.CLEAN] = (
            item.value.double_value.value)
  return dict(result)


def load_counts(evaluation_uri):
  """{model name: examples evaluated} (TFMA's example_count of the clean
  output; every attack sees the same examples)."""
  return {model: int(values[attacks.CLEAN]) for model, values in
          load_accuracies(evaluation_uri, 'example_count').items()
          if attacks.CLEAN in values}


def wilson(accuracy, count, z=1.96):
  """The Wilson score interval (95% by default) of an accuracy measured on
  `count` examples: (low, high)."""
  if not count:
    return 0.0, 1.0
  center = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
  half = z / (1 + z * z / count) * (
      accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) ** 0.5
  return max(0.0, center - half), min(1.0, center + half)


def lower_bound_failures(accuracies, count, floors):
  """['candidate/<output>: ...'] for each accuracy floor ({output name:
  minimum}) that the lower bound of its 95% Wilson interval, on `count`
  examples, does not reach; `accuracies`: {output name: accuracy}."""
  failures = []
  for name, floor in sorted(floors.items()):
    if name not in accuracies:
      continue
    low = wilson(accuracies[name], count)[0]
    if low < floor:
      failures.append(
          f'{CANDIDATE}/{name}: 95% lower bound of accuracy = {low:.4f} '
          f'(accuracy {accuracies[name]:.4f} on {count} examples) fails '
          f'>= {floor:g}')
  return failures


def _cell(value, count):
  """An accuracy with its 95% interval when the example count is known."""
  if count is None:
    return f'{value:.4f}'
  low, high = wilson(value, count)
  return f'{value:.4f} [{low:.3f}, {high:.3f}]'


def store_flag_counts(directory, counts):
  """Writes {model: {attack: {flag: examples}}} of one batch to a new file
  of `directory` (a worker's share; merge_flag_counts sums them)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, f'{uuid.uuid4().hex}.json'),
                         'w') as f:
    json.dump(counts, f)


def merge_flag_counts(directory):
  """The sum of store_flag_counts' files: {model: {attack: {flag: n}}}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  total = collections.defaultdict(lambda: collections.defaultdict(
      collections.Counter))
  if tf.io.gfile.isdir(directory):
    for name in tf.io.gfile.listdir(directory):
      with tf.io.gfile.GFile(os.path.join(directory, name)) as f:
        for model, by_attack in json.load(f).items():
          for attack, counts in by_attack.items():
            total[model][attack].update(counts)
  return {m: {a: dict(c) for a, c in v.items()} for m, v in total.items()}


def raised_flags(flag_counts):
  """['model/attack: n examples <why>'] for every flag with examples."""
  from tfx_nsl.components.robustness_evaluator import autoattack  # pylint: disable=g-import-not-at-top
  return [f'{model or CANDIDATE}/{attack}: {count} examples '
          f'{autoattack.FLAGS[flag]}'
          for model, by_attack in sorted(flag_counts.items())
          for attack, counts in sorted(by_attack.items())
          for flag, count in sorted(counts.items()) if count]


def load_validation(evaluation_uri):
  """(passed, [failure descriptions]) of TFMA's threshold validation."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  validation = tfma.load_validation_result(evaluation_uri)
  failures = []
  for failure in validation.metric_validations_per_slice:
    for metric in failure.failures:
      failures.append(
          f'{metric.metric_key.model_name or CANDIDATE}/'
          f'{metric.metric_key.output_name or attacks.CLEAN}: '
          f'{metric.metric_key.name} {"change " if metric.metric_key.is_diff else ""}'
          f'= {metric.metric_value.double_value.value:.4f} fails '
          f'{_threshold_text(metric.metric_threshold)}')
  return validation.validation_ok, failures


def _threshold_text(threshold):
  if threshold.HasField('value_threshold'):
    bounds = threshold.value_threshold
    return ' and '.join(
        [f'>= {bounds.lower_bound.value:g}'] * bounds.HasField('lower_bound') +
        [f'<= {bounds.upper_bound.value:g}'] * bounds.HasField('upper_bound'))
  if threshold.HasField('change_threshold'):
    return f'change >= {threshold.change_threshold.absolute.value:g}'
  return str(threshold).replace('\n', ' ')


def _ordered(names):
  def key(name):
    if name == attacks.CLEAN:
      return ('', '', 0.0, name)
    attack = attacks.Attack.parse(name)
    return (attack.method, attack.norm, attack.epsilon, name)
  return sorted(names, key=key)


def text_table(accuracies, blessed=None, metric='accuracy', counts=None):
  """A one-screen table: rows are attacks, columns are models; with
  `counts` ({model: examples}), accuracies carry their 95% Wilson
  interval."""
  models = sorted(accuracies, key=lambda m: (m != CANDIDATE, m))
  names = _ordered({n for values in accuracies.values() for n in values})
  width = max([len(n) for n in names] + [10])
  column = 26 if counts else 12
  lines = ['  ' + metric.ljust(width) + ''.join(f'{m:>{column}}'
                                                for m in models)]
  for name in names:
    cells = ''.join(
        f'{_cell(accuracies[m][name], (counts or {}).get(m)):>{column}}'
        if name in accuracies[m] else f'{"-":>{column}}' for m in models)
    lines.append('  ' + name.ljust(width) + cells)
  if blessed is not None:
    lines.append(f'  blessed: {blessed}')
  return '\n'.join(lines)


def _curves(accuracies):
  """{(method, norm): {model: [(eps, acc)]}}, eps 0 being clean accuracy."""
  curves = collections.defaultdict(lambda: collections.defaultdict(list))
  for model, values in accuracies.items():
    groups = {(a.method, a.norm) for a in (attacks.Attack.parse(n)
                                           for n in values
                                           if n != attacks.CLEAN)}
    for name, accuracy in values.items():
      if name == attacks.CLEAN:
        for group in groups:
          curves[group][model].append((0.0, accuracy))
        continue
      attack = attacks.Attack.parse(name)
      curves[(attack.method, attack.norm)][model].append(
          (attack.epsilon, accuracy))
  return curves


def plot_png(accuracies, metric='accuracy', counts=None):
  """PNG bytes: `metric` vs epsilon per attack, one line per model, with
  95% Wilson bands when `counts` ({model: examples}) are given."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = _curves(accuracies)
  groups = sorted(curves) or [('clean', '')]
  figure, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6),
                              squeeze=False)
  for axis, group in zip(axes[0], groups):
    for model, points in sorted(curves.get(group, {}).items()):
      points.sort()
      line, = axis.plot([p[0] for p in points], [p[1] for p in points],
                        marker='o', label=model)
      if counts and counts.get(model):
        bands = [wilson(p[1], counts[model]) for p in points]
        axis.fill_between([p[0] for p in points], [b[0] for b in bands],
                          [b[1] for b in bands], color=line.get_color(),
                          alpha=0.2)
    axis.set_title(f'{group[0].upper()} {group[1]}')
    axis.set_xlabel('epsilon')
    axis.set_ylabel(metric)
    if metric == 'accuracy':
      axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    if axis.lines:
      axis.legend()
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def write_report(evaluation_uri, accuracies, counts, blessed, failures,
                 metric=None, flags=()):
  """Writes robustness.png and robustness.html next to TFMA's output:
  `accuracies` and `counts` as load_accuracies and load_counts read them
  (counts None for a regression head), `metric` (a TFMA name) the gated
  one, default the accuracy; `flags`: raised_flags() lines."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  label = metric.replace('_', ' ') if metric else 'accuracy'
  png = plot_png(accuracies, label, counts)
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, REPORT_PNG), 'wb') as f:
    f.write(png)
  models = sorted(accuracies, key=lambda m: (m != CANDIDATE, m))
  rows = ''.join(
      '<tr><td>{}</td>{}</tr>'.format(html.escape(name), ''.join(
          '<td>{}</td>'.format(_cell(accuracies[m][name],
                                     (counts or {}).get(m)))
          if name in accuracies[m] else '<td>-</td>' for m in models))
      for name in _ordered({n for v in accuracies.values() for n in v}))
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Robustness report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}</style></head>
<body>
<h1>Clean vs attacked {html.escape(label)}</h1>
<p>White-box attacks on each model being judged (NSL's FGSM and PGD;
APGD-CE, APGD-T and the score-based Square attack of tfx-nsl). An
<code>autoattack</code> row is robust accuracy: the fraction of examples
that no attack of its suite breaks. Brackets: 95% Wilson intervals.
Blessed: <b id="blessed">{blessed}</b></p>
<img id="curve" alt="{html.escape(label)} vs epsilon" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table id="accuracy"><tr><th>attack</th>{''.join(f'<th>{html.escape(m)}</th>' for m in models)}</tr>
{rows}</table>
<h2>Threshold failures</h2>
<ul id="failures">{''.join(f'<li>{html.escape(f)}</li>' for f in failures) or '<li>none</li>'}</ul>
<h2>Sanity flags</h2>
<ul id="flags">{''.join(f'<li>{html.escape(f)}</li>' for f in flags) or '<li>none</li>'}</ul>
<script>
const img = document.getElementById('curve');
function mark() {{ document.body.dataset.plot =
    img.complete && img.naturalWidth > 0 ? 'rendered' : 'broken'; }}
if (img.complete) mark(); else img.addEventListener('load', mark);
img.addEventListener('error', mark);
</script>
</body></html>
"""
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, REPORT_HTML), 'w') as f:
    f.write(page)
