// Opening images from the command line: the Node file store, and the backing-file resolver of the
// engine layer (core/ops/open.ts) for paths: a relative backing file name is relative to the
// directory of the image naming it, as QEMU resolves it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QcowError } from '../core/errors.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import { RawLayer, type Layer } from '../core/image/layer.ts';
import { openImage as openOp, probeFormat as probeStoreFormat, type BackingResolver, type ImageOpenOptions } from '../core/ops/open.ts';
import { NodeFileStore } from './node-file-store.ts';
import { dataSegments, holeMapFor, startSegmentScan, type SegmentScan } from './holes.ts';

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

export interface CliOpenOptions extends Omit<ImageOpenOptions, 'resolver' | 'backing'> {
  /** Don't open the backing chain (info, check and snapshot work without it). */
  noBacking?: boolean;
  /** A missing external data file is no error (qemu-img info opens with BDRV_O_NO_IO); otherwise the open fails as QEMU's does. */
  dataFileOptional?: boolean;
  /** Errors as the open reports them, without "Could not open 'IMAGE': " (create names the new image instead). */
  unprefixed?: boolean;
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
 * Backing files and data files by path, as QEMU finds them: a backing file relative to the image
 * naming it, a data file as its name is written (QEMU opens the header's name as it is, so a
 * relative one is found from the current directory).
 */
const fileResolver = (dataFileOptional: boolean): BackingResolver => ({
  async backing(image, name, format) {
    const p = resolveBackingPath(image.name, name);
    if (!fs.existsSync(p)) {
      throw new QcowError('BACKING_MISSING', `Could not open backing file: Could not open '${p}': No such file or directory`, { structure: 'backing file name', backingFile: name, path: p });
    }
    let store: NodeFileStore;
    try {
      refuseDirectory(p);
      store = NodeFileStore.open(p);
    } catch (e) {
      throw e instanceof QcowError ? e.prefixed('Could not open backing file: ') : e;
    }
    return {
      name: p,
      store,
      format,
      // holes of a sparse raw file are zeros to qemu-img map (file-posix's SEEK_DATA/SEEK_HOLE)
      dataSegments: () => dataSegments(p),
      // a metadata-preallocated backing file's holes read as zeros in qemu-img map, as on top
      opened: (img) => {
        img.holesForLayer = () => holeMapFor(img, p);
      },
    };
  },
  async dataFile(_image, name, writable) {
    if (fs.existsSync(name)) return NodeFileStore.open(name, { writable });
    if (dataFileOptional) return null;
    throw new QcowError('DATA_FILE_REQUIRED', `Could not open '${name}': No such file or directory`, { structure: 'data file name', dataFile: name });
  },
});

/** Where open warnings go: the run's stderr (main.ts sets it for each command line). */
let warningSink: (text: string) => void = (t) => process.stderr.write(t);

export function setOpenWarningSink(sink: (text: string) => void): void {
  warningSink = sink;
}

/**
 * qemu-img's warnings at open, for each link of the chain from the top, in its words: the stale
 * bitmaps' hint ends without a newline, as QEMU prints it (error_printf).
 */
function printOpenWarnings(img: Qcow2Image): void {
  for (let link: Layer | null = img; link instanceof Qcow2Image; link = link.backing) {
    for (const w of link.openWarnings) {
      warningSink(`qcowscope: warning: ${w}\nSome clusters may be leaked, run 'qcowscope check -r' on the image file to fix.`);
    }
  }
}

/**
 * Opens IMAGE as qemu-img -f qcow2 does (a dirty image opened writable is repaired first). A
 * failure reads as qemu-img's does: "Could not open 'IMAGE': <why>", where <why> is the file
 * driver's own "Could not open 'IMAGE': ..." for a missing file, and "Could not open backing file:
 * <why>" for a failure in the backing chain.
 */
export async function openImage(file: string, opts: CliOpenOptions = {}): Promise<Qcow2Image> {
  const { noBacking, dataFileOptional, unprefixed, ...open } = opts;
  try {
    refuseDirectory(file);
    const store = NodeFileStore.open(file, { writable: !!open.writable });
    try {
      const img = await openOp({ name: file, store }, { refuseEncrypted: !dataFileOptional, ...open, resolver: fileResolver(!!dataFileOptional), followBacking: !noBacking });
      printOpenWarnings(img);
      return img;
    } catch (e) {
      await store.close();
      throw e;
    }
  } catch (e) {
    throw e instanceof QcowError && !unprefixed ? e.prefixed(`Could not open '${file}': `) : e;
  }
}

/** openImage(file) with the scan of its data segments (for holeMapFor, made only if it asks). */
export async function openImageScanning(file: string): Promise<{ img: Qcow2Image; scan: SegmentScan }> {
  const scan = startSegmentScan(file);
  try {
    return { img: await openImage(file), scan };
  } catch (e) {
    scan.cancel();
    throw e;
  }
}

/** A raw file as qemu-img opens one (`-f raw`, or probed): its data segments are its data. */
export function openRaw(file: string): RawLayer {
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    throw new QcowError('IO_ERROR', `Could not open '${file}': Could not open '${file}': No such file or directory`, { path: file });
  }
  return new RawLayer(NodeFileStore.open(file), () => dataSegments(file));
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

/** The format of a backing file its header names none for: qcow2 by its magic, else raw (QEMU's probe). */
export async function probeFormat(file: string): Promise<'qcow2' | 'raw'> {
  const store = NodeFileStore.open(file);
  try {
    return await probeStoreFormat(store);
  } finally {
    await store.close();
  }
}
