// Opening an image for an operation, the one way the command line and the worker both do it: the
// backing chain found through a resolver the caller supplies (paths on the command line, the
// files the person chose in the browser) and followed to one depth limit, QEMU's words when a
// link fails, and the repair QEMU makes when it opens a dirty image for writing.
import { QcowError } from '../errors.ts';
import { be32 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { MAX_BACKING_CHAIN_DEPTH, QCOW_MAGIC } from '../format/constants.ts';
import { encodeHeader, type Qcow2Header } from '../format/header.ts';
import type { ImageStore } from '../io/store.ts';
import { RawLayer, type DataSegments, type Layer } from '../image/layer.ts';
import { Qcow2Image, type OpenOptions } from '../image/qcow2-image.ts';
import { checkImage } from '../analysis/check.ts';
import { findWriteDamage } from '../image/snapshot-precheck.ts';

export { MAX_BACKING_CHAIN_DEPTH };

/** An image file: its name in messages and its store. */
export interface ChainLink {
  /** The path on the command line, the file's name in the browser. */
  name: string;
  store: ImageStore;
}

/** A backing file the resolver found (its store is then owned by the opened chain). */
export interface BackingFile extends ChainLink {
  /** 'qcow2' or 'raw' when the header names it; undefined: probed by its magic, as QEMU does. */
  format?: string;
  /** Raw files: the data segments of the file (its holes read as zeros in a map). */
  dataSegments?: DataSegments;
  /** Called with a qcow2 backing file once it is open (the command line attaches its hole map). */
  opened?(img: Qcow2Image): void;
}

/** Where the backing files of a chain come from. */
export interface BackingResolver {
  /**
   * The backing file `name` that `image`'s header names (`format`: the header's backing format),
   * `depth` links below the image first opened (1: its own backing file). Throws, in the
   * resolver's own words, when there is no such file.
   */
  backing(image: ChainLink, name: string, format: string | undefined, depth: number): Promise<BackingFile>;
  /** The external data file `name` of `image`, or null when there is none to open. */
  dataFile?(image: ChainLink, name: string, writable: boolean): Promise<ImageStore | null>;
}

export interface ImageOpenOptions extends Omit<OpenOptions, 'backing' | 'dataFile'> {
  /** Opens the backing chain and the data file; without it (and without `backing`) neither is opened. */
  resolver?: BackingResolver;
  /** False: the resolver opens only the data file, not the backing chain (qemu-img info, check, snapshot). */
  followBacking?: boolean;
  /** A backing layer the caller already holds (it stays the caller's if the open fails). */
  backing?: Layer | null;
  /**
   * Repair a dirty image (lazy refcounts left stale) opened writable, as QEMU's open does before
   * anything is written (qcow2_do_open); default true. Check mode never does (BDRV_O_CHECK).
   */
  repairDirty?: boolean;
  /**
   * Refuse an encrypted image anywhere in the chain, as qemu-img does without the key (which
   * qcowscope never takes): every verb that reads or writes through the image fails; only the
   * layout can be shown (qemu-img info opens without I/O).
   */
  refuseEncrypted?: boolean;
}

/**
 * Open `top` and, through `opts.resolver`, its backing chain. The top store stays the caller's
 * when the open fails; the stores the resolver handed out are closed. Once open, closing the image
 * closes every store of its chain.
 */
export async function openImage(top: ChainLink, opts: ImageOpenOptions = {}): Promise<Qcow2Image> {
  const { resolver, backing: given, repairDirty = true, followBacking = true, refuseEncrypted = false, ...open } = opts;
  let img: Qcow2Image;
  if (given !== undefined || !resolver) {
    if (refuseEncrypted) refuseIfEncrypted(await Qcow2Image.readHeader(top.store));
    img = await Qcow2Image.open(top.store, { ...open, backing: given ?? null });
  } else {
    img = await openLink(top, open, resolver, followBacking ? 0 : -1, refuseEncrypted);
  }
  if (img.writable) await clearAutoclearAsQemu(img);
  if (repairDirty && img.writable && !img.checkMode && img.isDirty) {
    try {
      await repairDirtyImage(img);
    } catch (e) {
      if (given === undefined) await img.backing?.close().catch(() => {});
      await img.dataFile?.close().catch(() => {});
      throw e;
    }
  }
  return img;
}

/** Open one link of a chain, `depth` below the first (-1: the first, without its backing chain). */
async function openLink(link: ChainLink, opts: OpenOptions, resolver: BackingResolver, depth: number, refuseEncrypted: boolean): Promise<Qcow2Image> {
  const header = await Qcow2Image.readHeader(link.store);
  if (refuseEncrypted) refuseIfEncrypted(header);
  let backing: Layer | null = null;
  let dataFile: ImageStore | null = null;
  try {
    if (header.backingFile !== undefined && depth >= 0) backing = await openBacking(link, header.backingFile, header.backingFormat, resolver, depth + 1, refuseEncrypted);
    if (header.dataFile !== undefined && resolver.dataFile) dataFile = await resolver.dataFile(link, header.dataFile, !!opts.writable);
    return await Qcow2Image.open(link.store, { ...opts, backing, dataFile });
  } catch (e) {
    await backing?.close().catch(() => {});
    await dataFile?.close().catch(() => {});
    throw e;
  }
}

async function openBacking(image: ChainLink, name: string, format: string | undefined, resolver: BackingResolver, depth: number, refuseEncrypted: boolean): Promise<Layer> {
  if (depth > MAX_BACKING_CHAIN_DEPTH) {
    throw new QcowError('BACKING_CHAIN_TOO_DEEP', `Backing chain of '${image.name}' is deeper than ${MAX_BACKING_CHAIN_DEPTH} images`, { structure: 'backing file name' });
  }
  const file = await resolver.backing(image, name, format, depth);
  try {
    const fmt = file.format ?? (await probeFormat(file.store));
    if (fmt === 'qcow2') {
      let img: Qcow2Image;
      try {
        img = await openLink(file, {}, resolver, depth, refuseEncrypted);
      } catch (e) {
        throw e instanceof QcowError ? e.prefixed('Could not open backing file: ') : e;
      }
      file.opened?.(img);
      return img;
    }
    if (fmt === 'raw') return new RawLayer(file.store, file.dataSegments);
    throw new QcowError('NOT_SUPPORTED', `Backing file format '${fmt}' is not supported`, { structure: 'backing format extension', format: fmt });
  } catch (e) {
    await file.store.close().catch(() => {});
    throw e;
  }
}

/** QEMU's crypto open without a key-secret (crypto/block-luks.c, block-qcow.c). */
function refuseIfEncrypted(header: { cryptMethod: number }): void {
  if (header.cryptMethod !== 0) {
    throw new QcowError('ENCRYPTED', "Parameter 'encrypt.key-secret' is required for cipher", { structure: 'header', offset: 32 });
  }
}

/**
 * QEMU's header update on a writable open (qcow2_do_open): autoclear bits it does not know are
 * cleared, and a bitmaps extension whose autoclear bit a program without bitmap support cleared is
 * dropped (its clusters are leaks for check -r). One header write, flushed; nothing otherwise.
 */
async function clearAutoclearAsQemu(img: Qcow2Image): Promise<void> {
  const h = img.header;
  const staleBitmaps = h.bitmaps !== undefined && (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n;
  if (!staleBitmaps && (h.autoclearFeatures & ~C.AUTOCLEAR_MASK) === 0n) return;
  // not on an image a write could not trust: nothing is written to it before it is repaired
  if (img.isCorrupt || (!img.checkMode && findWriteDamage(img))) return;
  const next: Qcow2Header = { ...h, autoclearFeatures: h.autoclearFeatures & C.AUTOCLEAR_MASK };
  if (staleBitmaps) delete next.bitmaps;
  await img.pwrite(0, encodeHeader(next), 'header: what QEMU clears on a writable open', true);
  await img.flush('header: autoclear bits cleared');
  img.setTables({ header: { ...next, bitmaps: next.bitmaps } });
}

/**
 * QEMU's repair of a dirty image on a writable open (qcow2_do_open): one `-r all` pass, which
 * rebuilds the refcounts from the tables and clears the dirty bit; refused ("Could not repair
 * dirty image") only when the check could not complete or met internal errors, as QEMU refuses.
 */
async function repairDirtyImage(img: Qcow2Image): Promise<void> {
  const r = await checkImage(img, { repair: 'all' });
  if (r.failure !== undefined || r.checkErrors > 0) {
    throw new QcowError('METADATA_CORRUPT', `Could not repair dirty image: ${r.failure ?? 'Input/output error'}`, {
      structure: 'header', corruptions: r.corruptions, checkErrors: r.checkErrors,
    });
  }
  await img.reload();
}

/** The format of a file whose header names none: qcow2 by its magic, else raw (QEMU's probe). */
export async function probeFormat(store: ImageStore): Promise<'qcow2' | 'raw'> {
  if (store.size() < 4) return 'raw';
  return be32(await store.read(0, 4), 0) === QCOW_MAGIC ? 'qcow2' : 'raw';
}
