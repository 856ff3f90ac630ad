// The file as qemu-img leaves it when a snapshot operation makes QEMU's allocator do more than
// take the first free clusters (issue 16): a refcount block QEMU adds because the L1 copy or the
// new snapshot table lands past what the refcount blocks count, a refcount table QEMU grows, and
// several snapshots in a row (the table outgrowing its cluster), over cluster sizes and refcount
// widths. Base images are made by qemu-io, their data length searched so that the file ends just
// before, at or just after a refcount block's range. The same creates and deletes run through
// qemu-img on one copy and our engine on the other (our snapshots get the date QEMU wrote, so the
// snapshot tables are the same bytes); after every step the files have the same length, `qemu-img
// map` and `snapshot -l` print the same, ours is clean by `qemu-img check`, and every cluster QEMU's
// file uses holds the same bytes in ours (only clusters QEMU left free may differ: QEMU punches
// holes where it frees, we leave the bytes; and the bytes around the snapshot table's entries and
// after a snapshot's L1 table in its last cluster, see differingClusters). Bases with persistent
// bitmaps (qemu-img bitmap, dirty bits set by qemu-io) also compare `qemu-img info`'s bitmaps: QEMU
// stores them again after each step, and so does our settle.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  createImage, fileSize, qemuCheck, qemuImgOk, qemuInfo, qemuIo, qemuIoOk, type CreateOptions,
} from '../helpers/qemu.ts';
import { imageEndingAt } from '../helpers/file-end.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';
import { buildLayout, Kind } from '../../core/analysis/layout.ts';
import { openImage } from '../../cli/open.ts';
import { withImage } from './snapshot-model.ts';

interface Case {
  label: string;
  opts: CreateOptions;
  /** Virtual size of the image. */
  size: number;
  /** The file's end is searched near this many clusters (a refcount block's range boundary), and these offsets around it are taken. */
  boundary: number;
  ends: number[];
  /**
   * Snapshot steps: names to create, '-NAME' to delete, 'a NAME' to revert, 'w OFFSET LENGTH' a
   * guest write by qemu-io and 'r SIZE' a resize by qemu-img (--shrink) on both copies.
   */
  steps: string[];
  /** Persistent bitmaps made on the base by qemu-img / qemu-io (QEMU stores them again after each step). */
  bitmaps?: (file: string) => void;
}

/** `qemu-img bitmap OPTIONS FILE NAME`. */
function bitmap(file: string, name: string, ...options: string[]): void {
  qemuImgOk(['bitmap', ...options, file, name]);
}

/** Bitmaps left in use as a crash leaves them: qemu-io opens the image (marking them in use), writes, and kills itself. */
function leaveInUse(file: string, write: string): void {
  const r = qemuIo(['-f', 'qcow2', '-c', write, '-c', 'sigraise 9', file]);
  if (r.signal !== 'SIGKILL') throw new Error(`qemu-io was expected to die by SIGKILL: ${r.status} ${r.stderr}`);
}

const MiB = 1024 * 1024;
const ROW = ['s1', 's2', 's3', '-s2', 's4', 's5', 's6', 's7', 's8', 's9', 's10', '-s1', 's11'];

