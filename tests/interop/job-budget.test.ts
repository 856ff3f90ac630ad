// The worker's job budget (worker/job-budget.ts): a check or repair reads at most a stated
// multiple of the metadata the image declares. A check of a qemu-made image stays inside it and
// agrees with qemu-img check; the same check through an engine slowed on purpose (every read made
// many times) ends with one line, code WORK_BUDGET, instead of reading on. Diff, snapshot space
// and raw export run under the same budget (export's adds twice the file size for guest data): on
// a qemu-made image they agree with qemu-img; on one whose L2 tables name one data cluster for
// every guest cluster of a 4 GiB disk (a 1 MiB file), the export stops with WORK_BUDGET after
// reading about 70 MiB instead of reading 4 GiB.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { BudgetedStore, READ_CONSTANT, READ_FACTOR, declaredMetadataBytes } from '../../worker/job-budget.ts';
import { AmplifyingStore } from '../helpers/amplifying-store.ts';
import { dataClusterOffset, readHeader, readSnapshots, writeL2Entry } from '../helpers/qcow2-mini.ts';
import { openImage as openForViews, type JobContext } from '../../worker/engine-adapter.ts';
import { createImage, qemuCheck, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { ForwardingStore } from '../../core/io/forwarding-store.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

describe('worker job budget', () => {
  const tmp = useTempDir('qcowscope-jobbudget-');

  function image(): string {
    const f = tmp.file('j.qcow2');
    createImage(f, 16 * 1024 * 1024, { clusterSize: 4096 });
    qemuIoOk(f, 'write -P 0x21 0 2M');
    qemuImgOk(['snapshot', '-c', 's1', f]);
    qemuIoOk(f, 'write -P 0x22 1M 1M');
    return f;
  }

  it('declares at least the tables the header and snapshot table name', async () => {
    const f = image();
    const h = readHeader(f);
    const img = await Qcow2Image.open(new MemoryStore(new Uint8Array(fs.readFileSync(f)), { writable: false }));
    const tables = 4096 + h.l1Size * 8 + h.refcountTableClusters * 4096 + readSnapshots(f).reduce((n, s) => n + s.l1Size * 8, 0);
    expect(declaredMetadataBytes(img)).toBeGreaterThan(tables);
  });

  it('a check within budget agrees with qemu-img; a slowed one stops with one line', async () => {
    const f = image();
    const bytes = new Uint8Array(fs.readFileSync(f));
    const ok = new BudgetedStore(new MemoryStore(bytes.slice(), { writable: false }), 'check');
    const img = await Qcow2Image.open(ok, { checkMode: true });
    ok.setBudget(img);
    expect(checkExitCode(await runCheck(img))).toBe(qemuCheck(f).exitCode);
    const once = ok.bytesRead;

    const budgeted = new BudgetedStore(new MemoryStore(bytes.slice(), { writable: false }), 'check');
    const times = Math.ceil((READ_FACTOR * declaredMetadataBytes(img) + READ_CONSTANT) / once) + 1;
    const slowed = await Qcow2Image.open(new AmplifyingStore(budgeted, times), { checkMode: true });
    budgeted.setBudget(slowed);
    const err = await runCheck(slowed).then(() => null, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'WORK_BUDGET' });
    const message = (err as Error).message;
    expect(message).toMatch(/^The check was stopped: it read [\d.]+ MiB, more than 8 times the [\d.]+ MiB of metadata this image declares/);
    expect(message).not.toMatch(/\n/);
  });

  const job = (): JobContext => ({ signal: new AbortController().signal, progress: () => {} });

  /** Bytes read through a store (what the job's reads cost). */
  class Counting extends ForwardingStore {
    bytes = 0;
    override read(offset: number, length: number): Promise<Uint8Array> {
      this.bytes += length;
      return this.inner.read(offset, length);
    }
  }

  it('diff, snapshot space and export of a qemu-made image stay within budget and agree with qemu-img', async () => {
    const f = image();
    const eng = await openForViews(new MemoryStore(new Uint8Array(fs.readFileSync(f)), { writable: false }));
    const id = eng.snapshots()[0]!.id;
    const diff = await eng.diff(id, null, job());
    // 1 MiB rewritten after the snapshot: 256 clusters of 4 KiB
    expect(diff.changedClusters).toBe(256);
    const space = await eng.snapshotSpace(id, job());
    expect(space).toBeDefined();
    const raw = tmp.file('j.raw');
    qemuImgOk(['convert', '-O', 'raw', f, raw]);
    const blob = await eng.exportRaw(null, job());
    expect(Buffer.from(await blob.arrayBuffer()).equals(fs.readFileSync(raw))).toBe(true);
  });

  it('an export whose tables name one cluster for every guest cluster stops at its budget, in one line', async () => {
    const f = tmp.file('same.qcow2');
    createImage(f, '4G');
    // one 64 KiB data cluster in each 512 MiB an L2 table covers: 8 L2 tables
    for (let i = 0; i < 8; i++) qemuIoOk(f, `write -P 0x5${i} ${i * 512}M 64k`);
    const h = readHeader(f);
    const data = dataClusterOffset(f, 0, 0, h);
    for (let l1 = 0; l1 < 8; l1++) for (let l2 = 0; l2 < 8192; l2++) writeL2Entry(f, l1, l2, BigInt(data) | (1n << 63n), h);
    const file = fs.readFileSync(f);
    expect(file.length).toBeLessThan(2 * 1024 * 1024);
    expect(qemuCheck(f).exitCode, 'qemu-img calls it corrupt').toBe(2);
    const counting = new Counting(new MemoryStore(new Uint8Array(file), { writable: false }));
    const eng = await openForViews(counting);
    const before = counting.bytes;
    const err = await eng.exportRaw(null, job()).then(() => null, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'WORK_BUDGET' });
    expect((err as Error).message).toMatch(/^The export was stopped: it read [\d.]+ MiB, more than 8 times the [\d.]+ MiB of metadata this image declares and [\d.]+ MiB of data plus 64\.0 MiB$/);
    // stopped near its budget, far from the 4 GiB the tables name
    expect(counting.bytes - before).toBeLessThan(READ_CONSTANT + 8 * 1024 * 1024 + 4 * file.length + 8 * 1024 * 1024);
  }, 60_000);
});
