// Crash safety of snapshot create / revert / delete (issue 4, docs/architecture.md §3): the
// operation runs on a memory copy of a QEMU-made image behind a store that stops at each write in
// turn, and behind one that drops any subset of the writes since the last flush. After every
// crash, `qemu-img check` finds nothing at all (no corruption, and with the shadow commit and the
// settle into QEMU's layout that follows it no leak either), and the image is exactly as before or
// as after: snapshot list, active disk and every snapshot, as `qemu-img convert` reads them. The
// settle is seen to happen (the file ends where QEMU's would: its length is checked against
// qemu-img doing the same operation). One configuration gives the operation the smallest
// memory budget for changed refcount blocks, so that blocks are written early to their new places
// during planning and read back. The CLI is run the same way with QCOWSCOPE_CRASH_AFTER_WRITES=K
// for every K. A base with persistent bitmaps checks the settle's re-store of them (the bitmaps as
// `qemu-img info` lists them are part of what a reader sees).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image, type OpenOptions } from '../../core/image/qcow2-image.ts';
import { planCreate, planDelete, planRevert, type PlannedSnapshotOp } from '../../core/image/snapshot.ts';
import { cliBundle } from '../helpers/cli.ts';
import { imageEndingAt } from '../helpers/file-end.ts';
import { enumerateCrashStates, enumerateDroppedStates } from '../helpers/crash-store.ts';
import { spawnSmall } from '../helpers/spawner.ts';
import {
  createImage, makeTempDir, qemuCheck, qemuConvertToRaw, qemuImgOk, qemuInfo, qemuIoOk, qemuSnapshotCreate, removeDir,
} from '../helpers/qemu.ts';

const MiB = 1024 * 1024;

type Op = 'create' | 'revert' | 'delete';

async function runOp(store: ImageStore, op: Op, open: OpenOptions = {}): Promise<PlannedSnapshotOp> {
  const img = await Qcow2Image.open(store, { ...open, writable: true });
  const p = op === 'create'
    ? await planCreate(img, 'new', { dateSec: 1_700_000_000, dateNsec: 0 })
    : op === 'revert' ? await planRevert(img, 'first') : await planDelete(img, 'first');
  await p.run();
  return p;
}

type Observation = { clean: boolean; check: string; state: string; leaksOnly?: boolean };

/** What a reader sees, judged by QEMU: check result, snapshot list, active and snapshot contents. */
function observe(file: string, dir: string): Observation {
  return observeAll([file], dir)[0]!;
}

/**
 * observe() for many files with fewer qemu-img processes: a check and an info each, the active
 * disks of all clean files read by one `qemu-img convert` of them all (its output is their guest
 * contents one after the other, each `virtual-size` long), then each snapshot as before (`convert
 * -l` reads a snapshot of its first source only).
 */
function observeAll(files: string[], dir: string): Observation[] {
  const out = path.join(dir, 'o.raw');
  const results: Observation[] = [];
  const clean: Array<{ i: number; file: string; info: ReturnType<typeof qemuInfo>; snaps: Array<Array<string | undefined>> }> = [];
  for (const [i, file] of files.entries()) {
    const chk = qemuCheck(file);
    const ok = chk.exitCode === 0 && chk.corruptions === 0 && chk.leaks === 0 && chk.checkErrors === 0;
    const leaksOnly = chk.exitCode === 3 && chk.corruptions === 0 && chk.leaks > 0 && chk.checkErrors === 0;
    results.push({ clean: ok, check: ok ? '' : `${chk.exitCode} ${chk.stderr}`, state: '', ...(leaksOnly ? { leaksOnly } : {}) });
    if (!ok && !leaksOnly) continue;
    const info = qemuInfo(file);
    clean.push({ i, file, info, snaps: (info.snapshots ?? []).map((s) => [s.id, s.name]) });
  }
  if (clean.length === 0) return results;
  qemuImgOk(['convert', '-O', 'raw', ...clean.map((c) => c.file), out]);
  const actives = fs.readFileSync(out);
  let at = 0;
  for (const c of clean) {
    const size = c.info['virtual-size'];
    const h = createHash('sha256');
    // the bitmaps as `qemu-img info` lists them (names, granularity, flags: in-use after a crash would show)
    h.update(JSON.stringify([size, c.snaps, c.info['format-specific']?.data['bitmaps'] ?? null]));
    h.update(actives.subarray(at, at + size));
    at += size;
    for (const [id] of c.snaps) {
      qemuConvertToRaw(c.file, out, { id: id! });
      h.update(fs.readFileSync(out));
    }
    results[c.i]!.state = h.digest('hex');
  }
  expect(at, 'the active disks read together').toBe(actives.length);
  return results;
}

