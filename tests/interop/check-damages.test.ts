// Damaged images (every corruptor recipe, plus a few of our own): our check's exit code and
// counters equal qemu-img check's; after our `-r leaks` / `-r all`, qemu-img check says what it
// says after QEMU's own repair of a copy, and the guest content (qemu-img convert) is the same.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { DAMAGES, makeBase, makeDamagedImage, type BaseName } from '../helpers/corruptor.ts';
import { createImage, peek, pokeU64, qemuCheck, qemuImg, qemuImgOk, qemuIoOk, type QemuCheckResult } from '../helpers/qemu.ts';
import {
  QCOW_OFLAG_COPIED, activeL2EntryPos, l2TableOffset, readHeader, readL2Entry, reftableEntryPos, readReftableEntry, setRefcount,
  writeL2Entry,
} from '../helpers/qcow2-mini.ts';
import { openImage } from '../../cli/open.ts';
import { checkExitCode, runCheck, type RepairMode } from '../../core/analysis/check.ts';
import { isQcowError } from '../../core/errors.ts';

interface Ours { exitCode: number; corruptions: number; leaks: number; checkErrors: number; corruptionsFixed: number; leaksFixed: number; failure?: string; messages: string[]; openError?: string }

async function ourCheck(file: string, repair?: RepairMode): Promise<Ours> {
  let img;
  try {
    img = await openImage(file, { checkMode: true, writable: repair !== undefined, noBacking: true });
  } catch (e) {
    return { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [], openError: (e as Error).message };
  }
  try {
    const messages: string[] = [];
    const r = await runCheck(img, { repair, onFinding: (f) => messages.push(f.message) });
    return { exitCode: checkExitCode(r), corruptions: r.corruptions, leaks: r.leaks, checkErrors: r.checkErrors, corruptionsFixed: r.corruptionsFixed, leaksFixed: r.leaksFixed, failure: r.failure, messages };
  } catch (e) {
    // An image QEMU refuses while opening it (e.g. an invalid 'auto' bitmap table).
    if (!isQcowError(e)) throw e;
    return { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [], openError: e.message };
  } finally {
    await img.close();
  }
}

/** Compare what qemu-img reports: with no JSON (the check failed) only the exit code is known. */
function expectSameReport(o: Ours, q: QemuCheckResult): void {
  expect(o.exitCode).toBe(q.exitCode);
  if (q.json) {
    expect({ c: o.corruptions, l: o.leaks, e: o.checkErrors, cf: o.corruptionsFixed, lf: o.leaksFixed })
      .toEqual({ c: q.corruptions, l: q.leaks, e: q.checkErrors, cf: q.corruptionsFixed, lf: q.leaksFixed });
  } else {
    expect(o.failure !== undefined || o.openError !== undefined).toBe(true);
  }
}

function guestContent(file: string): Buffer | null {
  const raw = file + '.raw';
  const r = qemuImg(['convert', '-O', 'raw', file, raw]);
  if (r.status !== 0) return null;
  const b = fs.readFileSync(raw);
  fs.rmSync(raw);
  return b;
}

/**
 * Damages where QEMU's repair gives up on its own overlap check (the image is marked corrupt and
 * stays broken) while ours places the rebuilt refcount structure around the old one and completes.
 */
const WE_REPAIR_WHERE_QEMU_GIVES_UP = new Set(['reftable-entry-unaligned:all', 'reftable-reserved-bits:all']);

/**
 * Damages where both repairs stop at QEMU's overlap check (exit 1, image marked corrupt). QEMU
 * then loses the refcount fixes still in its cache while ours are already on disk, so the
 * leftovers differ in detail (ours never has a refcount below its references where QEMU's does);
 * the exit code and the guest content must agree.
 */
const BOTH_REPAIRS_ABORT = new Set(['l1-points-at-itself:all', 'nb-snapshots-huge:all']);

interface LocalDamage { base: BaseName | 'extl2' | 'compressed' | 'bitmap'; apply(file: string): void }

const LOCAL_DAMAGES: Record<string, LocalDamage> = {
  'compressed-copied-set': {
    base: 'compressed',
    apply(file) {
      writeL2Entry(file, 0, 0, readL2Entry(file, 0, 0) | QCOW_OFLAG_COPIED);
    },
  },
  'extl2-alloc-and-zero-bits': {
    base: 'extl2',
    apply(file) {
      const pos = activeL2EntryPos(file, 0, 0);
      pokeU64(file, pos + 8, 0x0000000100000001n);
    },
  },
  'extl2-unallocated-with-alloc-bits': {
    base: 'extl2',
    apply(file) {
      const pos = activeL2EntryPos(file, 0, 5);
      pokeU64(file, pos + 8, 0x3n);
    },
  },
  'reftable-duplicate-refblock': {
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      pokeU64(file, reftableEntryPos(h, 1), readReftableEntry(file, 0, h));
    },
  },
  'snapshot-l2-refcount-too-high': {
    base: 'snapshot',
    apply(file) {
      // The L2 table shared by the active layer and the snapshot gets refcount 3 (one leak).
      setRefcount(file, Math.floor(l2TableOffset(file) / readHeader(file).clusterSize), 3);
    },
  },
  // Bitmaps: the directory follows the bitmaps extension; entry = u64 table offset, u32 size, u32 flags.
  'bitmap-table-reserved-bits': {
    base: 'bitmap',
    apply(file) {
      const t = bitmapTable(file, 0);
      pokeU64(file, t, Buffer.from(peek(file, t, 8)).readBigUInt64BE(0) | 0x100n);
    },
  },
  'bitmap-disabled-table-reserved-bits': {
    base: 'bitmap',
    apply(file) {
      const t = bitmapTable(file, 1);
      pokeU64(file, t, 0x100n);
    },
  },
  'l2-entry-points-at-reftable': {
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      writeL2Entry(file, 0, 1, QCOW_OFLAG_COPIED | BigInt(h.refcountTableOffset), h);
    },
  },
};

