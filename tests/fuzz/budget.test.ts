// The fuzz guard's work budget (budget.ts) fails a step that does more work than the image
// declares, by counting, never by the clock: a check through a store that makes every read N times
// (an engine slowed down the way a read-amplification bug slows it) goes over its budget at the
// same read on any machine, and the same check done once stays well inside it. A loop over tables
// already in memory (no read, no allocation) goes over its count of decoded entries.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { AmplifyingStore } from '../helpers/amplifying-store.ts';
import { createImage, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { ENTRY_FACTOR, READ_FACTOR, STEP_CONSTANT_BYTES, STEP_CONSTANT_ENTRIES, budgetFor, declaredBy, meter } from './budget.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { l2TableOffset } from '../helpers/qcow2-mini.ts';
import { GuardStore } from './guard-store.ts';
import { checkStore } from './ops.ts';
import { FuzzViolation } from './violation.ts';

describe('fuzz work budget', () => {
  const tmp = useTempDir('qcowscope-budget-');

  /** A qemu-made image with data, a snapshot and 512-byte clusters (many small metadata reads). */
  function image(): Uint8Array {
    const f = tmp.file('b.qcow2');
    createImage(f, 8 * 1024 * 1024, { clusterSize: 512 });
    qemuIoOk(f, 'write -P 0x5a 0 1M');
    qemuImgOk(['snapshot', '-c', 's1', f]);
    qemuIoOk(f, 'write -P 0x5b 512k 256k');
    return new Uint8Array(fs.readFileSync(f));
  }

  it('declares what the header and tables say (independent reading of the bytes)', () => {
    const b = image();
    const d = declaredBy(b);
    expect(d.clusterSize).toBe(512);
    expect(d.snapshots).toBe(1);
    expect(d.fileSize).toBe(b.length);
    // 1 MiB of data in 512-byte clusters with 64 entries per L2: 32 L2 tables for the snapshot,
    // 32 in the active tree after the copy-on-write (some shared, each counted once per L1)
    expect(d.l2Tables).toBeGreaterThanOrEqual(32 + 32);
    expect(d.bytes).toBeGreaterThan((d.l2Tables + d.refblocks) * 512);
  });

  it('a check within its budget; the same check with every read made N times goes over it, at a count', async () => {
    const b = image();
    const budget = budgetFor(b);

    meter.start('check', budget);
    await checkStore(new GuardStore(new MemoryStore(b.slice(), { name: 'b', writable: false }), { writable: false }));
    const once = meter.stop();
    expect(meter.overrun).toBeNull();
    expect(once.readBytes).toBeLessThan(budget.readBytes);

    // more passes over the metadata than READ_FACTOR passes plus the constant allow
    const times = Math.ceil((READ_FACTOR * budget.declared.bytes + STEP_CONSTANT_BYTES) / once.readBytes) + 1;
    meter.start('slowed check', budget);
    const slowed = new AmplifyingStore(new GuardStore(new MemoryStore(b.slice(), { name: 'b', writable: false }), { writable: false }), times);
    const err = await checkStore(slowed).then(() => null, (e: unknown) => e);
    meter.stop();
    expect(meter.overrun).toBeInstanceOf(FuzzViolation);
    expect(meter.overrun!.kind).toBe('over-budget');
    expect(meter.overrun!.message).toMatch(/^slowed check read \d+ bytes \(budget \d+\); the image declares \d+ bytes of metadata/);
    // the engine saw the violation (or wrapped it): either way the step did not succeed
    expect(err).not.toBeNull();
  });

  it('the allocation guard charges allocations to the step', async () => {
    const b = image();
    const budget = { ...budgetFor(b), allocBytes: 1024 };
    meter.start('alloc', budget);
    const { installAllocationGuard } = await import('./guard-store.ts');
    installAllocationGuard();
    expect(() => new Uint8Array(4096)).toThrow(FuzzViolation);
    meter.stop();
    expect(meter.overrun?.message).toMatch(/^alloc allocated 4096 bytes \(budget 1024\)/);
  });

  it('entries decoded are counted: a check within its count; a loop over one cached L2 table, reading nothing, goes over it', async () => {
    const b = image();
    const budget = budgetFor(b);
    expect(budget.entries).toBe(ENTRY_FACTOR * Math.ceil(budget.declared.bytes / 8) + STEP_CONSTANT_ENTRIES);
    meter.start('check', budget);
    await checkStore(new GuardStore(new MemoryStore(b.slice(), { name: 'b', writable: false }), { writable: false }));
    const once = meter.stop();
    expect(meter.overrun).toBeNull();
    // the check's batched scans hand out tables (tables it reads straight from the store are
    // charged as bytes read instead)
    expect(once.entries).toBeGreaterThan(0);
    expect(once.entries).toBeLessThan(budget.entries);

    const img = await Qcow2Image.open(new GuardStore(new MemoryStore(b.slice(), { name: 'b', writable: false }), { writable: false }));
    const l2 = l2TableOffset(tmp.file('b.qcow2'));
    await img.readL2(l2); // cached from here on
    meter.start('cached loop', budget);
    let turns = 0;
    const err = await (async () => {
      for (;;) {
        await img.readL2(l2);
        turns++;
      }
    })().then(() => null, (e: unknown) => e);
    const work = meter.stop();
    expect(err).toBeInstanceOf(FuzzViolation);
    expect(meter.overrun!.message).toMatch(/^cached loop decoded \d+ entries \(budget \d+\); the image declares/);
    expect(work.readBytes).toBe(0);
    // the same turn on any machine: the count at which one 512-byte table (64 entries) crosses it
    expect(turns).toBe(Math.floor(budget.entries / 64));
  });
});
