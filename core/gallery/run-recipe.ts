// Run a gallery recipe (core/gallery/commands.ts) with the engine, in memory: each qemu-img /
// qemu-io line becomes the engine's own create, guest write, snapshot or bitmap operation, so the
// image the page shows is the one the same lines make with QEMU's tools (the tests compare the
// two). Deterministic: snapshot dates are fixed, nothing reads the clock.
//
// Two lines are QEMU's ways to break an image on purpose, and are done here the same way:
// `qemu-io -f raw -c "write ..."` writes the file's own bytes (a refcount or an L2 entry), and
// `sigraise 9` after writes to a lazy_refcounts image kills qemu-io before it writes the data
// clusters' refcounts back: the refcounts of the data clusters the session allocated stay 0 and
// the header's dirty bit stays set (QEMU writes an L2 table's refcount before the table itself,
// so those are on disk).
import { QcowError } from '../errors.ts';
import * as C from '../format/constants.ts';
import { l1L2Offset } from '../format/entries.ts';
import { MemoryStore } from '../io/memory-store.ts';
import { updateRefcount } from '../image/allocator.ts';
import { changeBitmaps } from '../image/bitmap-ops.ts';
import { createImage, type CreateOptions } from '../image/create.ts';
import { writeCompressedCluster } from '../image/demo.ts';
import { Qcow2Image } from '../image/qcow2-image.ts';
import { getClusterRefcount } from '../image/refcount.ts';
import { createSnapshot } from '../image/snapshot.ts';
import { writeGuest, writeZeroes } from '../image/write.ts';
import { parseQemuSize, parseRecipeLine, type CreateStep, type IoStep } from './commands.ts';

/** 2026-01-01T00:00:00Z: the first snapshot's date; each later one a day after. */
const FIRST_SNAPSHOT_DATE = 1767225600;

export interface RecipeFile {
  name: string;
  bytes: Uint8Array;
}

type Files = Map<string, MemoryStore>;

function store(files: Files, name: string): MemoryStore {
  const s = files.get(name);
  if (!s) throw new QcowError('INVALID_ARGUMENT', `The recipe uses ${name} before creating it`, { name });
  return s;
}

/** Open an image of the recipe, its backing chain (files of the recipe) opened read-only below it. */
async function open(files: Files, name: string, writable: boolean): Promise<Qcow2Image> {
  const s = store(files, name);
  const backingFile = (await Qcow2Image.readHeader(s)).backingFile;
  const backing = backingFile !== undefined ? await open(files, backingFile, false) : null;
  return Qcow2Image.open(s, { writable, backing });
}

async function create(files: Files, step: CreateStep): Promise<void> {
  const o = step.options;
  const size = step.size ?? (step.backingFile !== undefined ? (await Qcow2Image.readHeader(store(files, step.backingFile))).size : undefined);
  if (size === undefined) throw new QcowError('INVALID_ARGUMENT', `No size for ${step.file}`, {});
  const opts: CreateOptions = {
    size,
    clusterSize: o.cluster_size !== undefined ? parseQemuSize(o.cluster_size) : undefined,
    refcountBits: o.refcount_bits !== undefined ? Number(o.refcount_bits) : undefined,
    compat: o.compat === '0.10' ? '0.10' : undefined,
    lazyRefcounts: o.lazy_refcounts === 'on',
    extendedL2: o.extended_l2 === 'on',
    backingFile: step.backingFile,
    backingFormat: step.backingFormat,
  };
  const s = new MemoryStore(new Uint8Array(0), { name: step.file });
  await createImage(s, opts);
  files.set(step.file, s);
}

/** Host clusters with a non-zero refcount. */
async function usedClusters(img: Qcow2Image): Promise<Set<number>> {
  const used = new Set<number>();
  const n = Math.ceil(img.store.size() / img.clusterSize);
  for (let c = 0; c < n; c++) if ((await getClusterRefcount(img, c)) > 0) used.add(c);
  return used;
}

/** What a kill leaves of a lazy_refcounts session: data clusters' refcounts unwritten, the dirty bit set. */
async function lazyCrash(img: Qcow2Image, before: Set<number>): Promise<void> {
  const l2Tables = new Set<number>();
  for (let i = 0; i < img.header.l1Size; i++) {
    const off = l1L2Offset(img.l1Table, i);
    if (off) l2Tables.add(off / img.clusterSize);
  }
  for (const c of await usedClusters(img)) {
    if (!before.has(c) && !l2Tables.has(c)) await updateRefcount(img, c * img.clusterSize, img.clusterSize, -1);
  }
  await img.flush('lazy refcounts left unwritten');
  const incompat = await img.store.read(72, 8);
  incompat[7]! |= 1; // the dirty bit (incompatible feature bit 0)
  await img.store.write(72, incompat);
}

async function io(files: Files, step: IoStep): Promise<void> {
  if (step.raw) {
    const s = store(files, step.file);
    for (const c of step.commands) if (c.kind === 'write') await s.write(c.offset, new Uint8Array(c.length).fill(c.pattern));
    return;
  }
  const img = await open(files, step.file, true);
  const lazy = (img.header.compatibleFeatures & C.COMPAT_LAZY_REFCOUNTS) !== 0n;
  const before = step.commands.some((c) => c.kind === 'kill') && lazy ? await usedClusters(img) : null;
  for (const c of step.commands) {
    if (c.kind === 'kill') {
      if (before) await lazyCrash(img, before);
      return;
    }
    if (c.zero) await writeZeroes(img, c.offset, c.length, { unmap: c.unmap });
    else if (c.compressed) {
      for (let at = c.offset; at < c.offset + c.length; at += img.clusterSize) {
        // A compressed cluster needs its L2 table: a zero write first makes it (and is overwritten).
        await writeZeroes(img, at, img.clusterSize);
        await writeCompressedCluster(img, at, new Uint8Array(img.clusterSize).fill(c.pattern));
      }
    } else await writeGuest(img, c.offset, new Uint8Array(c.length).fill(c.pattern));
  }
  await img.flush('qemu-io done');
}

/** Run the recipe's lines; every file it made, in the order made (the last is the one to show). */
export async function runRecipe(lines: readonly string[]): Promise<RecipeFile[]> {
  const files: Files = new Map();
  let snapshots = 0;
  for (const line of lines) {
    const step = parseRecipeLine(line);
    if (step.kind === 'create') await create(files, step);
    else if (step.kind === 'io') await io(files, step);
    else if (step.kind === 'snapshot') {
      const img = await open(files, step.file, true);
      await createSnapshot(img, step.name, { dateSec: FIRST_SNAPSHOT_DATE + 86400 * snapshots++, dateNsec: 0 });
      await img.flush('snapshot done');
    } else {
      const img = await open(files, step.file, true);
      await changeBitmaps(img, [{ op: 'add', name: step.name, granularity: step.granularity, disabled: step.disabled }]);
      await img.flush('bitmap done');
    }
  }
  return [...files.values()].map((s) => ({ name: s.name, bytes: s.bytes().slice() }));
}
