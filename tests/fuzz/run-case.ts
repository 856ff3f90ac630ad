// One fuzz case, in-process, on MemoryStores: apply the recipe to the seed, then run every engine
// path a person (CLI or web app) can reach on that image — open, info, map, export of the active
// layer and each snapshot, guest-offset translation, snapshot diff and space, check — and, on a
// copy, the writing operations (guest write, snapshot create/revert/delete). Each step must end in
// a result or a QcowError with a one-line message; anything else (TypeError, RangeError, a harness
// violation from GuardStore, a write to a file whose open failed) is a failure of the case.
import { QcowError } from '../../core/errors.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image, type L1View } from '../../core/image/qcow2-image.ts';
import type { Layer } from '../../core/image/layer.ts';
import { buildInfo } from '../../core/analysis/info.ts';
import { measure } from '../../core/analysis/measure.ts';
import { translate } from '../../core/analysis/translate.ts';
import { diffViews } from '../../core/analysis/diff.ts';
import { snapshotSpace } from '../../core/analysis/snapshot-space.ts';
import { budgetFor, meter } from './budget.ts';
import { FuzzViolation, GuardStore, allocationViolations } from './guard-store.ts';
import { applyMutations, type FuzzCase } from './mutator.ts';
import { checkStore, writeOps } from './ops.ts';

export interface SeedBytes {
  image: Uint8Array;
  backing?: Uint8Array;
}

export interface StepResult {
  step: string;
  /** 'ok', or the QcowError code the step ended with. */
  outcome: string;
}

export interface CaseFailure {
  step: string;
  /** exception (not a QcowError), violation (GuardStore rule), multiline (error message), internal (code INTERNAL), wrote-after-failed-open, timeout, crash */
  kind: string;
  message: string;
  stack?: string;
}

export interface CaseResult {
  name: string;
  steps: StepResult[];
  failures: CaseFailure[];
  bytesRead: number;
  /** The step that used the largest share of its work budget, and that share (budget.ts). */
  budgetUse: { step: string; share: number };
  ms: number;
}

/** Guest bytes read per view when exporting (the harness's own bound; hostile maps can be huge). */
const EXPORT_BUDGET = 16 * 1024 * 1024;
/** Snapshots exercised per case. */
const MAX_SNAPSHOTS = 6;

export interface RunOptions {
  /** Skip the writing operations. */
  readOnly?: boolean;
}