const CASES: Case[] = [
  // 512 B clusters, 16-bit refcounts: a refcount block counts 256 clusters.
  { label: '512 B clusters, 16-bit refcounts, refcount block 1 full', opts: { clusterSize: 512 }, size: MiB, boundary: 256, ends: [-2, -1, 0], steps: ROW },
  // 64-bit refcounts: a block counts 64 clusters, the one-cluster refcount table 64 blocks (4096 clusters).
  { label: '512 B clusters, 64-bit refcounts, refcount block full', opts: { clusterSize: 512, refcountBits: 64 }, size: MiB, boundary: 192, ends: [-1, 0], steps: ROW },
  { label: '512 B clusters, 64-bit refcounts, refcount table full', opts: { clusterSize: 512, refcountBits: 64 }, size: 4 * MiB, boundary: 4096, ends: [-2, -1, 0], steps: ROW.slice(0, 5) },
  { label: 'extended L2, 16 KiB clusters, 64-bit refcounts (2048 a block)', opts: { clusterSize: 16384, extendedL2: true, refcountBits: 64 }, size: 64 * MiB, boundary: 2048, ends: [-1, 0], steps: ROW.slice(0, 6) },
  { label: '2 MiB clusters, 64-bit refcounts, several in a row', opts: { clusterSize: 2 * MiB, refcountBits: 64 }, size: 32 * MiB, boundary: 0, ends: [0], steps: ROW },
  { label: '4 KiB clusters, 8-bit refcounts, several in a row', opts: { clusterSize: 4096, refcountBits: 8 }, size: 4 * MiB, boundary: 0, ends: [0], steps: ROW },
  // An L1 copy of hundreds of clusters past every refcount block: the block for its first range
  // lands in another range without one, which QEMU's allocator gives a block first (recursing).
  { label: '512 B clusters, a 1000 MiB disk (an L1 of 500 clusters)', opts: { clusterSize: 512 }, size: 1000 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s1', 's3'] },
  { label: '512 B clusters, 64-bit refcounts, a 200 MiB disk (an L1 of 100 clusters)', opts: { clusterSize: 512, refcountBits: 64 }, size: 200 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s1', 's3'] },
  // Persistent bitmaps: QEMU stores each again when it closes the image (new data clusters, a
  // new table, then a new directory, after the operation's allocations) and frees the old ones.
  {
    label: 'a bitmap with dirty bits', opts: {}, size: 64 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s1', 's3', '-s2', '-s3'],
    bitmaps: (f) => {
      bitmap(f, 'b1', '--add');
      qemuIoOk(f, 'write -P 8 4M 1M', 'write -P 9 60M 64k');
    },
  },
  {
    label: 'two bitmaps, one disabled, 4 KiB clusters', opts: { clusterSize: 4096 }, size: 16 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s1', 's3'],
    bitmaps: (f) => {
      bitmap(f, 'fine', '--add', '-g', '512');
      bitmap(f, 'off', '--add');
      qemuIoOk(f, 'write -P 8 1M 1M', 'write -P 9 15M 4k');
      bitmap(f, 'off', '--disable');
      qemuIoOk(f, 'write -P 10 8M 64k');
    },
  },
  {
    // an L1 copy of 7 clusters passes the holes the last store of the bitmaps left; the old
    // snapshot table QEMU frees lies below them, so its store of the bitmaps fills them
    label: 'bitmaps into the holes below the free index (1 KiB clusters, an L1 of 7 clusters)', opts: { clusterSize: 1024, refcountBits: 32 },
    size: 100 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', 's3', '-s1', 's4'],
    bitmaps: (f) => {
      bitmap(f, 'b0', '--add', '-g', '4096');
      qemuIoOk(f, 'write -P 8 0 4k', 'write -P 9 50M 64k');
    },
  },
  {
    // the snapshot table lies below the holes the bitmaps left when qemu-img bitmap stored them
    // again: the create frees it, QEMU's free index falls back there, and its store fills them
    label: 'bitmaps into the holes above the old snapshot table (1 KiB clusters)', opts: { clusterSize: 1024, refcountBits: 32 },
    size: 100 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2'],
    bitmaps: (f) => {
      qemuImgOk(['snapshot', '-c', 's0', f]);
      bitmap(f, 'b0', '--add', '-g', '4096');
      qemuIoOk(f, 'write -P 8 0 4k');
      bitmap(f, 'b0', '--disable'); // stored again at the end: holes where they were
      qemuIoOk(f, 'write -P 9 50M 4k');
    },
  },
  {
    label: 'an empty bitmap, 512 B clusters', opts: { clusterSize: 512 }, size: MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s2', '-s1'],
    bitmaps: (f) => bitmap(f, 'empty', '--add'),
  },
  {
    label: 'bitmaps, create then delete', opts: {}, size: 32 * MiB, boundary: 0, ends: [0], steps: ['s1', '-s1'],
    bitmaps: (f) => {
      bitmap(f, 'empty', '--add', '--disable');
      bitmap(f, 'coarse', '--add', '-g', '1M');
      qemuIoOk(f, 'write -P 8 20M 2M');
    },
  },
  {
    // the data clusters a delete frees (copied on write meanwhile) come before the end of the file
    label: 'bitmaps, deletes that free data clusters', opts: { clusterSize: 4096 }, size: 16 * MiB, boundary: 0, ends: [0],
    steps: ['s1', 'w 0 128k', 's2', 'w 64k 128k', '-s1', 'w 12M 4k', '-s2', 's3'],
    bitmaps: (f) => {
      bitmap(f, 'fine', '--add', '-g', '512');
      bitmap(f, 'coarse', '--add');
      qemuIoOk(f, 'write -P 8 4M 64k');
    },
  },
  // The bitmaps QEMU stores on close cross into a refcount block's range: QEMU adds the block
  // (alloc_refcount_block) on the way, as for the operation's own allocations.
  {
    label: 'bitmaps that need a new refcount block (512 B clusters, 16-bit refcounts)', opts: { clusterSize: 512 }, size: MiB, boundary: 256, ends: [-3, -2, -1],
    steps: ['s1', 's2', '-s1', 's3', '-s2'],
    bitmaps: (f) => {
      bitmap(f, 'fine', '--add', '-g', '512');
      qemuIoOk(f, 'write -P 8 600k 8k');
    },
  },
  {
    label: 'bitmaps that need a new refcount block (512 B clusters, 64-bit refcounts)', opts: { clusterSize: 512, refcountBits: 64 }, size: MiB, boundary: 192, ends: [-4, -3, -2, -1],
    steps: ['s1', '-s1', 's2', 's3'],
    bitmaps: (f) => {
      bitmap(f, 'fine', '--add', '-g', '512');
      bitmap(f, 'off', '--add', '--disable');
      qemuIoOk(f, 'write -P 8 600k 8k');
    },
  },
  {
    // a snapshot made before the bitmaps: its delete frees the old bitmaps in a refcount block's
    // range that the delete itself does not change
    label: 'bitmaps after a snapshot, at a refcount block\'s range (512 B clusters, 64-bit refcounts)', opts: { clusterSize: 512, refcountBits: 64 }, size: 2 * MiB,
    boundary: 256, ends: [-1, 0, 2], steps: ['-first', 's1', 's2', '-s1'],
    bitmaps: (f) => {
      qemuImgOk(['snapshot', '-c', 'first', f]);
      bitmap(f, 'dirty', '--add', '-g', '4096');
      bitmap(f, 'empty', '--add', '--disable');
      qemuIoOk(f, 'write -P 6 1M 64k', 'write -P 7 1536k 4k');
    },
  },
  // Bitmaps in use (a crash left them): QEMU neither loads nor stores them, and writes nothing
  // for bitmaps when all are in use; the others it stores again as ever, in a new directory.
  {
    label: 'bitmaps all in use', opts: {}, size: 64 * MiB, boundary: 0, ends: [0], steps: ['s1', 's2', '-s1', 's3', '-s2'],
    bitmaps: (f) => {
      bitmap(f, 'b1', '--add');
      bitmap(f, 'b2', '--add', '--disable');
      leaveInUse(f, 'write -P 8 4M 64k');
    },
  },
  {
    label: 'bitmaps in use and not, 4 KiB clusters', opts: { clusterSize: 4096 }, size: 16 * MiB, boundary: 0, ends: [0], steps: ['s1', 'w 1M 8k', 's2', '-s1', 's3'],
    bitmaps: (f) => {
      bitmap(f, 'stale', '--add', '-g', '512');
      leaveInUse(f, 'write -P 8 4M 64k');
      bitmap(f, 'fresh', '--add');
      qemuIoOk(f, 'write -P 8 8M 64k');
    },
  },
  // Revert to a snapshot of a larger size: QEMU truncates first, which only rewrites the size when
  // the L1 table already reaches it (QEMU never shortens it), then reverts as ever.
  {
    label: 'revert to a snapshot of a larger size', opts: {}, size: 64 * 1024 * MiB, boundary: 0, ends: [0],
    steps: ['w 40G 64k', 'big', 'r 1G', 'w 0 128k', 'a big', 'w 30G 64k', 's2', 'r 2G', 'a big', '-s2', 'a big'],
  },
];

describe('snapshot create, revert and delete allocate as qemu-img does', () => {
  const tmp = useTempDir('qcowscope-snapalloc-');

  /** A base image whose file ends `end` clusters from `boundary` (or with a little data when boundary is 0). */
  function baseImage(c: Case, end: number): string | null {
    const f = tmp.file(`base-${end}.qcow2`);
    if (c.boundary === 0) {
      createImage(f, c.size, c.opts);
      qemuIoOk(f, `write -P 7 0 ${5 * (c.opts.clusterSize ?? 65536)}`);
      c.bitmaps?.(f);
      return f;
    }
    return imageEndingAt(f, c.boundary + end, c.size, c.opts, c.bitmaps) ? f : null;
  }

  for (const c of CASES) {
    it(c.label, async () => {
      let tried = 0;
      for (const end of c.ends) {
        const base = baseImage(c, end);
        if (!base) continue; // the file's growth steps over this end
        tried++;
        const q = tmp.file('qemu.qcow2');
        const o = tmp.file('ours.qcow2');
        fs.copyFileSync(base, q);
        fs.copyFileSync(base, o);
        const done: string[] = [];
        for (const step of c.steps) {
          if (step.startsWith('w ')) {
            qemuIoOk(q, `write -P 9 ${step.slice(2)}`);
            qemuIoOk(o, `write -P 9 ${step.slice(2)}`);
            continue;
          } else if (step.startsWith('r ')) {
            for (const f of [q, o]) qemuImgOk(['resize', '--shrink', f, step.slice(2)]);
            continue;
          } else if (step.startsWith('a ')) {
            qemuImgOk(['snapshot', '-a', step.slice(2), q]);
            await withImage(o, (img) => revertSnapshot(img, step.slice(2)));
          } else if (step.startsWith('-')) {
            qemuImgOk(['snapshot', '-d', step.slice(1), q]);
            await withImage(o, (img) => deleteSnapshot(img, step.slice(1)));
          } else {
            qemuImgOk(['snapshot', '-c', step, q]);
            const sn = qemuInfo(q).snapshots!.find((s) => s.name === step)!;
            await withImage(o, (img) => createSnapshot(img, step, { dateSec: sn['date-sec'], dateNsec: sn['date-nsec'] }));
          }
          done.push(step);
          const where = `file ending at ${c.boundary}${end >= 0 ? '+' : ''}${end} clusters, after ${done.join(' ')}`;
          expect(fileSize(o), `length, ${where}`).toBe(fileSize(q));
          expect(qemuImgOk(['map', '--output=json', o]), `map, ${where}`).toBe(qemuImgOk(['map', '--output=json', q]));
          expect(qemuImgOk(['snapshot', '-l', o]), `snapshot -l, ${where}`).toBe(qemuImgOk(['snapshot', '-l', q]));
          if (c.bitmaps) {
            const bitmaps = (f: string): unknown => (qemuInfo(f)['format-specific']?.data as { bitmaps?: unknown } | undefined)?.bitmaps;
            expect(bitmaps(o), `bitmaps, ${where}`).toEqual(bitmaps(q));
            expect(bitmaps(q), 'the base has bitmaps').toBeTruthy();
          }
          const chk = qemuCheck(o);
          expect(chk.exitCode, `${where}: ${chk.stderr}`).toBe(0);
          expect(chk.corruptions + chk.leaks + chk.checkErrors, where).toBe(0);
          expect(await differingClusters(q, o), `clusters QEMU uses that differ, ${where}`).toEqual([]);
        }
      }
      expect(tried, 'base images made').toBeGreaterThan(0);
    }, 300_000);
  }
});

/**
 * Clusters that QEMU's file `q` uses (not free) whose bytes differ in `o`. In the snapshot table
 * only the entries are compared (not the padding between them), and in the last cluster of each
 * snapshot's L1 table, each bitmap table and the bitmap directory only the structure: QEMU writes
 * only those bytes, leaving zeros around them where it punched a hole when it freed the cluster
 * before and the old bytes where it did not (the old refcount table, old bitmap tables and
 * directories).
 */
async function differingClusters(q: string, o: string): Promise<number[]> {
  const img = await openImage(q, { noBacking: true });
  let kinds: Uint8Array;
  let cs: number;
  const masked: Array<[number, number]> = [];
  const entries: Array<[number, number]> = [];
  try {
    kinds = (await buildLayout(img)).kinds;
    cs = img.clusterSize;
    const h = img.header;
    if (img.snapshotsSize > 0) masked.push([h.snapshotsOffset, Math.ceil((h.snapshotsOffset + img.snapshotsSize) / cs) * cs]);
    for (const sn of img.snapshots) {
      entries.push([sn.entryOffset, sn.entryOffset + 40 + sn.extraDataSize + sn.idBytes.length + sn.nameBytes.length]);
      const end = sn.l1TableOffset + sn.l1Size * 8;
      masked.push([end, Math.ceil(end / cs) * cs]);
    }
    // the same for each bitmap table and the bitmap directory (QEMU frees the old ones without a hole)
    const partial: Array<[number, number]> = img.bitmaps.map((b) => [b.bitmapTableOffset, b.bitmapTableSize * 8]);
    if (h.bitmaps && img.bitmaps.length > 0) partial.push([h.bitmaps.bitmapDirectoryOffset, h.bitmaps.bitmapDirectorySize]);
    for (const [off, bytes] of partial) masked.push([off + bytes, Math.ceil((off + bytes) / cs) * cs]);
  } finally {
    await img.close();
  }
  const a = Buffer.from(fs.readFileSync(q));
  const b = Buffer.from(fs.readFileSync(o));
  const out: number[] = [];
  for (const [from, to] of entries) if (!a.subarray(from, to).equals(b.subarray(from, to))) out.push(Math.floor(from / cs));
  for (const [from, to] of masked) {
    a.fill(0, from, Math.min(to, a.length));
    b.fill(0, from, Math.min(to, b.length));
  }
  for (let c = 0; c < kinds.length; c++) {
    if (kinds[c] === Kind.Free) continue;
    if (!a.subarray(c * cs, (c + 1) * cs).equals(b.subarray(c * cs, (c + 1) * cs))) out.push(c);
  }
  return out;
}
