// Crash safety of rebase and commit (core/image/rebase.ts, commit.ts) on qemu-made chains: each
// operation runs on memory copies behind a store that stops at each write in turn, and behind one
// that drops any subset of the writes since the last flush. After every crash `qemu-img check`
// finds no corruption in any image (leaks allowed), the overlay names its old backing file or its
// new one, and the overlay over its chain reads exactly as before (`qemu-img compare` with the
// untouched original): rebase and commit never change what the overlay's guest sees.
// Commit writes the backing image first and the overlay only after the backing is flushed, so its
// crash points are those of the backing image's store (overlay untouched) followed by those of the
// overlay's store (backing image complete); both runs are enumerated.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { rebaseImage, type BackingLink } from '../../core/image/rebase.ts';
import { commitInto } from '../../core/image/commit.ts';
import { enumerateCrashStates, enumerateDroppedStates } from '../helpers/crash-store.ts';
import { qemuCheck, qemuImg, qemuImgOk, qemuInfo, qemuIoOk, sha256, sha256Bytes, type QemuCheckResult, type RunResult } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-rccrash-');

/** orig/: base.qcow2 (CS) <- top.qcow2 (64 KiB clusters), and other.qcow2, a different disk. */
function makeChain(cs: string, topSize?: string, bitmap: false | 'base' | 'top' = false): Record<string, Uint8Array> {
  const d = tmp.file('orig');
  fs.mkdirSync(d);
  const f = (n: string): string => path.join(d, n);
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, f('base.qcow2'), '4M']);
  qemuIoOk(f('base.qcow2'), 'write -P 1 0 1M', 'write -c -P 2 2M 128k', 'write -P 3 3M 5k');
  if (bitmap === 'base') qemuImgOk(['bitmap', '--add', '-g', '4k', f('base.qcow2'), 'b0']);
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', f('top.qcow2'), ...(topSize ? [topSize] : [])]);
  if (bitmap === 'top') qemuImgOk(['bitmap', '--add', '-g', '4k', f('top.qcow2'), 'b0']);
  qemuIoOk(f('top.qcow2'), 'write -P 4 64k 100k', 'write -z 1M 64k', 'write -P 5 2M 64k', 'write -P 6 3584k 4k', ...(topSize ? ['write -P 7 6M 64k'] : []));
  qemuImgOk(['create', '-q', '-f', 'qcow2', f('other.qcow2'), '4M']);
  qemuIoOk(f('other.qcow2'), 'write -P 1 0 512k', 'write -P 9 3M 64k');
  return Object.fromEntries(['base.qcow2', 'top.qcow2', 'other.qcow2'].map((n) => [n, new Uint8Array(fs.readFileSync(f(n)))]));
}

const backingOf = (file: string): string | undefined => qemuInfo(file)['backing-filename'] as string | undefined;

/** What QEMU says of one crash state: `qemu-img check` of each image, the overlay's backing link, and (unless `linkOnly`) `qemu-img compare` of the untouched original overlay with it. */
interface Verdict {
  checks: Array<[name: string, check: QemuCheckResult]>;
  backing: string | undefined;
  compare: RunResult | null;
}

// Many crash points leave the same bytes (a dropped write that the next one rewrites, the same
// subset reached twice), and most states leave one or two of the three images untouched: QEMU is
// asked once per distinct state, and base.qcow2 and other.qcow2, which have no backing file (their
// check reads nothing else), are checked once per distinct content. The original overlay is part
// of a state's key, so a verdict never crosses from one test's chain to another's.
const verdicts = new Map<string, Verdict>();
const standaloneChecks = new Map<string, QemuCheckResult>();

function verdictOf(files: Record<string, Uint8Array>, linkOnly: boolean): Verdict {
  const hashes = Object.entries(files).map(([n, b]) => [n, sha256Bytes(b)] as const);
  const key = JSON.stringify([sha256(tmp.file('orig/top.qcow2')), linkOnly, hashes]);
  const known = verdicts.get(key);
  if (known) return known;
  const d = tmp.file('state');
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d);
  for (const [n, b] of Object.entries(files)) fs.writeFileSync(path.join(d, n), b);
  const checks = hashes.map(([n, h]): [string, QemuCheckResult] => {
    if (n === 'top.qcow2') return [n, qemuCheck(path.join(d, n))];
    const k = `${n} ${h}`;
    let c = standaloneChecks.get(k);
    if (!c) standaloneChecks.set(k, (c = qemuCheck(path.join(d, n))));
    return [n, c];
  });
  const top = path.join(d, 'top.qcow2');
  const v: Verdict = { checks, backing: backingOf(top), compare: linkOnly ? null : qemuImg(['compare', tmp.file('orig/top.qcow2'), top]) };
  verdicts.set(key, v);
  return v;
}

/** The images of one crash state judged (the overlay's guest data too, unless `linkOnly`). */
function judge(files: Record<string, Uint8Array>, links: Array<string | undefined>, what: string, linkOnly = false): void {
  const v = verdictOf(files, linkOnly);
  for (const [n, c] of v.checks) {
    expect(c.json?.corruptions ?? 0, `${what}: ${n}\n${c.stderr}`).toBe(0);
    expect([0, 3], `${what}: check ${n} exit code\n${c.stderr}`).toContain(c.exitCode);
  }
  expect(links, `${what}: backing link`).toContain(v.backing);
  if (linkOnly) return;
  const cmp = v.compare!;
  expect(cmp.status, `${what}: the overlay's guest data\n${cmp.stdout}${cmp.stderr}`).toBe(0);
}

