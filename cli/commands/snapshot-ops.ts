// `qcowscope snapshot -c NAME | -a ID_OR_NAME | -d ID_OR_NAME IMAGE...`: internal snapshot
// create / revert / delete on one image or a group (all or none), through the engine layer
// (core/ops/snapshot.ts).
// `-a` and `-d` take an ID or a name, the ID first (docs/architecture.md §6). `--journal` prints every write
// the operation made, with its purpose, the flushes and the commit point.
// `--external OVERLAY` (once per image, in order): an external snapshot, i.e. a new overlay
// image whose backing file is the image (core/ops/snapshot.ts), all or none; the overlay files
// are written and published here (FileOverlayTarget).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQcowError, QcowError } from '../../core/errors.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { storeBitmapsAsOnClose } from '../../core/image/bitmap-ops.ts';
import type { Journal } from '../../core/image/journal.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { externalSnapshots as createOverlays, groupSnapshotOp, snapshotOp, type OverlayTarget } from '../../core/ops/snapshot.ts';
import { findSnapshot } from '../../core/image/snapshot.ts';
import { NodeFileStore } from '../node-file-store.ts';
import { openImage } from '../open.ts';
import type { CommandContext } from '../command.ts';

/** Refuse the same file given twice (two handles would plan the same free clusters). */
function assertDistinctFiles(files: string[]): void {
  const seen = new Map<string, string>();
  for (const f of files) {
    let key: string;
    try {
      const st = fs.statSync(f);
      key = `${st.dev}:${st.ino}`;
    } catch {
      continue; // openImage reports the missing file
    }
    const prev = seen.get(key);
    if (prev !== undefined) {
      throw new QcowError('INVALID_ARGUMENT', `'${f}' and '${prev}' are the same file`, { files: [prev, f] });
    }
    seen.set(key, f);
  }
}

/** Every image opened writable (a dirty one repaired first, as qemu-img does), or none. */
async function openAll(files: string[]): Promise<Qcow2Image[]> {
  const imgs: Qcow2Image[] = [];
  try {
    for (const f of files) imgs.push(await openImage(f, { writable: true })); // with its chain, as qemu-img snapshot opens it
  } catch (e) {
    for (const i of imgs) await i.close();
    throw e;
  }
  return imgs;
}

function formatJournal(j: Journal, file: string): string {
  const lines = [`${file}: ${j.operation}`];
  let n = 0;
  for (const e of j.entries) {
    if (e.kind === 'write') {
      n++;
      lines.push(`  write ${String(n).padStart(3)}  offset 0x${e.offset.toString(16).padStart(8, '0')}  ${String(e.length).padStart(8)} bytes  ${e.purpose}${e.commit ? '  <- commit' : ''}`);
    } else if (e.kind === 'flush') {
      lines.push(`  flush       ${e.purpose}`);
    } else {
      lines.push(`  truncate    to ${e.offset} bytes  ${e.purpose}`);
    }
  }
  return lines.join('\n');
}

export async function snapshotOps(mode: 'create' | 'apply' | 'delete', arg: string, files: string[], ctx: CommandContext): Promise<number> {
  assertDistinctFiles(files);
  const imgs = await openAll(files);
  let journals: Journal[];
  const verb = mode === 'apply' ? 'revert' : mode;
  try {
    // one image: qemu-img's own words on failure; a group (ours): the group's, naming the image
    journals = imgs.length === 1 ? [await snapshotOp(imgs[0]!, verb, arg).catch(async (e: unknown) => {
      await storeBitmapsAsQemuAfterRefusal(e, imgs[0]!);
      throw inQemuImgWords(e, mode, arg, imgs[0]!);
    })]
      : await groupSnapshotOp(imgs, verb, arg);
  } finally {
    for (const i of imgs) await i.close();
  }
  if (ctx.values.journal) journals.forEach((j, i) => ctx.out(formatJournal(j, files[i]!)));
  return 0;
}

/**
 * qemu-img refuses a revert on an image with bitmaps, or a snapshot it cannot find, after its
 * writable open: closing the image then stores the bitmaps again (bitmap-ops.ts), so the file
 * changes as qemu-img's does. Our own refusals of a damaged image leave it untouched.
 */
async function storeBitmapsAsQemuAfterRefusal(e: unknown, img: Qcow2Image): Promise<void> {
  if (!isQcowError(e) || !(e.code === 'SNAPSHOT_NOT_FOUND' || e.details.reason === 'dirty-bitmaps')) return;
  await storeBitmapsAsOnClose(img).catch(() => undefined); // the refusal is what the command reports
}

