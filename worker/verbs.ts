// The qemu-img verbs in the worker (VerbsApi, worker/verbs-api.ts): measure, compare [-s], the
// bitmap directory and bitmap --remove, rebase (-u onto an open image or a name, safe onto an open
// image, -b "" to make the image standalone), and commit [-d] into the open backing image. The
// engine does the work (core/analysis/measure.ts, compare.ts, core/image/bitmap-ops.ts,
// rebase.ts, commit.ts: the calls the command line makes); this module adds the worker's rules: writes
// run serialised and all-or-nothing in the tab (engine.worker.ts's `serialised`), so every change
// is held as pending until Save or "Download image", like a snapshot operation.
import { QcowError } from '../core/errors.ts';
import { measure } from '../core/analysis/measure.ts';
import { compareImages } from '../core/analysis/compare.ts';
import { changeBitmaps } from '../core/image/bitmap-ops.ts';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE } from '../core/format/bitmaps.ts';
import { rebaseImage } from '../core/image/rebase.ts';
import { commitInto } from '../core/image/commit.ts';
import { Journal } from '../core/image/journal.ts';
import type { Qcow2Image } from '../core/image/qcow2-image.ts';
import type { ImageId, ImageSummary, JobId, ProgressFn } from './api.ts';
import type { CompareOptionsDTO, CompareSideRef, RebaseTarget, VerbsApi } from './verbs-api.ts';
import { journalDTO, openAsBacking, openForWrite, type JobContext } from './engine-adapter.ts';
import type { OpenImage } from './engine.worker.ts';

/** What engine.worker.ts lends this module: its images and its rules for jobs and writes. */
export interface VerbsHost {
  get(id: ImageId): OpenImage;
  has(id: ImageId): boolean;
  runJob<T>(jobId: JobId, onProgress: ProgressFn | undefined, body: (job: JobContext) => Promise<T>): Promise<T>;
  serialised<T>(group: OpenImage[], body: () => Promise<T>): Promise<T>;
  summaryOf(img: OpenImage): Promise<ImageSummary>;
  reopen(img: OpenImage): Promise<void>;
}

/** The engine object of an image opened whole, or the one-line refusal. */
function whole(img: OpenImage, what: string): Qcow2Image {
  const q = img.engine.image;
  if (!q || img.damage) throw new QcowError('NOT_SUPPORTED', `${img.name} could not be opened whole: it cannot be ${what}`);
  return q;
}

/** Refused when the header names a backing file that is not open: its data would read as zeros. */
function assertChainOpen(img: OpenImage, what: string): void {
  if (img.engine.header().backingFile !== undefined && !img.backing) {
    throw new QcowError('NOT_SUPPORTED', `The backing file of ${img.name} is not open: open it (Header) before ${what}`);
  }
}

/** Run `body` with every write and flush of `w` recorded under `label`. */
async function journaled(w: Qcow2Image, label: string, body: () => Promise<void>): Promise<Journal> {
  const journal = new Journal(label);
  const prev = w.journal;
  w.journal = journal;
  try {
    await body();
  } finally {
    w.journal = prev;
  }
  return journal;
}

/** A snapshot of an image as an image of its own for compare: its L1 table is the active one. */
async function snapshotAsImage(q: Qcow2Image, snapshotId: string): Promise<Qcow2Image> {
  const sn = q.snapshots.find((s) => s.idStr === snapshotId);
  if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', `No snapshot with ID ${snapshotId}`, { snapshot: snapshotId });
  const view = await q.snapshotView(sn);
  // Everything else (tables, caches, backing chain) is the image's own.
  return Object.create(q, {
    activeView: { value: () => view },
    read: { value: (offset: number, length: number) => q.readView(view, offset, length) },
    virtualSize: { get: () => view.virtualSize },
  }) as Qcow2Image;
}

/** The lines that name the first difference (content; block status in strict mode). */
const MISMATCH = /^(?:Content mismatch at offset|Strict mode: Offset) (\d+)(?: block status mismatch)?!$/;

/** A long write's progress, under `phase`; a cancel stops it at the next step (nothing is kept). */
function stepper(job: JobContext, phase: string, total: number): (done: number) => void {
  return (done) => {
    if (job.signal.aborted) throw new QcowError('CANCELLED', 'The operation was cancelled');
    job.progress({ phase, done, total });
  };
}

/** Stop reading through the old backing layer (a lender's or a file chosen in Header). */
async function detachBacking(img: OpenImage): Promise<void> {
  await img.backing?.close().catch(() => {});
  img.lender?.borrowers.delete(img);
  img.lender = null;
  img.backing = null;
  img.backingName = null;
}

/**
 * After the tab's changes were dropped (Discard) and the image reopened: an overlay whose link
 * the dropped changes had rewritten (a rebase onto an open image) stops reading through that
 * image, since the header names another file again (and a safe rebase's copied data is gone,
 * so reading the new base would show another disk). `linkBefore`: the header's link before.
 */
