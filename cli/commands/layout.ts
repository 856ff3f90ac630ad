// `qcowscope layout [--json] IMAGE`: the owner of every host cluster, summarised by kind and
// listed by range (start cluster, count, kind) — the check's own walk, for the cluster map.
import { buildLayout, layoutRanges, LAYOUT_KIND_NAMES } from '../../core/analysis/layout.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { isJson, usageError } from './info.ts';

export const layout: Command = {
  name: 'layout',
  usage: 'layout [--json] IMAGE',
  options: { json: { type: 'boolean' }, output: { type: 'string' } },
  async run({ values, positionals, out }) {
    if (positionals.length !== 1) throw usageError('layout: expecting one image file name');
    const file = positionals[0]!;
    const img = await openImage(file, { checkMode: true, noBacking: true });
    try {
      const l = await buildLayout(img);
      const r = layoutRanges(l.kinds);
      const summary = Object.fromEntries(Object.entries(l.summary).filter(([, n]) => n > 0));
      if (isJson(values)) {
        const ranges = [];
        for (let i = 0; i < r.length; i++) ranges.push({ start: r.starts[i]!, count: r.counts[i]!, kind: LAYOUT_KIND_NAMES[r.kinds[i]!] });
        out(JSON.stringify({ filename: file, 'cluster-size': l.clusterSize, clusters: l.clusterCount, summary, ranges }, null, 4));
        return 0;
      }
      const lines = [`Cluster size: ${l.clusterSize}`, `Host clusters: ${l.clusterCount}`, '', 'Kind                Clusters'];
      for (const [k, n] of Object.entries(summary)) lines.push(`${k.padEnd(20)}${String(n).padStart(8)}`);
      lines.push('', `${'Start'.padStart(12)} ${'Count'.padStart(12)}  Kind`);
      for (let i = 0; i < r.length; i++) {
        lines.push(`${String(r.starts[i]).padStart(12)} ${String(r.counts[i]).padStart(12)}  ${LAYOUT_KIND_NAMES[r.kinds[i]!]}`);
      }
      out(lines.join('\n'));
      return 0;
    } finally {
      await img.close();
    }
  },
};
