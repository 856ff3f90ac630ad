// Every long read-only worker job can be cancelled (the list is in worker/api.ts): through the
// worker's engine layer on a qemu-made image with snapshots, a job whose signal is aborted before
// it starts, or at its first progress report, rejects with code CANCELLED and one line, and the
// same job left alone finishes (its answer checked against qemu-img where it has one).
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { openImage, type EngineImage, type JobContext } from '../../worker/engine-adapter.ts';
import { createImage, qemuCheck, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

/** A job whose signal is aborted before it starts (`at: 'start'`), at its first progress, or never. */
function job(at: 'start' | 'progress' | 'never'): JobContext {
  const c = new AbortController();
  if (at === 'start') c.abort();
  return { signal: c.signal, progress: () => (at === 'progress' ? c.abort() : undefined) };
}

type Kind = { name: string; progress: boolean; run(e: EngineImage, j: JobContext): Promise<unknown> };

describe('worker jobs can be cancelled', () => {
  const tmp = useTempDir('qcowscope-cancel-');
  let file = '';
  let eng: EngineImage;

  const kinds = (): Kind[] => {
    const id = eng.snapshots()[0]!.id;
    return [
      { name: 'check', progress: true, run: (e, j) => e.check(j, 'c.qcow2') },
      { name: 'cluster map', progress: true, run: (e, j) => e.clusterMap(j) },
      { name: 'diff', progress: true, run: (e, j) => e.diff(id, null, j) },
      { name: 'raw export', progress: true, run: (e, j) => e.exportRaw(null, j) },
      { name: 'snapshot space', progress: false, run: (e, j) => e.snapshotSpace(id, j) },
      { name: 'space of all snapshots', progress: false, run: (e, j) => e.snapshotSpace(null, j) },
    ];
  };

  async function open(): Promise<EngineImage> {
    if (!fs.existsSync(file)) {
      file = tmp.file('c.qcow2');
      // 512-byte clusters: 4 MiB of data in 128 L2 tables, enough for every walk to report progress
      createImage(file, '64M', { clusterSize: 512 });
      qemuIoOk(file, 'write -P 0x31 0 4M');
      qemuImgOk(['snapshot', '-c', 's1', file]);
      qemuIoOk(file, 'write -P 0x32 1M 2M');
      qemuImgOk(['snapshot', '-c', 's2', file]);
    }
    return openImage(new MemoryStore(new Uint8Array(fs.readFileSync(file)), { writable: false }));
  }

  it('each job finishes when left alone', async () => {
    eng = await open();
    for (const k of kinds()) await expect(k.run(eng, job('never')), k.name).resolves.toBeDefined();
    const r = await eng.check(job('never'), 'c.qcow2');
    expect(qemuCheck(file).exitCode).toBe(0);
    expect([r.corruptions, r.leaks, r['check-errors']]).toEqual([0, 0, 0]);
  });

  it('each job cancelled before it starts or at its first progress rejects with CANCELLED', async () => {
    eng = await open();
    for (const k of kinds()) {
      for (const at of k.progress ? (['start', 'progress'] as const) : (['start'] as const)) {
        const err = await k.run(await open(), job(at)).then(() => null, (e: unknown) => e);
        expect(err, `${k.name} cancelled at ${at}`).toMatchObject({ code: 'CANCELLED' });
        expect((err as Error).message, k.name).toMatch(/^The [a-z ]+ was cancelled$/);
      }
    }
  });
});
