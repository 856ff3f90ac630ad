// Tables referenced many times (every L1 entry → one L2 table, every L2 entry → one data cluster):
// the walk takes each table once with its multiplicity, so the check stays linear in the metadata
// while its counts, statistics and exit code remain qemu-img's (which walks every reference).
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, poke, qemuCheck, qemuIoOk } from '../helpers/qemu.ts';
import { dataClusterOffset, l2TableOffset, readHeader } from '../helpers/qcow2-mini.ts';
import { openImage } from '../../cli/open.ts';
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';
import { checkJson } from '../../core/ops/check.ts';

function aliasEverything(file: string, copied: boolean): void {
  const h = readHeader(file);
  const l2 = l2TableOffset(file);
  const data = dataClusterOffset(file);
  const flag = copied ? 1n << 63n : 0n;
  const l1 = Buffer.alloc(h.l1Size * 8);
  for (let i = 0; i < h.l1Size; i++) l1.writeBigUInt64BE(BigInt(l2) | (1n << 63n), i * 8);
  poke(file, h.l1TableOffset, l1);
  const t = Buffer.alloc(h.clusterSize);
  for (let i = 0; i < h.clusterSize / 8; i++) t.writeBigUInt64BE(BigInt(data) | flag, i * 8);
  poke(file, l2, t);
}

async function ours(file: string) {
  const img = await openImage(file, { checkMode: true, noBacking: true });
  try {
    const r = await runCheck(img);
    return { exitCode: checkExitCode(r), json: checkJson(file, r), first: r.findings.slice(0, 2).map((f) => f.message) };
  } finally {
    await img.close();
  }
}

describe('check of aliased tables', () => {
  const tmp = useTempDir('qcowscope-check-hostile-');

  it('4096 L1 entries → one L2 table, 8192 entries → one data cluster (33 Mi references)', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '2T', { refcountBits: 64 });
    qemuIoOk(f, 'write -P 0x11 0 64k');
    aliasEverything(f, true);
    const q = qemuCheck(f);
    const o = await ours(f);
    expect(o.exitCode).toBe(q.exitCode);
    expect(o.json).toEqual({ ...q.json, filename: f });
    expect(o.first).toEqual(q.stderr.trim().split('\n').slice(0, 2));
  }, 60_000);

  it('the same with COPIED missing on every entry (16 Ki COPIED errors)', async () => {
    const f = tmp.file('b.qcow2');
    createImage(f, '1G', { refcountBits: 16 });
    qemuIoOk(f, 'write -P 0x11 0 64k');
    aliasEverything(f, false);
    const q = qemuCheck(f);
    const o = await ours(f);
    expect(o.exitCode).toBe(q.exitCode);
    expect(o.json).toEqual({ ...q.json, filename: f });
  }, 60_000);
});
