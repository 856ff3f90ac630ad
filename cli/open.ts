// Opening images from the command line: the Node file store, and the backing chain resolved as
// QEMU does (a relative backing file name is relative to the directory of the image naming it).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCheck } from '../core/analysis/check.ts';
import { QcowError } from '../core/errors.ts';
import { INCOMPAT_DIRTY, MAX_BACKING_CHAIN_DEPTH, QCOW_MAGIC } from '../core/format/constants.ts';
import { be32 } from '../core/format/bytes.ts';
import { RawLayer, type Layer } from '../core/image/layer.ts';
import { Qcow2Image, type OpenOptions } from '../core/image/qcow2-image.ts';
import { NodeFileStore } from './node-file-store.ts';
import { dataSegments, holeMapFor } from './holes.ts';

/**
 * The path QEMU resolves a backing file name to, relative to the image that names it: QEMU's
 * path_combine, i.e. the image path up to its last '/' followed by the name, not normalised
 * ("./sub/../top.qcow2" + "base.qcow2" → "./sub/../base.qcow2"), which qemu-img info prints as
 * full-backing-filename. The OS resolves the result as QEMU's open does (".." after a symlink).
 */
export function resolveBackingPath(imagePath: string, backing: string): string {
  if (path.isAbsolute(backing)) return backing;
  const slash = imagePath.lastIndexOf('/');
  return slash < 0 ? backing : imagePath.slice(0, slash + 1) + backing;
}

export interface CliOpenOptions extends Omit<OpenOptions, 'backing' | 'dataFile'> {
  /** Don't open the backing chain (info, check and snapshot work without it). */
  noBacking?: boolean;
}

/** QEMU's file driver takes regular files (and block devices), never a directory. */
function refuseDirectory(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return; // the open reports it
  }
  if (st.isDirectory()) {
    throw new QcowError('IO_ERROR', `'file' driver requires '${file}' to be a regular file`, { path: file });
  }
}

/**
 * Opens IMAGE as qemu-img -f qcow2 does. A failure reads as qemu-img's does: "Could not open
 * 'IMAGE': <why>", where <why> is the file driver's own "Could not open 'IMAGE': ..." for a
 * missing file, and "Could not open backing file: <why>" for a failure in the backing chain.
 */
export async function openImage(file: string, opts: CliOpenOptions = {}): Promise<Qcow2Image> {
  try {
    return await openChainLink(file, opts, 0);
  } catch (e) {
    throw couldNotOpen(file, e);
  }
}

/** The error with "Could not open 'FILE': " in front. */
function couldNotOpen(file: string, e: unknown): unknown {
  return e instanceof QcowError ? e.prefixed(`Could not open '${file}': `) : e;
}

async function openChainLink(file: string, opts: CliOpenOptions, depth: number): Promise<Qcow2Image> {
  refuseDirectory(file);
  const store = NodeFileStore.open(file, { writable: !!opts.writable });
  try {
    const header = await Qcow2Image.readHeader(store);
    let backing: Layer | null = null;
    if (header.backingFile !== undefined && !opts.noBacking) {
      backing = await openBacking(file, header.backingFile, header.backingFormat, depth + 1);
    }
    let dataFile = null;
    if (header.dataFile !== undefined) {
      const p = resolveBackingPath(file, header.dataFile);
      if (fs.existsSync(p)) dataFile = NodeFileStore.open(p, { writable: !!opts.writable });
    }
    return await Qcow2Image.open(store, { ...opts, backing, dataFile });
  } catch (e) {
    await store.close();
    throw e;
  }
}

async function openBacking(imagePath: string, name: string, format: string | undefined, depth: number): Promise<Layer> {
  if (depth > MAX_BACKING_CHAIN_DEPTH) {
    throw new QcowError('BACKING_CHAIN_TOO_DEEP', `Backing chain of '${imagePath}' is deeper than ${MAX_BACKING_CHAIN_DEPTH} images`, { structure: 'backing file name' });
  }
  const p = resolveBackingPath(imagePath, name);
  if (!fs.existsSync(p)) {
    throw new QcowError('BACKING_MISSING', `Could not open backing file: Could not open '${p}': No such file or directory`, { structure: 'backing file name', backingFile: name, path: p });
  }
  const fmt = format ?? probeFormat(p);
  if (fmt === 'qcow2') {
    let img: Qcow2Image;
    try {
      img = await openChainLink(p, {}, depth);
    } catch (e) {
      throw e instanceof QcowError ? e.prefixed('Could not open backing file: ') : e;
    }
    // a metadata-preallocated backing file's holes read as zeros in qemu-img map, as on top
    img.holesForLayer = () => holeMapFor(img, p);
    return img;
  }
  // holes of a sparse raw file are zeros to qemu-img map (file-posix's SEEK_DATA/SEEK_HOLE)
  if (fmt === 'raw') return new RawLayer(NodeFileStore.open(p), () => dataSegments(p));
  throw new QcowError('NOT_SUPPORTED', `Backing file format '${fmt}' is not supported`, { structure: 'backing format extension', format: fmt });
}

/** Bytes the file occupies on disk, as qemu-img's actual-size. */
export function actualSize(file: string): number | undefined {
  try {
    const st = fs.statSync(file);
    return st.blocks * 512;
  } catch {
    return undefined;
  }
}

/**
 * QEMU repairs a dirty (lazy-refcount) image when it opens it for writing, before a guest write or
 * a snapshot operation; so do we (the write and snapshot commands call this first).
 */
export async function repairIfDirty(file: string): Promise<void> {
  // the header is enough to tell; a file that cannot be read is left to the open that follows
  let dirty = false;
  try {
    const probe = NodeFileStore.open(file);
    try {
      dirty = ((await Qcow2Image.readHeader(probe)).incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
    } finally {
      await probe.close();
    }
  } catch {
    return;
  }
  if (!dirty) return;
  const img = await openImage(file, { writable: true, checkMode: true, noBacking: true });
  try {
    const r = await runCheck(img, { repair: 'all' });
    if (r.failure !== undefined || r.corruptions > 0 || r.checkErrors > 0) {
      throw new QcowError('METADATA_CORRUPT', `Could not repair dirty image: ${r.failure ?? 'errors remain after repair'}`, {});
    }
  } finally {
    await img.close();
  }
}

/** The format of a backing file its header names none for: qcow2 by its magic, else raw (QEMU's probe). */
export function probeFormat(file: string): 'qcow2' | 'raw' {
  const fd = fs.openSync(file, 'r');
  try {
    const head = new Uint8Array(4);
    return fs.readSync(fd, head, 0, 4, 0) === 4 && be32(head, 0) === QCOW_MAGIC ? 'qcow2' : 'raw';
  } finally {
    fs.closeSync(fd);
  }
}
