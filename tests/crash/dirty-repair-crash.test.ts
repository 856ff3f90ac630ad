// Crash safety of the two repairs not covered by repair-crash.test.ts: the repair of a dirty image
// (lazy refcounts left stale by a QEMU that was killed) that runs before the first write to it,
// followed by that write; and `check -r leaks`. Each runs on a memory copy behind a store that
// stops at each write in turn and behind one that drops any subset of the unflushed writes.
// Judged by QEMU: a state whose dirty bit is still set must be one QEMU can repair (qemu-img check
// -r all leaves no corruption); one whose dirty bit is clear must have no corruption as it is;
// the guest reads as before, or (for the written cluster) as after.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { openImage } from '../../core/ops/open.ts';
import { writeGuest } from '../../core/image/write.ts';
import { runCheck } from '../../core/analysis/check.ts';
import { enumerateCrashStates, enumerateDroppedStates, judgeEachDistinct } from '../helpers/crash-store.ts';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { createImage, qemuCheck, qemuConvertToRaw, qemuIo } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-dirty-crash-');
const MiB = 1024 * 1024;

function guest(bytes: Uint8Array, name: string): Buffer {
  const f = tmp.file(`${name}.qcow2`);
  fs.writeFileSync(f, bytes);
  const out = tmp.file(`${name}.raw`);
  qemuConvertToRaw(f, out);
  return fs.readFileSync(out);
}

/** Incompatible feature bit 0 (dirty) of a v3 header. */
function isDirty(bytes: Uint8Array): boolean {
  return (bytes[79]! & 1) !== 0;
}

describe('repair of a dirty image, then the write that needed it, stopped at every write', () => {
  it('lazy refcounts left stale by a killed qemu-io', async () => {
    const file = tmp.file('dirty.qcow2');
    createImage(file, '8M', { lazyRefcounts: true });
    // qemu-io killed by its own SIGKILL after the write: the dirty bit stays set, refcounts stale
    qemuIo(['-f', 'qcow2', '-c', 'write -P 0x5a 0 1M', '-c', 'sigraise 9', file]);
    const base = new Uint8Array(fs.readFileSync(file));
    expect(isDirty(base)).toBe(true);
    expect(qemuCheck(file).corruptions).toBeGreaterThan(0); // what a dirty image looks like unrepaired

    const payload = new Uint8Array(65536).fill(0xc3);
    const operation = async (store: ImageStore): Promise<void> => {
      // the engine layer's writable open (core/ops/open.ts) repairs the dirty image, as QEMU's does
      const img = await openImage({ name: 'dirty.qcow2', store }, { writable: true });
      await writeGuest(img, 2 * MiB, payload);
    };
    const before = guest(base, 'before');
    const states = await enumerateCrashStates(base, operation);
    const final = states[states.length - 1]!;
    expect(states.length).toBeGreaterThan(4); // the repair's writes, the header update, the write's
    expect(final.completed).toBe(true);
    expect(isDirty(final.bytes)).toBe(false);
    const after = guest(final.bytes, 'after');
    expect(qemuCheck(tmp.file('after.qcow2')).exitCode).toBe(0);
    expect(after.subarray(2 * MiB, 2 * MiB + 65536).every((b) => b === 0xc3)).toBe(true);

    const judge = judgeEachDistinct((bytes, label) => {
      const g = guest(bytes, 'state');
      for (let at = 0; at < g.length; at += 65536) {
        const unit = g.subarray(at, at + 65536);
        const ok = unit.equals(before.subarray(at, at + 65536)) || unit.equals(after.subarray(at, at + 65536));
        expect(ok, `${label}: guest cluster at ${at} reads neither old nor new`).toBe(true);
      }
      const f = tmp.file('state.qcow2');
      if (isDirty(bytes)) {
        const r = qemuCheck(f, 'all');
        expect(r.checkErrors, `${label}: qemu-img check -r all`).toBe(0);
        expect(qemuCheck(f).corruptions, `${label}: corruptions left after QEMU's repair`).toBe(0);
      } else {
        const r = qemuCheck(f);
        expect({ label, corruptions: r.corruptions, checkErrors: r.checkErrors }).toEqual({ label, corruptions: 0, checkErrors: 0 });
      }
    });
    for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
    const { states: dropped } = await enumerateDroppedStates(base, operation, { exhaustiveUpTo: 4, samples: 12 });
    for (const s of dropped()) judge(s.bytes, `epoch ${s.epoch}, landed ${s.mask.map((b) => (b ? 1 : 0)).join('')}`);
  }, 300_000);
});

describe('check -r leaks stopped at every write', () => {
  for (const name of ['leaked-cluster', 'refcount-too-high-data']) {
    it(name, async () => {
      const file = tmp.file('damaged.qcow2');
      makeDamagedImage(name, file);
      const damaged = qemuCheck(file);
      expect(damaged.leaks).toBeGreaterThan(0);
      const base = new Uint8Array(fs.readFileSync(file));
      const content = guest(base, 'before');
      const operation = async (store: ImageStore): Promise<void> => {
        const img = await Qcow2Image.open(store, { checkMode: true, writable: true });
        await runCheck(img, { repair: 'leaks' });
      };
      const states = await enumerateCrashStates(base, operation);
      expect(states.length).toBeGreaterThan(1);
      const judge = judgeEachDistinct((bytes, label) => {
        expect(guest(bytes, 'state').equals(content), `${label}: guest content`).toBe(true);
        const r = qemuCheck(tmp.file('state.qcow2'));
        // never worse than the damaged image: no corruption that was not there, no more leaks
        expect(r.corruptions, `${label}: corruptions`).toBeLessThanOrEqual(damaged.corruptions);
        expect(r.leaks, `${label}: leaks`).toBeLessThanOrEqual(damaged.leaks);
      });
      for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
      const last = states[states.length - 1]!;
      fs.writeFileSync(tmp.file('done.qcow2'), last.bytes);
      const done = qemuCheck(tmp.file('done.qcow2'));
      expect(done.leaks).toBe(0);
      const { states: dropped } = await enumerateDroppedStates(base, operation, { exhaustiveUpTo: 4, samples: 12 });
      for (const s of dropped()) judge(s.bytes, `epoch ${s.epoch}, landed ${s.mask.map((b) => (b ? 1 : 0)).join('')}`);
    }, 300_000);
  }
});
