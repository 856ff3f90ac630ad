// The worker's jobs: each long call runs as a job with an id the page can cancel, its progress
// reports thinned to one per PROGRESS_INTERVAL_MS (plus the last), and a cancel turned into one
// CANCELLED error. The job yields to the event loop first, so a cancel() message can arrive.
import * as Comlink from 'comlink';
import { QcowError } from '../core/errors.ts';
import type { JobContext } from './engine-adapter.ts';
import type { JobId, Progress, ProgressFn } from './api.ts';

const jobs = new Map<string, AbortController>();

/** Progress reports at most this often (plus the last one), so the page is never flooded. */
const PROGRESS_INTERVAL_MS = 100;

/** Abort the running job with this id (nothing if it has ended). */
export function cancelJob(jobId: string): void {
  jobs.get(jobId)?.abort();
}

/** Yield to the event loop (not just the microtask queue) so a cancel() message can arrive. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(null);
  });
}

/** Run `body` as the job `jobId`, reporting to `onProgress`. */
export async function runJob<T>(jobId: JobId, onProgress: ProgressFn | undefined, body: (job: JobContext) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  if (jobId) jobs.set(jobId, controller);
  let last = 0;
  let pending: Progress | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const send = (p: Progress): void => {
    last = performance.now();
    pending = undefined;
    // A proxied callback returns a promise; a page gone away must not fail the job.
    Promise.resolve(onProgress?.(p)).catch(() => {});
  };
  const job: JobContext = {
    signal: controller.signal,
    progress(p) {
      if (!onProgress) return;
      const now = performance.now();
      if (now - last >= PROGRESS_INTERVAL_MS || p.done >= p.total) {
        if (timer) clearTimeout(timer);
        timer = undefined;
        send(p);
      } else {
        pending = p;
        timer ??= setTimeout(() => {
          timer = undefined;
          if (pending) send(pending);
        }, PROGRESS_INTERVAL_MS);
      }
    },
  };
  try {
    await yieldToEventLoop();
    // A job cancelled before it started does not start.
    if (controller.signal.aborted) throw new QcowError('CANCELLED', 'The operation was cancelled');
    return await body(job);
  } catch (e) {
    if (controller.signal.aborted) throw new QcowError('CANCELLED', 'The operation was cancelled');
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (pending) send(pending);
    if (jobId) jobs.delete(jobId);
    // The page's callback arrives as a Comlink proxy: release its port.
    const cb = onProgress as { [Comlink.releaseProxy]?: () => void } | undefined;
    cb?.[Comlink.releaseProxy]?.();
  }
}

