// Worker-thread entry of the fuzz pool (bundled by pool.ts with esbuild): holds the seed images,
// runs one case per message, posts the result. The pool kills this thread when a case overruns.
import { parentPort, workerData } from 'node:worker_threads';
import { runCase, type SeedBytes } from './run-case.ts';
import type { FuzzCase } from './mutator.ts';
import { installAllocationGuard } from './guard-store.ts';

installAllocationGuard();

const seeds = workerData.seeds as Record<string, SeedBytes>;

parentPort!.on('message', (msg: { id: number; c: FuzzCase; readOnly?: boolean }) => {
  const seed = seeds[msg.c.seed];
  if (!seed) {
    parentPort!.postMessage({ id: msg.id, error: `unknown seed ${msg.c.seed}` });
    return;
  }
  runCase(msg.c, seed, { readOnly: msg.readOnly }).then(
    (result) => parentPort!.postMessage({ id: msg.id, result }),
    (e: Error) => parentPort!.postMessage({ id: msg.id, error: `harness: ${e?.stack ?? e}` }),
  );
});

// Anything that escapes a case (an unhandled rejection from a floating promise in the engine) is a
// failure of the case in flight: report it instead of dying silently.
process.on('unhandledRejection', (e) => {
  parentPort!.postMessage({ id: -1, error: `unhandled rejection: ${(e as Error)?.stack ?? e}` });
});
