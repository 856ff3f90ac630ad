// `qcowscope create [-o cluster_size=N,refcount_bits=N,compat=0.10|1.1,lazy_refcounts=on,
// extended_l2=on,compression_type=zlib|zstd,preallocation=off|metadata|falloc|full] [-b BACKING -F FMT] IMAGE
// [SIZE]`: like `qemu-img create -f qcow2`, same options, checks and messages, and for the same
// options the same bytes. SIZE takes k/M/G/T/P/E suffixes (powers of 1024, fractions allowed);
// with -b and no SIZE the backing file's virtual size is used.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import { createImage, type CreateOptions } from '../../core/image/create.ts';
import { openImage, resolveBackingPath } from '../open.ts';
import { NodeFileStore } from '../node-file-store.ts';
import type { Command } from '../command.ts';
import { usageError } from './info.ts';

const SUFFIXES: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** A byte count as qemu-img reads one: a number with an optional k/M/G/T/P/E suffix (×1024). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpe]?)\s*$/i.exec(text);
  const v = m ? Number(m[1]) * SUFFIXES[m[2]!.toLowerCase()]! : NaN;
  if (!Number.isFinite(v) || v < 0) {
    throw usageError('Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  // beyond 2^53 the value is the nearest double: create checks its size against qcow2's limits
  if (v >= 2 ** 63) throw usageError('Invalid image size specified. Must be between 0 and 9223372036854775807.');
  return Math.floor(v);
}

function onOff(key: string, v: string): boolean {
  if (v === 'on' || v === 'true' || v === 'yes') return true;
  if (v === 'off' || v === 'false' || v === 'no') return false;
  throw usageError(`Parameter '${key}' expects 'on' or 'off'`);
}

/** The options as given: `size=` and `compat=` keep their text for the "Formatting" line. */
type CliCreateOptions = Partial<CreateOptions> & { sizeOpt?: number; compatText?: string };

/** Parse `-o key=value,...` (QEMU's option syntax; a ',,' is a literal comma). */
export function parseCreateOptions(text: string, into: CliCreateOptions): void {
  const parts = text.replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','));
  for (const part of parts) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const v = eq < 0 ? 'on' : part.slice(eq + 1);
    switch (key) {
      case 'cluster_size': into.clusterSize = parseSize(v); break;
      case 'refcount_bits': into.refcountBits = Number(v); break;
      case 'compat':
        into.compatText = v;
        if (v === '0.10' || v === 'v2') into.compat = '0.10';
        else if (v === '1.1' || v === 'v3') into.compat = '1.1';
        else throw usageError(`Parameter 'version' does not accept value '${v}'`);
        break;
      case 'lazy_refcounts': into.lazyRefcounts = onOff(key, v); break;
      case 'extended_l2': into.extendedL2 = onOff(key, v); break;
      case 'compression_type':
        if (v !== 'zlib' && v !== 'zstd') throw usageError(`Parameter 'compression-type' does not accept value '${v}'`);
        into.compressionType = v;
        break;
      case 'preallocation':
        if (v !== 'off' && v !== 'metadata' && v !== 'falloc' && v !== 'full') throw usageError(`Parameter 'preallocation' does not accept value '${v}'`);
        into.preallocation = v;
        break;
      case 'backing_file': into.backingFile = v; break;
      case 'backing_fmt': into.backingFormat = v; break;
      case 'size': into.sizeOpt = parseSize(v); break;
      default: throw usageError(`Invalid parameter '${key}'`);
    }
  }
}

export const create: Command = {
  name: 'create',
  usage: 'create [-o cluster_size=N,refcount_bits=N,compat=0.10|1.1,lazy_refcounts=on,extended_l2=on,compression_type=zstd,preallocation=metadata|falloc|full] [-b BACKING -F qcow2|raw] IMAGE [SIZE]',
  options: {
    options: { type: 'string', short: 'o', multiple: true },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    format: { type: 'string', short: 'f' },
    quiet: { type: 'boolean', short: 'q' },
  },
  async run({ values, positionals, out }) {
    const [file, sizeArg] = positionals;
    if (!file || positionals.length > 2) throw usageError('create: expecting IMAGE [SIZE]');
    if (values.format !== undefined && values.format !== 'qcow2') throw usageError(`create: only the qcow2 format is supported`);
    const o: CliCreateOptions = {};
    for (const text of (values.options as string[] | undefined) ?? []) parseCreateOptions(text, o);
    if (typeof values.backing === 'string') o.backingFile = values.backing;
    if (typeof values['backing-format'] === 'string') o.backingFormat = values['backing-format'];
    if (sizeArg !== undefined && o.sizeOpt !== undefined) throw usageError(`${file}: The image size must be specified only once`);
    let size = sizeArg !== undefined ? parseSize(sizeArg) : o.sizeOpt;
    if (o.backingFile !== undefined) {
      if (o.backingFormat === undefined) throw new QcowError('INVALID_ARGUMENT', `${file}: Backing file specified without backing format`, {});
      const backingSize = await backingVirtualSize(file, o.backingFile, o.backingFormat);
      size ??= backingSize;
    }
    if (size === undefined) throw usageError(`${file}: Image creation needs a size parameter`);
    const { sizeOpt: _size, compatText, ...given } = o;
    const opts: CreateOptions = { ...given, size };
    if (!values.quiet) out(formattingLine(file, opts, compatText));
    const store = NodeFileStore.create(file);
    try {
      await createImage(store, opts);
    } catch (e) {
      await store.close();
      fs.rmSync(file, { force: true });
      // qemu-img names the file in front of the format's own refusals
      if (e instanceof QcowError && e.code === 'INVALID_ARGUMENT') throw e.prefixed(`${file}: `);
      throw e;
    }
    await store.close();
    return 0;
  },
};

/** The line qemu-img create prints before it creates the image. */
function formattingLine(file: string, opts: CreateOptions, compatText: string | undefined): string {
  // qemu-img 7.2's order; compat only when given, as given
  const shown = [`cluster_size=${opts.clusterSize ?? 65536}`, `extended_l2=${opts.extendedL2 ? 'on' : 'off'}`];
  if (opts.preallocation) shown.push(`preallocation=${opts.preallocation}`);
  shown.push(`compression_type=${opts.compressionType ?? 'zlib'}`, `size=${BigInt(opts.size)}`);
  if (compatText !== undefined) shown.push(`compat=${compatText}`);
  if (opts.backingFile !== undefined) shown.push(`backing_file=${opts.backingFile}`, `backing_fmt=${opts.backingFormat}`);
  shown.push(`lazy_refcounts=${opts.lazyRefcounts ? 'on' : 'off'}`, `refcount_bits=${opts.refcountBits ?? 16}`);
  return `Formatting '${file}', fmt=qcow2 ${shown.join(' ')}`;
}

/** The backing file must exist (QEMU opens it); its virtual size is the default image size. */
async function backingVirtualSize(imagePath: string, backing: string, format: string): Promise<number> {
  const p = resolveBackingPath(imagePath, backing);
  if (!fs.existsSync(p)) {
    throw new QcowError('BACKING_MISSING', `${imagePath}: Could not open '${p}': No such file or directory`, { backingFile: backing });
  }
  if (format === 'raw') return fs.statSync(p).size;
  if (format !== 'qcow2') throw new QcowError('NOT_SUPPORTED', `Backing file format '${format}' is not supported`, { format });
  const img = await openImage(p, { noBacking: true });
  try {
    return img.virtualSize;
  } finally {
    await img.close();
  }
}
