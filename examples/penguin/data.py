"""The Palmer penguins CSV (from the `palmerpenguins` package) for CsvExampleGen.

Missing values ('NA' in the package's file) become empty fields, which
CsvExampleGen reads as missing; every other value is kept as it is.
"""
import csv
import os


def write_csv(data_root):
  import palmerpenguins  # pylint: disable=g-import-not-at-top
  source = os.path.join(os.path.dirname(palmerpenguins.__file__), 'data',
                        'penguins.csv')
  os.makedirs(data_root, exist_ok=True)
  target = os.path.join(data_root, 'penguins.csv')
  with open(source, newline='') as f, open(target, 'w', newline='') as out:
    writer = csv.writer(out)
    for row in csv.reader(f):
      writer.writerow(['' if value == 'NA' else value for value in row])
  return target
