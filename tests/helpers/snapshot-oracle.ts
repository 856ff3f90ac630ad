// QEMU's answers to "what do the snapshots hold alone" and "what does deleting them free", for the
// interop and e2e tests: host clusters by qemu-img map (snapshots applied on copies with
// qemu-img snapshot -a), and clusters freed by qemu-img snapshot -d on a copy, counted by the
// test's own refcount parser.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuCheck, qemuImgOk, qemuMap } from './qemu.ts';
import { getRefcount, readHeader } from './qcow2-mini.ts';

/** Host clusters holding guest data of the file's active disk, by qemu-img map. */
export function dataClusters(file: string, cs: number): Set<number> {
  const out = new Set<number>();
  for (const e of qemuMap(file)) {
    if (!e.data || e.offset === undefined) continue;
    for (let o = e.offset; o < e.offset + e.length; o += cs) out.add(Math.floor(o / cs));
  }
  return out;
}

/** Host clusters with a non-zero refcount (read by the test's own mini parser). */
export function usedClusters(file: string): number {
  const h = readHeader(file);
  const n = Math.ceil(fs.statSync(file).size / h.clusterSize);
  let used = 0;
  for (let c = 0; c < n; c++) if (getRefcount(file, c, h) > 0n) used++;
  return used;
}

/** Data clusters of the snapshots `names` that the active disk does not use, and those it shares with them. */
export function snapshotData(file: string, names: string[], dir: string): { onlySnapshots: number[]; shared: number[]; active: Set<number> } {
  const cs = readHeader(file).clusterSize;
  const active = dataClusters(file, cs);
  const inSnapshots = new Set<number>();
  for (const sn of names) {
    const copy = path.join(dir, `apply-${sn}-${path.basename(file)}`);
    fs.copyFileSync(file, copy);
    qemuImgOk(['snapshot', '-a', sn, copy]);
    for (const c of dataClusters(copy, cs)) inSnapshots.add(c);
    fs.rmSync(copy);
  }
  const all = [...inSnapshots].sort((a, b) => a - b);
  return { onlySnapshots: all.filter((c) => !active.has(c)), shared: all.filter((c) => active.has(c)), active };
}

/** Clusters qemu-img frees by deleting the snapshots `names` (in order) on a copy; the copy must check clean. */
export function freedByDeleting(file: string, names: string[], dir: string): number {
  const copy = path.join(dir, `del-${names.length > 4 ? `${names.length}-snapshots` : names.join('-')}-${path.basename(file)}`);
  fs.copyFileSync(file, copy);
  for (const sn of names) qemuImgOk(['snapshot', '-d', sn, copy]);
  if (qemuCheck(copy).exitCode !== 0) throw new Error(`qemu-img check of ${copy} is not clean after deleting ${names.join(', ')}`);
  const freed = usedClusters(file) - usedClusters(copy);
  fs.rmSync(copy);
  return freed;
}