async function rebaseRun(store: ImageStore, files: Record<string, Uint8Array>, link: BackingLink, safe: boolean): Promise<void> {
  const backing = await Qcow2Image.open(new MemoryStore(files['base.qcow2']!.slice()));
  const img = await Qcow2Image.open(store, { writable: true, backing });
  const newChain = link ? await Qcow2Image.open(new MemoryStore(files[link.file]!.slice())) : null;
  try {
    await rebaseImage(img, link, safe ? { copyFrom: newChain } : {});
  } finally {
    await img.close().catch(() => undefined);
  }
}

async function commitRun(overlayStore: ImageStore, baseStore: ImageStore, keep: boolean): Promise<void> {
  const overlay = await Qcow2Image.open(overlayStore, { writable: true });
  const base = await Qcow2Image.open(baseStore, { writable: true });
  try {
    await commitInto(overlay, base, { keep });
  } finally {
    await base.close().catch(() => undefined);
    await overlay.close().catch(() => undefined);
  }
}

const DROPPED = { exhaustiveUpTo: 5, samples: 10 };

describe('rebase stopped at every write, or losing unflushed writes', () => {
  const cases: Array<[string, BackingLink, boolean, string, ('top' | false)?]> = [
    ['-u onto another image', { file: 'other.qcow2', format: 'qcow2' }, false, '64k'],
    ['-u -b ""', null, false, '64k'],
    ['safe onto a different disk', { file: 'other.qcow2', format: 'qcow2' }, true, '64k'],
    ['safe onto a different disk, 4 KiB clusters under', { file: 'other.qcow2', format: 'qcow2' }, true, '4k'],
    ['safe -b "" (standalone)', null, true, '64k'],
    // the overlay's bitmap marked in use, the data copied, then stored with the copied ranges set
    ['safe -b "" (standalone), a bitmap in the overlay', null, true, '64k', 'top'],
    ['-u onto another image, a bitmap in the overlay (stored again, as QEMU on close)', { file: 'other.qcow2', format: 'qcow2' }, false, '64k', 'top'],
  ];
  for (const [name, link, safe, cs, bitmap] of cases) {
    it(name, async () => {
      const files = makeChain(cs, undefined, bitmap ?? false);
      const links = ['base.qcow2', link?.file];
      // an unsafe link change leaves the data as the new chain reads it: judged by the link only
      const states = await enumerateCrashStates(files['top.qcow2']!, (s) => rebaseRun(s, files, link, safe));
      expect(states.length).toBeGreaterThan(1);
      const judgeTop = (bytes: Uint8Array, what: string): void => {
        judge({ ...files, 'top.qcow2': bytes }, links, what, !safe);
        // unsafe: nothing but cluster 0 (the header) may change, and the bitmaps where there are
        if (!safe && !bitmap) expect(Buffer.from(bytes).subarray(65536).equals(Buffer.from(files['top.qcow2']!).subarray(65536)), what).toBe(true);
      };
      for (const s of states) judgeTop(s.bytes, `stopped after ${s.writes} writes`);
      const dropped = await enumerateDroppedStates(files['top.qcow2']!, (s) => rebaseRun(s, files, link, safe), DROPPED);
      for (const s of dropped.states()) judgeTop(s.bytes, `epoch ${s.epoch}, writes kept ${s.mask.map(Number).join('')}`);
    });
  }
});

describe('commit stopped at every write, or losing unflushed writes', () => {
  // the last case: the overlay (8 MiB) is larger than its backing file, which is grown first
  // and a persistent bitmap in the backing file (marked in use, then stored with the bits) or in
  // the overlay (in use while it is emptied)
  for (const [cs, keep, topSize, bitmap] of [['64k', false, undefined, false], ['512', false, undefined, false], ['64k', true, undefined, false], ['4k', false, '8M', false], ['64k', false, undefined, 'base'], ['64k', false, undefined, 'top']] as const) {
    it(`${keep ? '-d, ' : ''}base with ${cs} clusters${topSize ? `, grown to ${topSize}` : ''}${bitmap ? `, a bitmap in ${bitmap}` : ''}`, async () => {
      const files = makeChain(cs, topSize, bitmap);
      const top = files['top.qcow2']!;
      const base = files['base.qcow2']!;
      const links = ['base.qcow2'];
      // the backing image written; the overlay untouched
      const baseStates = await enumerateCrashStates(base, (s) => commitRun(new MemoryStore(top.slice()), s, keep));
      expect(baseStates.length).toBeGreaterThan(2);
      for (const s of baseStates) judge({ ...files, 'base.qcow2': s.bytes }, links, `backing stopped after ${s.writes} writes`);
      const baseDropped = await enumerateDroppedStates(base, (s) => commitRun(new MemoryStore(top.slice()), s, keep), DROPPED);
      for (const s of baseDropped.states()) judge({ ...files, 'base.qcow2': s.bytes }, links, `backing epoch ${s.epoch}, kept ${s.mask.map(Number).join('')}`);
      // the backing image complete; the overlay emptied
      const done = new MemoryStore(base.slice());
      await commitRun(new MemoryStore(top.slice()), done, keep);
      const committed = { ...files, 'base.qcow2': done.bytes().slice() };
      const topStates = await enumerateCrashStates(top, (s) => commitRun(s, new MemoryStore(base.slice()), keep));
      if (!keep) expect(topStates.length).toBeGreaterThan(1);
      for (const s of topStates) judge({ ...committed, 'top.qcow2': s.bytes }, links, `overlay stopped after ${s.writes} writes`);
      const topDropped = await enumerateDroppedStates(top, (s) => commitRun(s, new MemoryStore(base.slice()), keep), DROPPED);
      for (const s of topDropped.states()) judge({ ...committed, 'top.qcow2': s.bytes }, links, `overlay epoch ${s.epoch}, kept ${s.mask.map(Number).join('')}`);
    }, 300_000); // every crash state is judged by qemu-img: many states on 512-byte clusters
  }
});