function baseImage(dir: string, opts: Parameters<typeof createImage>[2]): Uint8Array {
  const f = path.join(dir, 'base.qcow2');
  createImage(f, 4 * MiB, opts);
  qemuIoOk(f, 'write -P 1 0 512k', 'write -P 2 2M 64k');
  qemuSnapshotCreate(f, 'first');
  qemuIoOk(f, 'write -P 3 64k 128k', 'write -P 4 3M 64k');
  qemuSnapshotCreate(f, 'second');
  qemuIoOk(f, 'write -P 5 0 4k');
  return new Uint8Array(fs.readFileSync(f));
}

/** A base whose file ends at `clusters` clusters once snapshot 'first' exists (QEMU's next allocation crosses a refcount block's range). */
function baseEndingAt(clusters: number, opts: NonNullable<Parameters<typeof createImage>[2]>, then: (file: string) => void = () => {}) {
  return (dir: string): Uint8Array => {
    const f = path.join(dir, 'base.qcow2');
    const make = (x: string): void => {
      qemuSnapshotCreate(x, 'first');
      then(x);
    };
    expect(imageEndingAt(f, clusters, 2 * MiB, opts, make), `a base ending at ${clusters} clusters`).toBe(true);
    return new Uint8Array(fs.readFileSync(f));
  };
}

type BaseOpts = NonNullable<Parameters<typeof createImage>[2]>;

/** The usual base, then `then` run on it by QEMU's tools (as base.qcow2 in the test's directory). */
function baseThen(opts: BaseOpts, then: (f: string) => void) {
  return (dir: string): Uint8Array => {
    const f = path.join(dir, 'base.qcow2');
    fs.writeFileSync(f, baseImage(dir, opts));
    then(f);
    return new Uint8Array(fs.readFileSync(f));
  };
}

/** The usual base with two persistent bitmaps, one with dirty bits set by qemu-io, one empty and disabled. */
const baseWithBitmaps = (opts: BaseOpts) => baseThen(opts, (f) => {
  qemuImgOk(['bitmap', '--add', '-g', '4096', f, 'dirty']);
  qemuImgOk(['bitmap', '--add', '--disable', f, 'empty']);
  qemuIoOk(f, 'write -P 6 1M 64k', 'write -P 7 3M 4k');
});

/** A base whose first bitmap a crash left in use (qemu-io killed after opening it), and a second one QEMU stores again. */
const baseWithStaleBitmap = (opts: BaseOpts) => baseThen(opts, (f) => {
  qemuImgOk(['bitmap', '--add', '-g', '4096', f, 'stale']);
  const r = spawnSmall('qemu-io', ['-f', 'qcow2', '-c', 'write -P 6 1M 64k', '-c', 'sigraise 9', f]);
  expect(r.signal, 'qemu-io killed itself').toBe('SIGKILL');
  qemuImgOk(['bitmap', '--add', f, 'fresh']);
  qemuIoOk(f, 'write -P 7 3M 4k');
});

/** The usual base shrunk after its snapshots (qemu-img resize --shrink): reverting to 'first' grows the disk within the L1 it has. */
const baseShrunk = (opts: BaseOpts) => baseThen(opts, (f) => {
  qemuImgOk(['resize', '--shrink', f, '2M']);
  qemuIoOk(f, 'write -P 8 1M 64k');
});

/**
 * `leaks`: where the settle publishes the bitmaps past the header's first sector, in two sector
 * writes: between them and until the old bitmaps' refcounts are dropped, their clusters (or the
 * new ones') leak, as DESIGN.md allows; never a corruption, and the state is before or after.
 */
