// The one bridge to the engine worker: it owns the Worker (started lazily, on first use), wraps
// the typed Comlink remote, and turns the worker's job protocol (job ids + cancel) into the
// ordinary AbortSignal the UI already knows. Components never touch a Worker.
import * as Comlink from 'comlink';
import '../../worker/transfer.ts';
import type { EngineApi, ImageId, JobId, Progress, ProgressFn } from '../../worker/api.ts';

export type { Progress };

export interface CallOptions {
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

let remote: Comlink.Remote<EngineApi> | undefined;
let jobCounter = 0;

/** The remote engine, started on first use. */
export function engine(): Comlink.Remote<EngineApi> {
  if (!remote) {
    const worker = new Worker(new URL('../../worker/engine.worker.ts', import.meta.url), { type: 'module', name: 'qcowscope-engine' });
    remote = Comlink.wrap<EngineApi>(worker);
  }
  return remote;
}

/**
 * Turn CallOptions into the worker's job arguments: a job id for cancel() and a proxied progress
 * callback (both top-level arguments: Comlink proxies only those).
 */
export async function withJob<T>(opts: CallOptions | undefined, call: (jobId: JobId, onProgress: ProgressFn | undefined) => Promise<T>): Promise<T> {
  const onProgress = opts?.onProgress ? Comlink.proxy(opts.onProgress) : undefined;
  let jobId: JobId;
  let onAbort: (() => void) | undefined;
  if (opts?.signal) {
    opts.signal.throwIfAborted();
    const id = `job${++jobCounter}`;
    jobId = id;
    onAbort = () => void engine().cancel(id);
    opts.signal.addEventListener('abort', onAbort, { once: true });
  }
  try {
    return await call(jobId, onProgress);
  } finally {
    if (onAbort) opts?.signal?.removeEventListener('abort', onAbort);
  }
}

export type { ImageId };
