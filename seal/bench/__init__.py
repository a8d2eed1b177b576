"""``seal bench``: self-generated vs GPT-generated training data, across SEAL's evaluation protocols.

Modules, read in this order:

* :mod:`seal.bench.config`    -- the recipe's ``bench`` section (sources, students, protocols);
* :mod:`seal.bench.sources`   -- resolving sources into self-edits (reuses :mod:`seal.evaluate`);
* :mod:`seal.bench.protocols` -- single passage, multi-passage CPT, continual self-edits;
* :mod:`seal.bench.stats`     -- paired bootstrap confidence intervals over passages;
* :mod:`seal.bench.report`    -- Markdown report, CSV/JSON tables;
* :mod:`seal.bench.plots`     -- bar charts with CI whiskers, continual and compatibility heatmaps;
* :mod:`seal.bench.run`       -- :func:`bench`, the command's body.
"""