export async function runCase(c: FuzzCase, seed: SeedBytes, opts: RunOptions = {}): Promise<CaseResult> {
  const t0 = Date.now();
  const bytes = applyMutations(seed.image, c.mutations);
  // every step's work is bounded by what this image declares (budget.ts)
  const budget = budgetFor(bytes);
  const res: CaseResult = { name: c.name, steps: [], failures: [], bytesRead: 0, budgetUse: { step: '', share: 0 }, ms: 0 };
  const stores: GuardStore[] = [];
  allocationViolations.length = 0;

  const guard = (b: Uint8Array, writable: boolean, name = 'image'): GuardStore => {
    const g = new GuardStore(new MemoryStore(b, { name, writable: true }), { writable });
    stores.push(g);
    return g;
  };
  const backingLayer = async (): Promise<Layer | null> => {
    if (!seed.backing) return null;
    return Qcow2Image.open(new MemoryStore(seed.backing.slice(), { name: 'base.qcow2', writable: false }));
  };

  /** End the work budget of step `name`: an overrun fails the case even if the engine caught it. */
  function endBudget(name: string): void {
    const share = meter.share();
    if (share > res.budgetUse.share) res.budgetUse = { step: name, share };
    meter.stop();
    const over = meter.overrun;
    if (over && !res.failures.some((f) => f.message === `${over.kind}: ${over.message}`)) {
      res.failures.push({ step: name, kind: 'violation', message: `${over.kind}: ${over.message}`, stack: over.stack });
    }
  }

  /** Run a step within `stepBudget`; returns its value, or undefined if it threw (recorded). */
  async function step<T>(name: string, fn: () => Promise<T>, stepBudget = budget): Promise<T | undefined> {
    const seen = new Set(stores.map((g) => g.violation));
    const allocs = allocationViolations.length;
    meter.start(name, stepBudget);
    try {
      const v = await fn();
      res.steps.push({ step: name, outcome: 'ok' });
      return v;
    } catch (e) {
      recordError(res, name, e, stores);
      return undefined;
    } finally {
      endBudget(name);
      // a violation the engine caught and turned into something else still fails the case, here
      for (const g of stores) {
        if (g.violation && !seen.has(g.violation) && !res.failures.some((f) => f.message.endsWith(g.violation!.message))) {
          res.failures.push({ step: name, kind: 'violation', message: `${g.violation.kind}: ${g.violation.message}`, stack: g.violation.stack });
        }
      }
      for (const v of allocationViolations.slice(allocs)) {
        if (!res.failures.some((f) => f.message.endsWith(v.message))) res.failures.push({ step: name, kind: 'violation', message: `${v.kind}: ${v.message}`, stack: v.stack });
      }
    }
  }

  // ---- read-only paths ----------------------------------------------------------------------
  const ro = guard(bytes.slice(), false);
  const img = await step('open', async () => Qcow2Image.open(ro, { backing: await backingLayer() }));
  if (img) {
    await step('info', async () => JSON.stringify(buildInfo(img, { filename: 'fuzz.qcow2' })));
    await step('map', async () => img.extents(0, img.virtualSize));
    await step('measure', () => measure({ format: 'qcow2' }, { img, view: img.activeView() }));
    await step('export', () => exportView(img, img.activeView()));
    await step('translate', async () => {
      for (const off of [0, 65536, Math.floor(img.virtualSize / 2), Math.max(0, img.virtualSize - 1)]) await translate(img, img.activeView(), off);
    });
    for (const sn of img.snapshots.slice(0, MAX_SNAPSHOTS)) {
      const tag = `sn:${sn.idStr.slice(0, 16)}`;
      const view = await step(`${tag} view`, () => img.snapshotView(sn));
      if (view) {
        await step(`${tag} map`, () => img.extentsView(view, 0, view.virtualSize));
        await step(`${tag} export`, () => exportView(img, view));
        await step(`${tag} diff`, () => diffViews(img, img.activeView(), view));
      }
      await step(`${tag} space`, () => snapshotSpace(img, sn));
    }
    await step('close', () => img.close());
  }
  // check opens in check mode itself: it must answer even where a normal open refuses
  const initialCheck = await step('check', () => checkStore(guard(bytes.slice(), false)));

  // ---- writing paths, each on its own copy ----------------------------------------------------
  if (!opts.readOnly) {
    for (const op of writeOps) {
      const store = guard(bytes.slice(), true);
      let opened: Qcow2Image | undefined;
      meter.start(`${op.name}: open`, budget);
      try {
        opened = await Qcow2Image.open(store, { writable: true, ...op.open, backing: await backingLayer() });
      } catch (e) {
        recordError(res, `${op.name}: open`, e, stores);
        if (store.writes > 0 || store.truncates > 0) {
          res.failures.push({ step: `${op.name}: open`, kind: 'wrote-after-failed-open', message: `${store.writes} writes, ${store.truncates} truncates although open failed` });
        }
        continue;
      } finally {
        endBudget(`${op.name}: open`);
      }
      const writesBefore = store.writes + store.truncates;
      const done = await step(op.name, async () => {
        await op.run(opened!, store);
        return true;
      });
      const last = res.steps[res.steps.length - 1]!;
      // A refused operation should leave the file as it was (tallied, see README: leaks are allowed
      // by the crash-safety rules, a write the engine could have refused before starting is not good)
      if (!done && store.writes + store.truncates > writesBefore) last.outcome += ' after writes';
      await step(`${op.name}: close`, () => opened!.close());
      // An operation that succeeded on a consistent image leaves it consistent.
      if (done && initialCheck === 0) {
        const after = (store.inner as MemoryStore).bytes().slice();
        const code = await step(`${op.name}: recheck`, () => checkStore(guard(after, false)), budgetFor(after));
        if (code === 1 || code === 2) {
          res.failures.push({ step: `${op.name}: recheck`, kind: 'made-inconsistent', message: `check exit ${code} after '${op.name}' on an image that checked clean` });
        } else if (code === 3) {
          last.outcome += ' leaked';
        }
      }
    }
  }

  res.bytesRead = stores.reduce((s, g) => s + g.bytesRead, 0);
  res.ms = Date.now() - t0;
  return res;
}

function recordError(res: CaseResult, step: string, e: unknown, _stores: GuardStore[]): void {
  if (e instanceof FuzzViolation) {
    if (!res.failures.some((f) => f.message === `${e.kind}: ${e.message}`)) res.failures.push({ step, kind: 'violation', message: `${e.kind}: ${e.message}`, stack: e.stack });
    res.steps.push({ step, outcome: 'VIOLATION' });
    return;
  }
  if (e instanceof QcowError) {
    res.steps.push({ step, outcome: e.code });
    if (e.code === 'INTERNAL') res.failures.push({ step, kind: 'internal', message: e.message, stack: e.stack });
    else if (/[\r\n]/.test(e.message) || e.message.trim() === '') res.failures.push({ step, kind: 'multiline', message: JSON.stringify(e.message) });
    return;
  }
  const err = e as Error;
  res.steps.push({ step, outcome: 'EXCEPTION' });
  res.failures.push({ step, kind: 'exception', message: `${err?.name ?? typeof e}: ${err?.message ?? String(e)}`, stack: err?.stack });
}

/** Read every data range of a view, as `export` does (bounded by EXPORT_BUDGET guest bytes). */
async function exportView(img: Qcow2Image, view: L1View): Promise<number> {
  const extents = await img.extentsView(view, 0, view.virtualSize);
  let budget = EXPORT_BUDGET;
  for (const e of extents) {
    if (!e.data && e.zero) continue;
    for (let pos = e.start; pos < e.start + e.length && budget > 0; pos += 1 << 20) {
      const n = Math.min(1 << 20, e.start + e.length - pos, budget);
      await img.readView(view, pos, n);
      budget -= n;
    }
    if (budget <= 0) break;
  }
  return EXPORT_BUDGET - budget;
}