const CONFIGS: Array<{ label: string; opts: Parameters<typeof createImage>[2]; open?: OpenOptions; base?: (dir: string) => Uint8Array; ops?: Op[]; leaks?: true }> = [
  { label: '64 KiB clusters, 16-bit refcounts', opts: {} },
  { label: '4 KiB clusters, 4-bit refcounts', opts: { clusterSize: 4096, refcountBits: 4 as const } },
  { label: 'v2, 1 KiB clusters', opts: { clusterSize: 1024, compat: '0.10' as const } },
  // 512 B clusters: a refcount block counts 128 KiB of the file, and the operation keeps 4 blocks.
  { label: '512 B clusters, refcount blocks written early', opts: { clusterSize: 512 }, open: { commitRefblockBytes: 0 } },
  // The settle then adds a refcount block where QEMU does (64-bit refcounts: 64 clusters a block),
  // or grows the refcount table (64 blocks in its one cluster), and rewrites the table.
  { label: 'a refcount block added (512 B clusters, 64-bit refcounts)', opts: { clusterSize: 512, refcountBits: 64 }, base: baseEndingAt(192, { clusterSize: 512, refcountBits: 64 }), ops: ['create', 'delete'] },
  { label: 'the refcount table grown (512 B clusters, 64-bit refcounts)', opts: { clusterSize: 512, refcountBits: 64 }, base: baseEndingAt(4095, { clusterSize: 512, refcountBits: 64 }), ops: ['create'] },
  // The settle stores the bitmaps again as QEMU does on close (revert: QEMU refuses with bitmaps).
  { label: 'a base with bitmaps (4 KiB clusters)', opts: { clusterSize: 4096 }, base: baseWithBitmaps({ clusterSize: 4096 }), ops: ['create', 'delete'] },
  // 64 KiB clusters: the bitmaps extension lies past the header's first sector (after the feature
  // table), so the settle publishes in three writes, each within a sector
  { label: 'a base with bitmaps (64 KiB clusters, the extension past the first sector)', opts: {}, base: baseWithBitmaps({}), ops: ['create', 'delete'], leaks: true },
  // The bitmaps stored again cross into a refcount block's range (create: QEMU adds the block on
  // the way), and the delete frees the old ones in a block the operation itself does not change.
  {
    label: 'bitmaps at a refcount block\'s range (512 B clusters, 64-bit refcounts)', opts: { clusterSize: 512, refcountBits: 64 },
    base: baseEndingAt(256, { clusterSize: 512, refcountBits: 64 }, (f) => {
      qemuImgOk(['bitmap', '--add', '-g', '4096', f, 'dirty']);
      qemuImgOk(['bitmap', '--add', '--disable', f, 'empty']);
      qemuIoOk(f, 'write -P 6 1M 64k', 'write -P 7 1536k 4k');
    }),
    ops: ['create', 'delete'],
  },
  // Revert to a larger snapshot: QEMU only rewrites the size (and clears the COPIED bits of the
  // snapshot's L1 table in place, as on every revert).
  { label: 'revert growing the disk (4 KiB clusters)', opts: { clusterSize: 4096 }, base: baseShrunk({ clusterSize: 4096 }), ops: ['revert'] },
  // A bitmap in use stays as it is; the other is stored again, in a new directory.
  { label: 'a bitmap in use and one not (4 KiB clusters)', opts: { clusterSize: 4096 }, base: baseWithStaleBitmap({ clusterSize: 4096 }), ops: ['create', 'delete'] },
];

