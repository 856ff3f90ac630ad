// `qcowscope create [-o cluster_size=N,refcount_bits=N,compat=0.10|1.1,lazy_refcounts=on,
// extended_l2=on,compression_type=zlib|zstd,preallocation=off|metadata|falloc|full] [-b BACKING -F FMT] IMAGE
// [SIZE]`: like `qemu-img create -f qcow2`, same options, checks and messages, and for the same
// options the same bytes. SIZE takes k/M/G/T/P/E suffixes (powers of 1024, fractions allowed);
// with -b and no SIZE the backing file's virtual size is used.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import { createImage, type CreateOptions } from '../../core/image/create.ts';
import { openImage, probeFormat, resolveBackingPath } from '../open.ts';
import { NodeFileStore } from '../node-file-store.ts';
import type { Command } from '../command.ts';
import { usageError } from './info.ts';
import { cvtnum, parseOptionList, QCOW2_OPTIONS, rewordError, usageExit, validOptionList, withHint } from '../qemu-options.ts';

/** A byte count as qemu-img reads one: a number with an optional k/M/G/T/P/E suffix (×1024). */
export function parseSize(text: string): number {
  return cvtnum('image size', text);
}

/**
 * The options as given: `size=` and `compat=` keep their text for the "Formatting" line, and a
 * value qcow2 refuses (compat, compression_type, preallocation) is refused only after that line,
 * as qemu-img does (its option parser takes any string; qcow2's create refuses it).
 */
type CliCreateOptions = Partial<CreateOptions> & { sizeOpt?: number; compatText?: string; shownText?: Record<string, string>; refusal?: string };

/** Parse `-o key=value,...` (QEMU's option syntax and types; a ',,' is a literal comma). */
function parseCreateOptions(text: string, into: CliCreateOptions): void {
  const refuse = (message: string): void => {
    into.refusal ??= message;
  };
  for (const { key, text: v, size, on } of parseOptionList(text, QCOW2_OPTIONS)) {
    switch (key) {
      case 'cluster_size': into.clusterSize = size; break;
      case 'refcount_bits': into.refcountBits = Number(v); break;
      case 'compat':
        into.compatText = v;
        if (v === '0.10' || v === 'v2') into.compat = '0.10';
        else if (v === '1.1' || v === 'v3') into.compat = '1.1';
        else refuse(`Parameter 'version' does not accept value '${v}'`);
        break;
      case 'lazy_refcounts': into.lazyRefcounts = on; break;
      case 'extended_l2': into.extendedL2 = on; break;
      case 'compression_type':
        (into.shownText ??= {}).compression_type = v;
        if (v === 'zlib' || v === 'zstd') into.compressionType = v;
        else refuse(`Parameter 'compression-type' does not accept value '${v}'`);
        break;
      case 'preallocation':
        (into.shownText ??= {}).preallocation = v;
        if (v === 'off' || v === 'metadata' || v === 'falloc' || v === 'full') into.preallocation = v;
        else refuse(`Parameter 'preallocation' does not accept value '${v}'`);
        break;
      case 'backing_file': into.backingFile = v; break;
      case 'backing_fmt': into.backingFormat = v; break;
      case 'size': into.sizeOpt = size; break;
      default: throw usageError(`Invalid parameter '${key}'`);
    }
  }
}

