"""Robustness results: read from TFMA's output, shown as table, PNG and HTML."""
import base64
import collections
import dataclasses
import hashlib
import html
import io
import json
import os
from typing import Any, Dict, Optional, Sequence
import uuid

import numpy as np

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


def store_worker_counts(directory, counts):
  """Writes one batch's counts (nested dicts of ints: the suites' sanity
  flags, the per-class tallies) to a new file of `directory`: a worker's
  share, which merge_worker_counts sums."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, f'{uuid.uuid4().hex}.json'),
                         'w') as f:
    json.dump(counts, f)


def merge_worker_counts(directory):
  """The sum of store_worker_counts' files, key by key."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  total = {}
  if tf.io.gfile.isdir(directory):
    for name in tf.io.gfile.listdir(directory):
      if name.endswith('.json'):
        with tf.io.gfile.GFile(os.path.join(directory, name)) as f:
          attacks.add_counts(total, json.load(f))
  return total


# Examples in the report's grid: a worker keeps its first ones, as the
# model saw them clean and under each attack.
GRID_EXAMPLES = 8
_GRID_PREFIX = 'grid-'


def store_worker_grid(directory, key, features, predictions, labels):
  """Writes a worker's first examples for the grid to `directory`, named
  by `key` (bytes, e.g. the first serialized example: the same examples
  give the same file): {attack: {feature: values}} (float features only),
  {attack: predictions} and the labels, each cut to GRID_EXAMPLES."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  arrays = {'labels': np.asarray(labels)[:GRID_EXAMPLES]}
  for name, by_feature in features.items():
    arrays[f'predictions/{name}'] = predictions[name][:GRID_EXAMPLES]
    for feature, values in by_feature.items():
      if values.dtype.kind == 'f':  # strings would need pickle
        arrays[f'features/{name}/{feature}'] = values[:GRID_EXAMPLES]
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tf.io.gfile.makedirs(directory)
  name = hashlib.sha1(key).hexdigest()
  with tf.io.gfile.GFile(os.path.join(
      directory, f'{_GRID_PREFIX}{name}.npz'), 'wb') as f:
    f.write(buffer.getvalue())


def load_worker_grid(directory):
  """(features, predictions, labels) of the stored grid file that sorts
  first (one worker's first examples; the same examples, the same choice),
  or None if no worker stored one."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = sorted(n for n in (tf.io.gfile.listdir(directory)
                             if tf.io.gfile.isdir(directory) else [])
                 if n.startswith(_GRID_PREFIX))
  if not names:
    return None
  with tf.io.gfile.GFile(os.path.join(directory, names[0]), 'rb') as f:
    stored = np.load(io.BytesIO(f.read()))
    arrays = {k: stored[k] for k in stored.files}
  features, predictions = collections.defaultdict(dict), {}
  for key, values in arrays.items():
    kind, _, rest = key.partition('/')
    if kind == 'features':
      name, feature = rest.split('/', 1)
      features[name][feature] = values
    elif kind == 'predictions':
      predictions[rest] = values
  return dict(features), predictions, arrays['labels']


def class_accuracies(classes):
  """{model: {attack: {class: (accuracy, examples)}}} from the per-class
  tallies {model: {attack: {'correct': {class: n}, 'total': {class: n}}}}."""
  return {model or CANDIDATE: {attack: {
      label: (tally.get('correct', {}).get(label, 0) / total, total)
      for label, total in sorted(tally['total'].items(),
                                 key=lambda item: _class_key(item[0]))}
                  for attack, tally in by_attack.items()}
          for model, by_attack in classes.items()}


