// `qcowscope check [--json] [--repair leaks|all] IMAGE`: qemu-img check's output, JSON fields and
// exit codes (docs/qcow2-format.md §4.3): per-item diagnostics on stderr as they are found, the
// summary on stdout, 0 clean / 1 check not completed / 2 corruptions / 3 leaks only.
import { toQemuJson } from '../../core/analysis/qemu-json.ts';
import { checkExitCode, runCheck, type CheckResult, type RepairMode } from '../../core/analysis/check.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { isJson, usageError } from './info.ts';
import { usageExit } from '../qemu-options.ts';
import { formatFixed } from '../../core/analysis/info.ts';

/** qemu-img check --output=json (QAPI ImageCheck): optional counters only when non-zero. */
export function checkJson(filename: string, r: CheckResult): Record<string, string | number> {
  // qemu-img 7.2's key order (the hash order of its dictionary); zero counts are left out as it does
  const fields: Array<[string, string | number, boolean]> = [
    ['image-end-offset', r.imageEndOffset, false], ['compressed-clusters', r.compressedClusters, false],
    ['total-clusters', r.totalClusters, false], ['corruptions', r.corruptions, false],
    ['corruptions-fixed', r.corruptionsFixed, false], ['check-errors', r.checkErrors, true],
    ['leaks', r.leaks, false], ['leaks-fixed', r.leaksFixed, false],
    ['allocated-clusters', r.allocatedClusters, false], ['filename', filename, true], ['format', 'qcow2', true],
    ['fragmented-clusters', r.fragmentedClusters, false],
  ];
  const o: Record<string, string | number> = {};
  for (const [k, v, always] of fields) if (always || v !== 0) o[k] = v;
  return o;
}

/** qemu-img's dump_human_image_check. */
export function checkHuman(r: CheckResult): string {
  const lines: string[] = [];
  if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) {
    lines.push('No errors were found on the image.');
  } else {
    if (r.corruptions) lines.push('', `${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
    if (r.leaks) lines.push('', `${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
    if (r.checkErrors) lines.push('', `${r.checkErrors} internal errors have occurred during the check.`);
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${formatFixed(r.allocatedClusters * 100 / r.totalClusters, 2)}% allocated, ` +
      `${formatFixed(r.fragmentedClusters * 100 / r.allocatedClusters, 2)}% fragmented, ${formatFixed(r.compressedClusters * 100 / r.allocatedClusters, 2)}% compressed clusters`);
  }
  if (r.imageEndOffset) lines.push(`Image end offset: ${r.imageEndOffset}`);
  return lines.join('\n');
}

export const check: Command = {
  name: 'check',
  usage: 'check [--json] [--repair leaks|all] IMAGE',
  options: {
    json: { type: 'boolean' },
    output: { type: 'string' },
    repair: { type: 'string', short: 'r' },
    quiet: { type: 'boolean', short: 'q' },
  },
  async run({ values, positionals, out, err }) {
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const file = positionals[0]!;
    const repairArg = values.repair as string | undefined;
    if (repairArg !== undefined && repairArg !== 'leaks' && repairArg !== 'all') {
      throw usageExit(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repairArg}`);
    }
    if (values.output !== undefined && values.output !== 'json' && values.output !== 'human') {
      throw usageError('--output must be used with human or json as argument.');
    }
    const repair = repairArg as RepairMode | undefined;
    const json = isJson(values);
    const quiet = values.quiet === true;
    // qemu-img check opens the backing chain too: an overlay whose backing file cannot be opened is not checked
    const img = await openImage(file, { checkMode: true, writable: repair !== undefined });
    try {
      const r = await runCheck(img, {
        repair,
        onFinding: (f) => err(f.reported ? `qcowscope: ${f.message}` : f.message),
      });
      if (r.repairFindings && !json && !quiet) {
        out(`The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...`);
      }
      if (r.failure === undefined && !quiet) out(json ? toQemuJson(checkJson(file, r)) : checkHuman(r));
      if (r.failure !== undefined || r.checkErrors > 0) {
        err(r.failure !== undefined ? `qcowscope: Check failed: ${r.failure}` : 'qcowscope: Check failed');
      }
      return checkExitCode(r);
    } finally {
      await img.close();
    }
  },
};