/**
 * A failed snapshot -c / -a / -d as qemu-img words it: img_snapshot's "Could not create|apply|delete
 * snapshot 'ARG': " before the reason, and the reasons QEMU gives (bdrv_snapshot_goto's "Failed to
 * load snapshot: <errno>", the delete's "snapshot not found", the create's errno as "-95 (Operation
 * not supported)" or, for a refcount past its width's maximum, "-22 (Invalid argument)"). Our own refusals (a damaged image QEMU would write to) keep their words after
 * the same prefix.
 */
function inQemuImgWords(e: unknown, mode: 'create' | 'apply' | 'delete', arg: string, img: Qcow2Image): unknown {
  if (!isQcowError(e)) return e;
  const dataFile = e.details.reason === 'data-file';
  let reason = e.message.replace(/^Cannot (create|revert to|delete) snapshot .*?: /s, '');
  if (mode === 'apply' && e.code === 'SNAPSHOT_NOT_FOUND') reason = 'Failed to load snapshot: No such file or directory';
  else if (mode === 'apply' && dataFile) reason = 'Failed to load snapshot: Operation not supported';
  else if (mode === 'delete' && (e.code === 'SNAPSHOT_NOT_FOUND' || (dataFile && !findSnapshot(img, arg)))) reason = 'snapshot not found';
  else if (mode === 'create' && dataFile) reason = '-95 (Operation not supported)';
  // a refcount past refcount_bits' maximum: QEMU's update_refcount answers EINVAL
  else if (mode === 'create' && e.code === 'REFCOUNT_OVERFLOW') reason = '-22 (Invalid argument)';
  else if (mode === 'apply' && e.code === 'REFCOUNT_OVERFLOW') reason = 'Failed to load snapshot: Invalid argument';
  const out = new QcowError(e.code, `Could not ${mode} snapshot '${arg}': ${reason}`, e.details);
  return out;
}

// ---- external snapshots -------------------------------------------------------------------------

/**
 * An overlay file written under a temporary name in the target directory, then linked into place
 * (link() fails instead of replacing an existing file) and the directory synced.
 */
class FileOverlayTarget implements OverlayTarget {
  readonly name: string;
  private readonly temp: string;
  private published = false;

  constructor(file: string) {
    this.name = file;
    const abs = path.resolve(file);
    this.temp = path.join(path.dirname(abs), `.${path.basename(abs)}.qcowscope-${process.pid}-${Date.now().toString(36)}.tmp`);
  }

  async open(): Promise<ImageStore> {
    return NodeFileStore.create(this.temp);
  }

  async publish(): Promise<void> {
    try {
      fs.linkSync(this.temp, this.name);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new QcowError(code === 'EEXIST' ? 'INVALID_ARGUMENT' : 'IO_ERROR',
        code === 'EEXIST' ? `'${this.name}' already exists` : `Could not create '${this.name}': ${(e as Error).message}`, { path: this.name });
    }
    this.published = true;
    fs.rmSync(this.temp, { force: true });
    syncDir(path.dirname(path.resolve(this.name)));
  }

  async discard(): Promise<void> {
    if (this.published) fs.rmSync(this.name, { force: true });
    this.published = false;
    fs.rmSync(this.temp, { force: true });
  }
}

function syncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // not every platform can sync a directory
  }
}

/**
 * `qcowscope snapshot --external OVERLAY [--external OVERLAY...] IMAGE...`: one new overlay per
 * image (in order), whose backing file is that image; all or none.
 */
export async function externalSnapshots(overlays: string[], files: string[], _ctx: CommandContext): Promise<number> {
  if (overlays.length !== files.length) {
    throw usage(`snapshot --external: give one overlay per image (${overlays.length} overlay(s) for ${files.length} image(s))`);
  }
  assertDistinctFiles(files);
  for (const o of overlays) {
    if (fs.existsSync(o)) throw new QcowError('INVALID_ARGUMENT', `'${o}' already exists`, { path: o });
  }
  const imgs: Qcow2Image[] = [];
  try {
    for (const f of files) imgs.push(await openImage(f, { noBacking: true }));
    await createOverlays(imgs.map((base, i) => {
      const overlay = overlays[i]!;
      const backingFile = path.relative(path.dirname(path.resolve(overlay)), path.resolve(files[i]!)) || path.basename(files[i]!);
      return { base, backingFile, target: new FileOverlayTarget(overlay) };
    }));
  } finally {
    for (const i of imgs) await i.close();
  }
  return 0;
}

function usage(message: string): Error {
  const e = new Error(message);
  e.name = 'UsageError';
  return e;
}