def _class_key(label):
  try:
    return (0, float(label), label)
  except ValueError:
    return (1, 0.0, label)


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
    # Beside each attack, its norm's worst case over the full suite.
    worst = curves.get(('autoattack', group[1]), {}) if (
        group[0] not in attacks.PRESETS) else {}
    for model, points in sorted(worst.items()):
      points.sort()
      axis.plot([p[0] for p in points], [p[1] for p in points],
                linestyle=':', color='gray' if model == CANDIDATE else
                'silver', label=f'{model}, autoattack (worst case)')
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
      axis.legend(fontsize=7)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def gate_rows(gates, values, counts=None):
  """[(what, threshold, value, passed)] of each of our gates (params.Gates)
  on the candidate: its accuracy floors (and, with gates.on_lower_bound,
  their Wilson lower bounds), the regression error ceilings, and the
  changes against a baseline. `values`: load_accuracies' result."""
  candidate = values.get(CANDIDATE, {})
  baseline = values.get(BASELINE, {})
  count = (counts or {}).get(CANDIDATE)
  rows = []
  floors = gates.accuracy_floors()
  ceilings = dict(gates.max_attacked_error)
  if gates.max_clean_error is not None:
    ceilings[attacks.CLEAN] = gates.max_clean_error
  for name in _ordered(set(floors) | set(ceilings)):
    value = candidate.get(name)
    if value is None:
      continue
    if name in floors:
      rows.append((f'{name} accuracy', f'>= {floors[name]:g}',
                   f'{value:.4f}', value >= floors[name]))
      if gates.on_lower_bound and count:
        low = wilson(value, count)[0]
        rows.append((f'{name} accuracy, 95% lower bound',
                     f'>= {floors[name]:g}', f'{low:.4f}',
                     low >= floors[name]))
    else:
      rows.append((f'{name} mean squared error', f'<= {ceilings[name]:g}',
                   f'{value:.4f}', value <= ceilings[name]))
  for limit, sign, what in ((gates.max_accuracy_drop, -1, 'accuracy'),
                            (gates.max_error_increase, 1, 'error')):
    if limit is None:
      continue
    for name in _ordered(set(candidate) & set(baseline)):
      change = candidate[name] - baseline[name]
      rows.append((f'{name} {what} change vs baseline',
                   f'{">=" if sign < 0 else "<="} {sign * limit:g}',
                   f'{change:+.4f}', sign * change <= limit))
  return rows


def _mosaic(images, names, pad):
  """[rows, columns] of the images as one RGB array in [0, 1] on white,
  `pad` pixels between cells; every image on the same value scale."""
  low = min(float(np.min(v)) for v in images.values())
  high = max(float(np.max(v)) for v in images.values())
  first = images[names[0]]
  h, w = first.shape[1:3]
  count = len(first)
  out = np.ones(((h + pad) * len(names), (w + pad) * count, 3), np.float32)
  for row, name in enumerate(names):
    scaled = (np.asarray(images[name], np.float32) - low) / max(high - low,
                                                                 1e-12)
    if scaled.ndim == 3:  # grayscale
      scaled = np.repeat(scaled[..., None], 3, axis=-1)
    for column in range(count):
      top, left = row * (h + pad) + pad, column * (w + pad)
      out[top:top + h, left:left + w] = scaled[column]
  return np.clip(out, 0, 1)


