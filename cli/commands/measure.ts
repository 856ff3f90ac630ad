// `qcowscope measure [--output=json|human] [-O qcow2|raw] [-o OPTIONS] [-l SNAPSHOT] IMAGE` and
// `measure --size SIZE [-O qcow2|raw] [-o OPTIONS]`: qemu-img measure's figures, output, checks
// and messages (the engine is core/analysis/measure.ts). As in qemu-img, the target format
// defaults to raw, and the -o options are the target format's creation options, typed as QEMU's
// option lists type them (a size, a number, on/off) and checked before the measure.
import { QcowError } from '../../core/errors.ts';
import { formatMeasure, measure, type MeasureSource, type MeasureTarget } from '../../core/analysis/measure.ts';
import { findSnapshot, type SnapshotRef } from '../../core/image/snapshot.ts';
import * as fs from 'node:fs';
import { openImage, openRaw, probeFormat } from '../open.ts';
import { holeMapFor, startSegmentScan } from '../holes.ts';
import type { Command } from '../command.ts';
import { isJson, usageError } from './info.ts';
import { cvtnum, FILE_OPTIONS, parseOptionList, QCOW2_OPTIONS, rewordError, validOptionList, type OptionType } from '../qemu-options.ts';
import { snapshotParam } from './export.ts';

/** The creation options QEMU lists for each target format. */
const TARGET_OPTIONS: Record<'qcow2' | 'raw', Record<string, OptionType>> = { qcow2: QCOW2_OPTIONS, raw: FILE_OPTIONS };

/** Formats qemu-img knows that create images but cannot measure them. */
const NO_MEASURE = ['vdi', 'vhdx', 'qed', 'qcow', 'vpc', 'vmdk', 'parallels', 'file'];

/** -o as QEMU's option list parser reads it against the target format's options. */
function parseTargetOptions(text: string, format: 'qcow2' | 'raw', into: MeasureTarget): void {
  let options;
  try {
    options = parseOptionList(text, TARGET_OPTIONS[format]);
  } catch (e) {
    throw rewordError(e, '', `Invalid options for file format '${format}'`);
  }
  for (const o of options) {
    switch (o.key) {
      case 'size': into.size = BigInt(o.size!); break;
      case 'cluster_size': into.clusterSize = o.size; break;
      case 'refcount_bits': into.refcountBits = Number(o.text); break;
      case 'compat': into.compat = o.text; break;
      case 'extended_l2': into.extendedL2 = o.on; break;
      case 'preallocation': into.preallocation = o.text; break;
      case 'backing_file': into.backingFile = true; break;
      case 'encrypt.format':
        if (o.text === 'luks') throw new QcowError('NOT_SUPPORTED', 'measure: LUKS-encrypted targets are not supported');
        break;
      default: break; // typed and accepted; no bearing on the measure
    }
  }
}

export const measureCmd: Command = {
  name: 'measure',
  formats: ['qcow2', 'raw'],
  usage: 'measure [--output=json|human] [-O qcow2|raw] [-o OPTIONS] [-l snapshot.name=NAME|snapshot.id=ID] (--size SIZE | IMAGE)',
  options: {
    output: { type: 'string' },
    json: { type: 'boolean' },
    'output-format': { type: 'string', short: 'O' },
    options: { type: 'string', short: 'o', multiple: true },
    snapshot: { type: 'string', short: 'l' },
    size: { type: 'string' },
  },
  async run({ values, positionals, out }) {
    const optionTexts = (values.options as string[] | undefined) ?? [];
    for (const t of optionTexts) if (!validOptionList(t)) throw usageError(`Invalid option list: ${t}`);
    if (values.output !== undefined && values.output !== 'json' && values.output !== 'human') {
      throw usageError('--output must be used with human or json as argument.');
    }
    const sizeArg = values.size as string | undefined;
    const size = sizeArg === undefined ? undefined : BigInt(cvtnum('image size', sizeArg));
    const snapArg = values.snapshot as string | undefined;
    let ref: SnapshotRef | undefined;
    if (snapArg !== undefined) {
      try {
        ref = snapshotParam(snapArg);
      } catch (e) {
        throw usageError(`${(e as Error).message}\nFailed in parsing snapshot param '${snapArg}'`);
      }
    }
    if (positionals.length > 1) throw usageError('At most one filename argument is allowed.');
    const file = positionals[0];
    if (file === undefined && (values.format !== undefined || ref !== undefined)) {
      throw usageError('--image-opts, -f, and -l require a filename argument.');
    }
    if (file !== undefined && size !== undefined) throw usageError('--size N cannot be used together with a filename.');
    if (file === undefined && size === undefined) throw usageError('Either --size N or one filename must be specified.');

    // a file that is not qcow2 is measured as raw, as qemu-img probes it (-f raw says so)
    const fmt = file === undefined ? undefined : (values.format as string | undefined) ?? (fs.existsSync(file) ? await probeFormat(file) : 'qcow2');
    const raw = fmt === 'raw' ? openRaw(file!) : undefined;
    const scan = file !== undefined && !raw ? startSegmentScan(file) : undefined;
    let img;
    try {
      img = file !== undefined && !raw ? await openImage(file) : undefined;
    } catch (e) {
      scan?.cancel();
      throw e;
    }
    try {
      let source: MeasureSource | undefined;
      if (raw) {
        if (ref !== undefined) throw new QcowError('NOT_SUPPORTED', 'Failed to load snapshot: Block format \'raw\' used by device \'\' does not support temporarily loading internal snapshots');
        source = { raw };
      } else if (img) {
        let view = img.activeView();
        if (ref !== undefined) {
          const sn = findSnapshot(img, ref);
          if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', 'Failed to load snapshot: Can\'t find snapshot', { snapshot: ref });
          view = await img.snapshotView(sn);
        }
        source = { img, view, holes: await holeMapFor(img, file!, scan) };
      }
      const format = (values['output-format'] as string | undefined) ?? 'raw';
      if (format !== 'qcow2' && format !== 'raw') {
        if (NO_MEASURE.includes(format)) throw new QcowError('NOT_SUPPORTED', `Block driver '${format}' does not support size measurement`);
        throw new QcowError('NOT_SUPPORTED', `Unknown file format '${format}'`);
      }
      const target: MeasureTarget = { format };
      if (optionTexts.length > 0) parseTargetOptions(optionTexts.join(','), format, target);
      if (size !== undefined) target.size = size;
      out(formatMeasure(await measure(target, source), isJson(values)));
      return 0;
    } finally {
      scan?.cancel();
      await img?.close();
      await raw?.store.close();
    }
  },
};
