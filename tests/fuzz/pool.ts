// A pool of worker threads that run fuzz cases with a hard time limit and a heap limit: a case
// that overruns is killed (worker.terminate) and reported as a hang; a worker that dies (out of
// memory, native crash) is reported as a crash of its case; either way a fresh worker takes over.
// The worker code is bundled with esbuild first (Node 20 cannot run .ts in a worker by itself).
import { build } from 'esbuild';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { REQUIRE_BANNER } from '../../scripts/cli-bundle.mjs';
import type { FuzzCase } from './mutator.ts';
import type { CaseResult, SeedBytes } from './run-case.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));

let bundled: Promise<string> | null = null;

/** Bundle tests/fuzz/worker.ts (and the engine it imports) to one .mjs file. */
export function bundleWorker(): Promise<string> {
  bundled ??= (async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-fuzz-worker-'));
    const outfile = path.join(dir, 'worker.mjs');
    await build({
      entryPoints: [path.join(HERE, 'worker.ts')],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      logLevel: 'warning',
      banner: { js: REQUIRE_BANNER },
    });
    return outfile;
  })();
  return bundled;
}

export interface PoolOptions {
  workers?: number;
  /** Hard per-case limit: the worker is killed past it. */
  timeoutMs?: number;
  /** Heap limit of each worker (MiB): a case that needs more is a crash. */
  maxHeapMb?: number;
  readOnly?: boolean;
}

interface Slot {
  worker: Worker;
  busy: { id: number; c: FuzzCase; resolve: (r: CaseResult) => void; timer: NodeJS.Timeout; started: number } | null;
}

export class FuzzPool {
  private slots: Slot[] = [];
  private queue: Array<{ c: FuzzCase; resolve: (r: CaseResult) => void }> = [];
  private nextId = 1;
  private readonly timeoutMs: number;

  private constructor(private readonly script: string, private readonly seeds: Record<string, SeedBytes>, private readonly opts: PoolOptions) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    const n = opts.workers ?? Math.max(1, Math.min(4, os.availableParallelism?.() ?? 2));
    for (let i = 0; i < n; i++) this.slots.push(this.spawn());
  }

  static async create(seeds: Record<string, SeedBytes>, opts: PoolOptions = {}): Promise<FuzzPool> {
    return new FuzzPool(await bundleWorker(), seeds, opts);
  }

  private spawn(): Slot {
    const worker = new Worker(this.script, {
      workerData: { seeds: this.seeds },
      resourceLimits: { maxOldGenerationSizeMb: this.opts.maxHeapMb ?? 1024 },
    });
    const slot: Slot = { worker, busy: null };
    worker.on('message', (m: { id: number; result?: CaseResult; error?: string }) => {
      const b = slot.busy;
      if (!b || (m.id !== b.id && m.id !== -1)) return;
      if (m.id === -1) {
        // an unhandled rejection while this case ran: fail it, keep waiting for its result
        (b as { extra?: string[] } & typeof b).extra = [...((b as { extra?: string[] }).extra ?? []), m.error ?? ''];
        return;
      }
      clearTimeout(b.timer);
      slot.busy = null;
      const extra = (b as { extra?: string[] }).extra ?? [];
      const r: CaseResult = m.result ?? { name: b.c.name, steps: [], failures: [{ step: '(harness)', kind: 'harness', message: m.error ?? 'no result' }], bytesRead: 0, budgetUse: { step: '', share: 0 }, ms: Date.now() - b.started };
      for (const x of extra) r.failures.push({ step: '(async)', kind: 'unhandled-rejection', message: x.split('\n')[0]!, stack: x });
      b.resolve(r);
      this.pump();
    });
    const onDeath = (why: string): void => {
      const b = slot.busy;
      if (b) {
        clearTimeout(b.timer);
        slot.busy = null;
        b.resolve({ name: b.c.name, steps: [], failures: [{ step: '(worker)', kind: 'crash', message: why }], bytesRead: 0, budgetUse: { step: '', share: 0 }, ms: Date.now() - b.started });
      }
      const i = this.slots.indexOf(slot);
      if (i >= 0 && !this.closed) {
        this.slots[i] = this.spawn();
        this.pump();
      }
    };
    worker.on('error', (e) => onDeath(`worker error: ${e.message}`));
    worker.on('exit', (code) => {
      if (slot.busy) onDeath(`worker exited with code ${code}`);
    });
    return slot;
  }

  private closed = false;

  run(c: FuzzCase): Promise<CaseResult> {
    return new Promise((resolve) => {
      this.queue.push({ c, resolve });
      this.pump();
    });
  }

  private pump(): void {
    for (const slot of this.slots) {
      if (slot.busy || this.queue.length === 0) continue;
      const job = this.queue.shift()!;
      const id = this.nextId++;
      const started = Date.now();
      const timer = setTimeout(() => {
        const b = slot.busy;
        if (!b || b.id !== id) return;
        slot.busy = null;
        b.resolve({ name: b.c.name, steps: [], failures: [{ step: '(worker)', kind: 'timeout', message: `case did not finish within ${this.timeoutMs} ms` }], bytesRead: 0, budgetUse: { step: '', share: 0 }, ms: Date.now() - started });
        const i = this.slots.indexOf(slot);
        void slot.worker.terminate();
        if (i >= 0) this.slots[i] = this.spawn();
        this.pump();
      }, this.timeoutMs);
      slot.busy = { id, c: job.c, resolve: job.resolve, timer, started };
      slot.worker.postMessage({ id, c: job.c, readOnly: this.opts.readOnly });
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