export async function dropStaleLender(img: OpenImage, linkBefore: string | undefined, reopen: (img: OpenImage) => Promise<void>): Promise<void> {
  if (!img.lender || img.engine.header().backingFile === linkBefore) return;
  await detachBacking(img);
  await reopen(img);
}

export function verbsApi(host: VerbsHost) {
  /** Read through the open image `base` from now on (it becomes read-only while lent). */
  async function lendTo(img: OpenImage, base: OpenImage): Promise<void> {
    const layer = await openAsBacking(base.store, base.backing);
    await detachBacking(img);
    img.backing = layer;
    img.lender = base;
    img.backingName = base.name;
    base.borrowers.add(img);
  }

  /** A write on one image, journaled (as a job when it has an id), then its summary with the journal. */
  async function journaledWrite(
    img: OpenImage,
    label: string,
    body: (w: Qcow2Image, job: JobContext) => Promise<void>,
    jobId?: JobId,
    onProgress?: ProgressFn,
  ): Promise<ImageSummary> {
    const journal = await host.serialised([img], () => host.runJob(jobId, onProgress, async (job) => {
      const w = await openForWrite(img.store, img.backing);
      return journaled(w, label, () => body(w, job));
    }));
    const s = await host.summaryOf(img);
    s.journal = journalDTO(journal);
    return s;
  }

  /** After a write that leaves nothing open to read through: the old layer dropped, the summary with `s`'s journal. */
  async function detachedAfter(img: OpenImage, s: ImageSummary): Promise<ImageSummary> {
    await queued([img], async () => {
      await detachBacking(img);
      await host.reopen(img);
    });
    return { ...(await host.summaryOf(img)), ...(s.journal ? { journal: s.journal } : {}) };
  }

  /** After `run`, serialised with the image's other operations. */
  function queued<T>(imgs: OpenImage[], run: () => Promise<T>): Promise<T> {
    const p = Promise.all(imgs.map((g) => g.queue)).then(run, run);
    for (const g of imgs) g.queue = p.catch(() => {});
    return p;
  }

  return {
    async measure(id: ImageId, jobId?: JobId, onProgress?: ProgressFn) {
      const img = host.get(id);
      const q = whole(img, 'measured');
      const info = await host.runJob(jobId, onProgress, () => measure({ format: 'qcow2' }, { img: q, view: q.activeView() }));
      return {
        required: Number(info.required),
        fullyAllocated: Number(info.fullyAllocated),
        ...(info.bitmaps !== undefined ? { bitmaps: Number(info.bitmaps) } : {}),
        ...(img.engine.header().backingFile !== undefined && !img.backing ? { backingMissing: true } : {}),
      };
    },

    async compare(a: CompareSideRef, b: CompareSideRef, opts: CompareOptionsDTO, jobId?: JobId, onProgress?: ProgressFn) {
      const sides: Qcow2Image[] = [];
      for (const ref of [a, b]) {
        const img = host.get(ref.id);
        const q = whole(img, 'compared');
        assertChainOpen(img, 'comparing it');
        sides.push(ref.snapshotId === undefined ? q : await snapshotAsImage(q, ref.snapshotId));
      }
      const strict = opts.strict === true;
      const r = await host.runJob(jobId, onProgress, () => compareImages({ image: sides[0]! }, { image: sides[1]! }, { strict }));
      const m = r.lines.map((l) => MISMATCH.exec(l)).find((x) => x);
      return {
        identical: r.code === 0,
        lines: r.lines,
        sizeMismatch: sides[0]!.virtualSize !== sides[1]!.virtualSize,
        ...(m ? { mismatchOffset: Number(m[1]) } : {}),
      };
    },

    async details(id: ImageId) {
      const img = host.get(id);
      const bitmaps = (img.engine.image?.bitmaps ?? []).map((b) => ({
        name: b.name,
        granularity: 2 ** b.granularityBits,
        inUse: (b.flags & BME_FLAG_IN_USE) !== 0,
        auto: (b.flags & BME_FLAG_AUTO) !== 0,
        tableSize: b.bitmapTableSize,
      }));
      return { bitmaps, ...(img.lender && host.has(img.lender.id) ? { backingImageId: img.lender.id } : {}) };
    },

    async removeBitmap(id: ImageId, name: string) {
      const img = host.get(id);
      return journaledWrite(img, `bitmap --remove ${name}`, (w) => changeBitmaps(w, [{ op: 'remove', name }]));
    },

    async rebase(id: ImageId, target: RebaseTarget, jobId?: JobId, onProgress?: ProgressFn) {
      const img = host.get(id);
      whole(img, 'rebased');
      if ('standalone' in target) {
        // rebase -b "": what the old chain reads is copied in first, then the link goes
        assertChainOpen(img, 'making it standalone');
        const s = await journaledWrite(img, 'rebase -b ""', async (w, job) => {
          await rebaseImage(w, null, { copyFrom: null, onProgress: stepper(job, 'Copying the backing data', w.virtualSize) });
        }, jobId, onProgress);
        return detachedAfter(img, s);
      }
      if ('name' in target) {
        const name = target.name.trim();
        if (!name) throw new QcowError('INVALID_ARGUMENT', 'Name the new backing file');
        const s = await journaledWrite(img, `rebase -u -b ${name} -F qcow2`, (w) => rebaseImage(w, { file: name, format: 'qcow2' }));
        // The link names a file that is not open here: nothing is read through the old one any more.
        return detachedAfter(img, s);
      }
      const base = host.get(target.baseId);
      whole(base, 'a backing file');
      for (let b: OpenImage | null = base; b; b = b.lender) {
        if (b === img) throw new QcowError('INVALID_ARGUMENT', `${base.name} reads through ${img.name}: it cannot be its backing file`);
      }
      let journal;
      if (target.safe) {
        // rebase -b BASE -F qcow2: the overlay keeps reading what it reads through its old chain
        assertChainOpen(img, 'rebasing it safely (its data is what is kept)');
        // in turn with the new base's own operations: nothing changes it while it is read
        journal = await queued([base], async () => {
          const newChain = await openAsBacking(base.store, base.backing);
          try {
            return (await journaledWrite(img, `rebase -b ${base.name} -F qcow2`, async (w, job) => {
              await rebaseImage(w, { file: base.name, format: 'qcow2' }, {
                copyFrom: newChain, onProgress: stepper(job, 'Copying where the backing files differ', w.virtualSize),
              });
            }, jobId, onProgress)).journal;
          } finally {
            await newChain.close().catch(() => {});
          }
        });
      } else if (img.engine.header().backingFile !== base.name) {
        journal = (await journaledWrite(img, `rebase -u -b ${base.name} -F qcow2`, (w) => rebaseImage(w, { file: base.name, format: 'qcow2' }))).journal;
      }
      await queued([img, base], async () => {
        await lendTo(img, base);
        await host.reopen(img);
      });
      return { ...(await host.summaryOf(img)), ...(journal ? { journal } : {}) };
    },

    async commit(id: ImageId, keep: boolean, jobId?: JobId, onProgress?: ProgressFn) {
      const ov = host.get(id);
      const base = ov.lender;
      if (!base || !host.has(base.id)) throw new QcowError('NOT_SUPPORTED', `The backing file of ${ov.name} is not open as an image: choose it under "Backing link" first`);
      whole(ov, 'committed');
      whole(base, 'committed into');
      // with -d the overlay reads the same disk after as before, so overlays reading it are unaffected
      if (!keep && ov.borrowers.size) throw new QcowError('NOT_SUPPORTED', `${ov.name} is the backing file of ${[...ov.borrowers].map((b) => b.name).join(', ')}: emptying it would change what they read`);
      const others = [...base.borrowers].filter((b) => b !== ov);
      if (others.length) throw new QcowError('NOT_SUPPORTED', `${base.name} is also the backing file of ${others.map((b) => b.name).join(', ')}: committing would change what they read`);
      // The overlay's own reads through the base are what makes it read-only; the commit is the one
      // write that keeps them true (the overlay reads the same disk before and after).
      base.borrowers.delete(ov);
      const label = `commit${keep ? ' -d' : ''} ${ov.name} into ${base.name}`;
      let journals: readonly [Journal | null, Journal];
      try {
        const run = (group: OpenImage[]) => host.serialised(group, () => host.runJob(jobId, onProgress, async (job) => {
          // -d: the overlay is only read, through its read-only view (its own clusters: depth 0)
          const o = keep ? whole(ov, 'committed') : await openForWrite(ov.store, null);
          const b = await openForWrite(base.store, base.backing);
          const jb = new Journal(label);
          const copy = async () => {
            b.journal = jb;
            const step = stepper(job, 'Committing', o.virtualSize);
            await commitInto(o, b, { keep, onProgress: (done) => step(done) });
          };
          // -d: the overlay is only read, so only the base's changes are journaled
          const jo = keep ? (await copy(), null) : await journaled(o, `commit: ${ov.name} emptied`, copy);
          b.journal = null;
          return [jo, jb] as const;
        }));
        // -d writes only the base (the overlay's tab gets no change), in turn with the overlay's operations
        journals = await (keep ? queued([ov], () => run([base])) : run([ov, base]));
      } finally {
        base.borrowers.add(ov);
      }
      // A fresh view of the changed base for the overlay's reads (the old one cached its tables).
      await queued([ov, base], async () => {
        await lendTo(ov, base);
        await host.reopen(ov);
      });
      const out = [await host.summaryOf(ov), await host.summaryOf(base)];
      out.forEach((s, i) => {
        const j = journals[i];
        if (j) s.journal = journalDTO(j);
      });
      return out;
    },
  } satisfies VerbsApi;
}