/** Host offset of bitmap `n`'s table (walking the bitmaps extension and directory by hand). */
function bitmapTable(file: string, n: number): number {
  const h = readHeader(file);
  let off = h.headerLength;
  for (;;) {
    const b = Buffer.from(peek(file, off, 8));
    const type = b.readUInt32BE(0);
    const len = b.readUInt32BE(4);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === 0x23852875) {
      const e = Buffer.from(peek(file, off + 8, 24));
      let pos = Number(e.readBigUInt64BE(16));
      for (let i = 0; ; i++) {
        const d = Buffer.from(peek(file, pos, 24));
        if (i === n) return Number(d.readBigUInt64BE(0));
        pos += Math.ceil((24 + d.readUInt32BE(20) + d.readUInt16BE(18)) / 8) * 8;
      }
    }
    off += 8 + Math.ceil(len / 8) * 8;
  }
}

function makeLocalBase(file: string, base: LocalDamage['base']): void {
  if (base === 'bitmap') {
    createImage(file, '64M');
    qemuIoOk(file, 'write -P 0x11 0 1M');
    qemuImgOk(['bitmap', '--add', file, 'b0']);
    qemuImgOk(['bitmap', '--add', '--disable', file, 'b1']);
  } else if (base === 'extl2') {
    createImage(file, '64M', { extendedL2: true });
    qemuIoOk(file, 'write -P 0x11 0 64k');
  } else if (base === 'compressed') {
    createImage(file, '64M');
    qemuIoOk(file, 'write -c -P 0x11 0 64k');
    qemuIoOk(file, 'write -P 0x22 64k 64k');
  } else {
    makeBase(file, base);
  }
}

describe('check and repair of damaged images agree with qemu-img', () => {
  const tmp = useTempDir('qcowscope-check-damages-');
  const cases: Array<[string, (file: string) => void]> = [
    ...Object.keys(DAMAGES).map((name): [string, (f: string) => void] => [name, (f) => { makeDamagedImage(name, f); }]),
    ...Object.entries(LOCAL_DAMAGES).map(([name, d]): [string, (f: string) => void] => [name, (f) => { makeLocalBase(f, d.base); d.apply(f); }]),
  ];
  for (const [name, make] of cases) {
    it(name, async () => {
      const file = tmp.file('damaged.qcow2');
      make(file);
      // check without repair
      const q0 = qemuCheck(file);
      const o0 = await ourCheck(file);
      expectSameReport(o0, q0);
      for (const mode of ['leaks', 'all'] as const) {
        const theirs = tmp.file(`q-${mode}.qcow2`);
        const ours = tmp.file(`o-${mode}.qcow2`);
        fs.copyFileSync(file, theirs);
        fs.copyFileSync(file, ours);
        const qr = qemuCheck(theirs, mode);
        const or = await ourCheck(ours, mode);
        const after = qemuCheck(ours);
        if (WE_REPAIR_WHERE_QEMU_GIVES_UP.has(`${name}:${mode}`)) {
          expect(qr.exitCode).toBe(1);
          expect(or.exitCode).toBe(0);
          expect(after.exitCode).toBe(0);
          const a = guestContent(ours);
          const b = guestContent(theirs);
          expect(a !== null && b !== null && a.equals(b)).toBe(true);
          continue;
        }
        expectSameReport(or, qr);
        if (BOTH_REPAIRS_ABORT.has(`${name}:${mode}`)) {
          expect(or.exitCode).toBe(1);
          const a = guestContent(ours);
          const b = guestContent(theirs);
          expect(a !== null && b !== null && a.equals(b)).toBe(true);
          continue;
        }
        const qAfter = qemuCheck(theirs);
        expect({ exit: after.exitCode, c: after.corruptions, l: after.leaks }).toEqual({ exit: qAfter.exitCode, c: qAfter.corruptions, l: qAfter.leaks });
        const a = guestContent(ours);
        const b = guestContent(theirs);
        expect(a === null).toBe(b === null);
        if (a && b) expect(a.equals(b)).toBe(true);
      }
    }, 60_000);
  }
});
