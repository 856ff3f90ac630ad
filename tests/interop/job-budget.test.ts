// The worker's job budget (worker/job-budget.ts): a check or repair reads at most a stated
// multiple of the metadata the image declares. A check of a qemu-made image stays inside it and
// agrees with qemu-img check; the same check through an engine slowed on purpose (every read made
// many times) ends with one line, code WORK_BUDGET, instead of reading on.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { BudgetedStore, READ_CONSTANT, READ_FACTOR, declaredMetadataBytes } from '../../worker/job-budget.ts';
import { AmplifyingStore } from '../helpers/amplifying-store.ts';
import { readHeader, readSnapshots } from '../helpers/qcow2-mini.ts';
import { createImage, qemuCheck, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
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
});