def example_grid_png(images, predicted, labels):
  """PNG bytes: one row per attack name of `images` ({name: [k, h, w] or
  [k, h, w, c] arrays}), one column per example, each titled with its
  predicted class (red when it is not `labels`' class)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = _ordered(images)
  count = len(labels)
  # One image and its text rather than an axes per cell: matplotlib lays
  # out 2 x 8 axes in about 0.5 s, which the evaluation's time would carry.
  h, w = images[names[0]].shape[1:3]
  pad = max(2, h // 2)  # room for each cell's title
  width = 1.2 * count + 2.2  # inches; 2.2 for the attack names
  figure = plt.figure(figsize=(width, 1.35 * len(names)))
  axis = figure.add_axes([2.2 / width, 0.02, 1 - 2.25 / width, 0.96])
  axis.imshow(_mosaic(images, names, pad), interpolation='nearest',
              aspect='auto')
  axis.set_axis_off()
  for row, name in enumerate(names):
    top = row * (h + pad) + pad
    axis.text(-0.5 - w * 0.1, top + h / 2, name, fontsize=6, ha='right',
              va='center')
    for column in range(count):
      guess = predicted[name][column]
      title = f'{guess} (label {labels[column]})' if row == 0 else f'{guess}'
      axis.text(column * (w + pad) + w / 2 - 0.5, top - 0.6, title,
                fontsize=8, ha='center', va='bottom',
                color='black' if guess == labels[column] else 'red')
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  plt.close(figure)
  return buffer.getvalue()


@dataclasses.dataclass
class Page:
  """What robustness.html shows."""
  accuracies: Dict[str, Dict[str, float]]  # load_accuracies()
  counts: Optional[Dict[str, int]]  # load_counts(); None: regression
  blessed: bool
  failures: Sequence[str]  # every threshold failure, TFMA's and ours
  metric: Optional[str] = None  # the gated TFMA metric; None: accuracy
  flags: Sequence[str] = ()  # raised_flags()
  gates: Sequence[tuple] = ()  # gate_rows()
  classes: Dict[str, Any] = dataclasses.field(default_factory=dict)
  configuration: Dict[str, str] = dataclasses.field(default_factory=dict)
  grid_png: Optional[bytes] = None  # example_grid_png()


def _html_table(table_id, header, rows):
  cells = lambda tag, row: ''.join(  # noqa: E731
      f'<{tag}>{html.escape(str(c))}</{tag}>' for c in row)
  return (f'<table id="{table_id}"><tr>{cells("th", header)}</tr>' +
          ''.join(f'<tr>{cells("td", row)}</tr>' for row in rows) +
          '</table>')


def _class_tables(classes):
  """One table per model: classes as rows, clean and attacks as columns."""
  parts = []
  for model in sorted(classes, key=lambda m: (m != CANDIDATE, m)):
    by_attack = classes[model]
    names = _ordered(by_attack)
    labels = list(next(iter(by_attack.values()))) if by_attack else []
    rows = [[label] + [_cell(*by_attack[n][label])
                       if label in by_attack[n] else '-' for n in names]
            for label in labels]
    parts.append(f'<h3>{html.escape(model)}</h3>' + _html_table(
        f'classes-{model}', ['class'] + names, rows))
  return ''.join(parts) or '<p>none (not a classifier)</p>'


def write_report(evaluation_uri, page: Page):
  """Writes robustness.png and robustness.html next to TFMA's output."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  label = page.metric.replace('_', ' ') if page.metric else 'accuracy'
  accuracies, counts = page.accuracies, page.counts
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
  gates = _html_table('gates', ['gate', 'threshold', 'candidate', 'result'], [
      (what, threshold, value, 'pass' if passed else 'FAIL')
      for what, threshold, value, passed in page.gates])
  grid = ('<p>none (no image-like perturbed feature)</p>'
          if page.grid_png is None else
          '<img id="grid" alt="clean vs adversarial examples" src="data:'
          f'image/png;base64,{base64.b64encode(page.grid_png).decode()}">')
  listing = lambda items, list_id: (  # noqa: E731
      f'<ul id="{list_id}">' + (''.join(
          f'<li>{html.escape(i)}</li>' for i in items) or '<li>none</li>') +
      '</ul>')
  html_page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Robustness report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}</style></head>
<body>
<h1>Clean vs attacked {html.escape(label)}</h1>
<p>White-box attacks on each model being judged (NSL's FGSM and PGD;
APGD-CE, APGD-T and the score-based Square attack of tfx-nsl). An
<code>autoattack</code> row is robust accuracy: the fraction of examples
that no attack of its suite breaks. Brackets: 95% Wilson intervals.
Blessed: <b id="blessed">{page.blessed}</b></p>
<img id="curve" alt="{html.escape(label)} vs epsilon" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table id="accuracy"><tr><th>attack</th>{''.join(f'<th>{html.escape(m)}</th>' for m in models)}</tr>
{rows}</table>
<h2>Gates</h2>
{gates}
<h2>Threshold failures</h2>
{listing(page.failures, 'failures')}
<h2>Sanity flags</h2>
{listing(page.flags, 'flags')}
<h2>Accuracy per class</h2>
{_class_tables(page.classes)}
<h2>Clean vs adversarial examples</h2>
<p>The first examples of the split, clean and under each attack, titled
with the candidate's predicted class (red: wrong).</p>
{grid}
<h2>Configuration</h2>
{_html_table('configuration', ['setting', 'value'], sorted(page.configuration.items()))}
<script>
for (const [id, key] of [['curve', 'plot'], ['grid', 'grid']]) {{
  const img = document.getElementById(id);
  if (!img) continue;
  const mark = () => {{ document.body.dataset[key] =
      img.complete && img.naturalWidth > 0 ? 'rendered' : 'broken'; }};
  if (img.complete) mark(); else img.addEventListener('load', mark);
  img.addEventListener('error', mark);
}}
</script>
</body></html>
"""
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, REPORT_HTML), 'w') as f:
    f.write(html_page)