export const create: Command = {
  name: 'create',
  usage: 'create [-o cluster_size=N,refcount_bits=N,compat=0.10|1.1,lazy_refcounts=on,extended_l2=on,compression_type=zstd,preallocation=metadata|falloc|full] [-u] [-b BACKING -F qcow2|raw] IMAGE [SIZE]',
  options: {
    options: { type: 'string', short: 'o', multiple: true },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    format: { type: 'string', short: 'f' },
    quiet: { type: 'boolean', short: 'q' },
    // -u: the backing file is not opened (it may not exist yet); the size must then be given
    unsafe: { type: 'boolean', short: 'u' },
  },
  async run({ values, positionals, out }) {
    const [file, sizeArg] = positionals;
    if (!file) throw usageExit('Expecting image file name');
    if (positionals.length > 2) throw usageExit(`Unexpected argument: ${positionals[2]}`);
    if (values.format !== undefined && values.format !== 'qcow2') throw usageError(`create: only the qcow2 format is supported`);
    const o: CliCreateOptions = {};
    for (const text of (values.options as string[] | undefined) ?? []) {
      if (!validOptionList(text)) throw usageError(`Invalid option list: ${text}`);
      try {
        parseCreateOptions(text, o);
      } catch (e) {
        throw rewordError(e, `${file}: `);
      }
    }
    if (typeof values.backing === 'string') o.backingFile = values.backing;
    if (typeof values['backing-format'] === 'string') o.backingFormat = values['backing-format'];
    if (sizeArg !== undefined && o.sizeOpt !== undefined) throw usageError(`${file}: The image size must be specified only once`);
    let size = sizeArg !== undefined ? parseSize(sizeArg) : o.sizeOpt;
    if (o.backingFile !== undefined && values.unsafe === true) {
      if (o.backingFormat === undefined) throw usageError(`${file}: Backing file specified without backing format`);
    } else if (o.backingFile !== undefined) {
      if (o.backingFormat === undefined) {
        // qemu-img opens the backing file first, and names the format it detects
        const p = openableBacking(file, o.backingFile);
        throw withHint(new QcowError('INVALID_ARGUMENT', `${file}: Backing file specified without backing format`, {}), `Detected format of ${await probeFormat(p)}.`);
      }
      const backingSize = await backingVirtualSize(file, o.backingFile, o.backingFormat);
      size ??= backingSize;
    }
    if (size === undefined) throw usageError(`${file}: Image creation needs a size parameter`);
    const { sizeOpt: _size, compatText, shownText, refusal, ...given } = o;
    const opts: CreateOptions = { ...given, size };
    if (!values.quiet) out(formattingLine(file, opts, compatText, shownText ?? {}));
    if (refusal !== undefined) throw usageError(`${file}: ${refusal}`);
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
function formattingLine(file: string, opts: CreateOptions, compatText: string | undefined, given: Record<string, string>): string {
  // qemu-img 7.2's order; compat only when given, as given (so are values it refuses after this line)
  const shown = [`cluster_size=${opts.clusterSize ?? 65536}`, `extended_l2=${opts.extendedL2 ? 'on' : 'off'}`];
  const prealloc = given.preallocation ?? opts.preallocation;
  if (prealloc) shown.push(`preallocation=${prealloc}`);
  shown.push(`compression_type=${given.compression_type ?? opts.compressionType ?? 'zlib'}`, `size=${BigInt(opts.size)}`);
  if (compatText !== undefined) shown.push(`compat=${compatText}`);
  if (opts.backingFile !== undefined) shown.push(`backing_file=${opts.backingFile}`, `backing_fmt=${opts.backingFormat}`);
  shown.push(`lazy_refcounts=${opts.lazyRefcounts ? 'on' : 'off'}`, `refcount_bits=${opts.refcountBits ?? 16}`);
  return `Formatting '${file}', fmt=qcow2 ${shown.join(' ')}`;
}

/** The backing file's path, which must be a file (QEMU opens it, and says it could not otherwise). */
function openableBacking(imagePath: string, backing: string): string {
  const p = resolveBackingPath(imagePath, backing);
  let why: string | undefined;
  if (!fs.existsSync(p)) why = `Could not open '${p}': No such file or directory`;
  else if (fs.statSync(p).isDirectory()) why = `'file' driver requires '${p}' to be a regular file`;
  if (why !== undefined) throw withHint(new QcowError('BACKING_MISSING', `${imagePath}: ${why}`, { backingFile: backing }), 'Could not open backing image.\n');
  return p;
}

/** The backing file must exist (QEMU opens it); its virtual size is the default image size. */
async function backingVirtualSize(imagePath: string, backing: string, format: string): Promise<number> {
  const p = openableBacking(imagePath, backing);
  if (format === 'raw') return fs.statSync(p).size;
  if (format !== 'qcow2') throw new QcowError('NOT_SUPPORTED', `Backing file format '${format}' is not supported`, { format });
  // QEMU opens it with its chain but without I/O (BDRV_O_NO_IO): a missing data file or a missing
  // key is no error there, a broken chain is, reported under the new image's name
  let img: Awaited<ReturnType<typeof openImage>>;
  try {
    img = await openImage(p, { dataFileOptional: true, unprefixed: true });
  } catch (e) {
    throw e instanceof QcowError ? withHint(e.prefixed(`${imagePath}: `), 'Could not open backing image.\n') : e;
  }
  try {
    return img.virtualSize;
  } finally {
    await img.close();
  }
}
