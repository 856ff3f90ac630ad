// `qcowscope check [--json] [--repair leaks|all] IMAGE`: qemu-img check's output and exit codes
// (docs/qcow2-format.md §4.3) for the engine layer's check (core/ops/check.ts): per-item diagnostics
// on stderr as they are found, the summary on stdout, 0 clean / 1 check not completed / 2
// corruptions / 3 leaks only.
import * as fs from 'node:fs';
import { QCOW_MAGIC } from '../../core/format/constants.ts';
import { toQemuJson } from '../../core/analysis/qemu-json.ts';
import { checkExitCode, checkJson, checkReport, type CheckReport, type RepairMode } from '../../core/ops/check.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { isJson, usageError } from './info.ts';
import { usageExit } from '../qemu-options.ts';

/** qemu-img's dump_human_image_check. */
function checkHuman(r: CheckReport): string {
  const lines: string[] = [];
  if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) {
    lines.push('No errors were found on the image.');
  } else {
    if (r.corruptions) lines.push('', `${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
    if (r.leaks) lines.push('', `${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
    if (r.checkErrors) lines.push('', `${r.checkErrors} internal errors have occurred during the check.`);
  }
  if (r.percent) {
    lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${r.percent.allocated}% allocated, ` +
      `${r.percent.fragmented}% fragmented, ${r.percent.compressed}% compressed clusters`);
  }
  if (r.imageEndOffset) lines.push(`Image end offset: ${r.imageEndOffset}`);
  return lines.join('\n');
}

export const check: Command = {
  name: 'check',
  formats: ['qcow2', 'raw'],
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
    // qemu-img takes a file that is not qcow2 as raw, which has no check: exit 63 (ENOTSUP)
    const noChecks = () => {
      err('qcowscope: This image format does not support checks');
      return 63;
    };
    if (values.format === 'raw' || notQcow2(file)) return noChecks();
    // qemu-img check opens the backing chain too: an overlay whose backing file cannot be opened is not checked
    const img = await openImage(file, { checkMode: true, writable: repair !== undefined });
    try {
      const r = await checkReport(img, {
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

/** A regular file whose first bytes are not qcow2's magic (an empty one too): what qemu-img probes as raw. */
function notQcow2(file: string): boolean {
  let fd: number | undefined;
  try {
    if (!fs.statSync(file).isFile()) return false;
    fd = fs.openSync(file, 'r');
    const b = Buffer.alloc(4);
    return fs.readSync(fd, b, 0, 4, 0) < 4 || b.readUInt32BE(0) !== QCOW_MAGIC;
  } catch {
    return false; // the open reports it in qemu-img's words
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