describe('snapshot operations survive a crash at any point', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('qcowscope-crash-');
  });
  afterAll(() => removeDir(dir));

  for (const cfg of CONFIGS) {
    for (const op of cfg.ops ?? (['create', 'revert', 'delete'] as const)) {
      it(`${op}, ${cfg.label}: stop at each write, drop any unflushed subset`, async () => {
        const base = cfg.base ? cfg.base(dir) : baseImage(dir, cfg.opts);
        // Many crash points leave the same bytes (a dropped write that the next one rewrites, the
        // same subset reached twice): QEMU judges each distinct image once. The distinct images
        // are gathered first (each to its own file) and judged together (observeAll).
        const seen = new Map<string, Observation>();
        const pending = new Map<string, string>();
        const keyOf = (bytes: Uint8Array): string => {
          const key = createHash('sha256').update(bytes).digest('hex');
          if (!seen.has(key) && !pending.has(key)) {
            const f = path.join(dir, `state-${pending.size}.qcow2`);
            fs.writeFileSync(f, bytes);
            pending.set(key, f);
          }
          return key;
        };
        const judgePending = (): void => {
          const keys = [...pending.keys()];
          const files = [...pending.values()];
          observeAll(files, dir).forEach((o, i) => seen.set(keys[i]!, o));
          for (const f of files) fs.rmSync(f);
          pending.clear();
        };
        const judge = (bytes: Uint8Array): Observation => {
          const key = keyOf(bytes);
          judgePending();
          return seen.get(key)!;
        };
        const before = judge(base);
        expect(before.clean).toBe(true);
        if (cfg.open) {
          const p = await runOp(new MemoryStore(base.slice()), op, cfg.open);
          expect(p.commit.overlay.earlyWrites, 'refcount blocks written early').toBeGreaterThan(0);
        }
        const states = await enumerateCrashStates(base, async (s) => { await runOp(s, op, cfg.open); });
        const after = judge(states[states.length - 1]!.bytes);
        expect(after.clean, after.check).toBe(true);
        const qf = path.join(dir, 'qemu.qcow2');
        fs.writeFileSync(qf, base);
        qemuImgOk(['snapshot', op === 'create' ? '-c' : op === 'revert' ? '-a' : '-d', op === 'create' ? 'new' : 'first', qf]);
        expect(states[states.length - 1]!.bytes.length, 'length as qemu-img leaves it').toBe(fs.statSync(qf).size);
        expect(after.state).not.toBe(before.state);
        expect(states.length).toBeGreaterThan(3);
        const { states: dropped } = await enumerateDroppedStates(base, async (s) => { await runOp(s, op, cfg.open); }, { exhaustiveUpTo: 8, samples: 64 });
        const stateKeys = states.map((st) => keyOf(st.bytes));
        const droppedKeys: Array<{ epoch: number; mask: boolean[]; key: string }> = [];
        for (const st of dropped()) droppedKeys.push({ epoch: st.epoch, mask: st.mask, key: keyOf(st.bytes) });
        judgePending();
        let sawBefore = 0;
        let sawAfter = 0;
        for (const [i, st] of states.entries()) {
          const o = seen.get(stateKeys[i]!)!;
          expect(o.clean || (cfg.leaks === true && o.leaksOnly === true), `crash after ${st.writes} writes: ${o.check}`).toBe(true);
          expect([before.state, after.state], `crash after ${st.writes} writes`).toContain(o.state);
          if (o.state === before.state) sawBefore++;
          else sawAfter++;
        }
        expect(sawBefore).toBeGreaterThan(0);
        expect(sawAfter).toBeGreaterThan(0);
        let n = 0;
        for (const { key, ...st } of droppedKeys) {
          const o = seen.get(key)!;
          expect(o.clean || (cfg.leaks === true && o.leaksOnly === true), `epoch ${st.epoch}, mask ${st.mask.map(Number).join('')}: ${o.check}`).toBe(true);
          expect([before.state, after.state], `epoch ${st.epoch}, mask ${st.mask.map(Number).join('')}`).toContain(o.state);
          n++;
        }
        expect(n).toBeGreaterThan(2);
      }, 600_000);
    }
  }
});

describe('the CLI with QCOWSCOPE_CRASH_AFTER_WRITES', () => {
  let dir = '';
  let bundle = '';
  beforeAll(async () => {
    dir = makeTempDir('qcowscope-clicrash-');
    bundle = await cliBundle();
  }, 60_000);
  afterAll(() => removeDir(dir));

  for (const [op, args] of [['create', ['-c', 'new']], ['revert', ['-a', 'first']], ['delete', ['-d', 'first']]] as const) {
    it(`snapshot ${args.join(' ')}: every K leaves the image as before or as after, clean`, () => {
      const base = baseImage(dir, {});
      const file = path.join(dir, 'cli.qcow2');
      fs.writeFileSync(file, base);
      // QEMU judges each distinct file once (a write that rewrites bytes already there leaves the same file)
      const seen = new Map<string, ReturnType<typeof observe>>();
      const observeOnce = (): ReturnType<typeof observe> => {
        const key = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
        let o = seen.get(key);
        if (!o) seen.set(key, (o = observe(file, dir)));
        return o;
      };
      const before = observeOnce();
      const states: string[] = [];
      let completed = false;
      for (let k = 0; k < 64 && !completed; k++) {
        fs.writeFileSync(file, base);
        const r = spawnSmall(process.execPath, [bundle, 'snapshot', ...args, file], {
          env: { ...process.env, QCOWSCOPE_CRASH_AFTER_WRITES: String(k) },
        });
        if (r.status === 0) completed = true;
        else expect(r.status, `K=${k}: ${r.stderr}`).toBe(75);
        const o = observeOnce();
        expect(o.clean, `${op} K=${k}: ${o.check}`).toBe(true);
        states.push(o.state);
      }
      expect(completed).toBe(true);
      const after = states[states.length - 1]!;
      expect(after).not.toBe(before.state);
      for (const [k, s] of states.entries()) expect([before.state, after], `K=${k}`).toContain(s);
      // Before until the first header write lands, after from then on (the settle's writes, the
      // second header write and the cut come after the operation is published).
      const firstAfter = states.indexOf(after);
      expect(firstAfter).toBeGreaterThan(0);
      expect(states.slice(firstAfter).every((s) => s === after)).toBe(true);
      expect(states.slice(0, firstAfter).every((s) => s === before.state)).toBe(true);
    }, 120_000);
  }
});
