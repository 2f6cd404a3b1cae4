#!/usr/bin/env python3
"""Interleaved A/B of compare binaries built from different commits: medians per cell, ratios to
the first binary. Usage: ab.py name=path,name=path ROUNDS CELL... where a CELL is
`b:<--child spec>` (a 300,000-item burst) or `s:<--service-child spec>`."""
import re
import statistics
import subprocess
import sys
bins = dict(a.split('=') for a in sys.argv[1].split(','))
rounds = int(sys.argv[2])
cells = sys.argv[3:]
res = {}
for r in range(rounds):
    for cell in cells:
        kind, spec = cell.split(':', 1)
        for name, path in bins.items():
            if kind == 'b':
                out = subprocess.run([path, '--child', spec, '--items', '300000'], capture_output=True, text=True).stdout
                secs = float(re.search(r'secs=([\d.]+)', out).group(1))
                val = 300000 / secs
            else:
                out = subprocess.run([path, '--service-child', spec], capture_output=True, text=True).stdout
                m = re.search(r'requests=(\d+) secs=([\d.]+) p50_ns=(\d+) p99_ns=(\d+)', out)
                val = int(m.group(1)) / float(m.group(2))
                res.setdefault((cell, name, 'p99'), []).append(int(m.group(4)))
            res.setdefault((cell, name, 'rate'), []).append(val)
names = list(bins)
for cell in cells:
    base = statistics.median(res[(cell, names[0], 'rate')])
    row = [cell]
    for n in names:
        med = statistics.median(res[(cell, n, 'rate')])
        s = f"{n} {med/1e6:.2f}M/s x{med/base:.2f}"
        if (cell, n, 'p99') in res:
            s += f" p99 {statistics.median(res[(cell, n, 'p99')])/1e3:.1f}us"
        row.append(s)
    print(' | '.join(row))
