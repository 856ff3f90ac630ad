// The crash stage's state for one tab (docs/crash-stage.md): the rehearsed operation, where the
// power is cut, whether the writes since the last flush are kept, whether the rule is broken, and
// the verdicts the worker returns (kept per choice, so stepping back and forth asks once). Kept
// across view switches; a change to the image makes the rehearsal stale.
import type { CrashEntryDTO, CrashOperation, CrashRehearsalDTO, CrashStopDTO, RuleBreak } from '../../worker/crash-stage-api.ts';
import type { ImageTab } from './app.svelte.ts';
import { engine } from './engine.ts';
import { errorText } from './errors.ts';

export class CrashStage {
  rehearsal = $state.raw<CrashRehearsalDTO | null>(null);
  /** The tab's revision when rehearsed: a later change to the image makes the rehearsal stale. */
  revision = $state(-1);
  stop = $state(0);
  keep = $state(true);
  breakOn = $state(false);
  how = $state<RuleBreak>('lower-first');
  result = $state.raw<CrashStopDTO | null>(null);
  working = $state(false);
  error = $state<string | null>(null);
  private cache = new Map<string, CrashStopDTO>();
  private asked = 0;

  constructor(private readonly tab: ImageTab) {}

  /** The ways to break the rule this operation offers. */
  get ways(): RuleBreak[] {
    return this.rehearsal ? (['lower-first', 'publish-first'] as const).filter((w) => this.rehearsal!.broken[w]) : [];
  }

  /** The order replayed: the rule broken (the chosen way, else the one offered) or the engine's. */
  get mode(): RuleBreak | null {
    if (!this.breakOn) return null;
    const ways = this.ways;
    return ways.includes(this.how) ? this.how : (ways[0] ?? null);
  }

  get entries(): CrashEntryDTO[] {
    const r = this.rehearsal;
    if (!r) return [];
    const m = this.mode;
    return (m && r.broken[m]) || r.entries;
  }

  get steps(): number {
    return this.entries.filter((e) => e.step !== undefined).length;
  }

  get stale(): boolean {
    return this.rehearsal !== null && this.revision !== this.tab.revision;
  }

  async rehearse(op: CrashOperation): Promise<void> {
    this.working = true;
    this.error = null;
    this.result = null;
    try {
      const r = await engine().crashRehearse(this.tab.id, op);
      this.cache.clear();
      this.rehearsal = r;
      this.revision = this.tab.revision;
      this.breakOn = false;
      this.keep = true;
      // start where the lesson is: right after the commit write (or the last write)
      const commit = r.entries.find((e) => e.commit)?.step;
      this.stop = commit ?? r.entries.filter((e) => e.step !== undefined).length;
    } catch (e) {
      this.rehearsal = null;
      this.error = errorText(e);
    } finally {
      this.working = false;
    }
  }

  /** Fetch the verdict for the current choice (the newest request wins). */
  async refresh(): Promise<void> {
    const r = this.rehearsal;
    if (!r || this.stale) return;
    const stop = Math.min(this.stop, this.steps);
    const key = `${stop}|${this.keep}|${this.mode}`;
    const hit = this.cache.get(key);
    if (hit) {
      this.result = hit;
      return;
    }
    const n = ++this.asked;
    this.working = true;
    try {
      const s = await engine().crashStop(r.id, stop, this.keep, this.mode);
      this.cache.set(key, s);
      if (n === this.asked) {
        this.result = s;
        this.error = null;
      }
    } catch (e) {
      if (n === this.asked) this.error = errorText(e);
    } finally {
      if (n === this.asked) this.working = false;
    }
  }

  /** The disk at the current choice as a file, handed to `save` (a browser download). */
  async download(save: (blob: Blob, name: string) => void): Promise<void> {
    const r = this.rehearsal;
    if (!r || this.stale) return;
    try {
      const d = await engine().crashImage(r.id, Math.min(this.stop, this.steps), this.keep, this.mode);
      save(d.blob, d.name);
    } catch (e) {
      this.error = errorText(e);
    }
  }
}

const stages = new WeakMap<ImageTab, CrashStage>();

/** The tab's crash stage, made on first use. */
export function crashStageOf(tab: ImageTab): CrashStage {
  let s = stages.get(tab);
  if (!s) stages.set(tab, (s = new CrashStage(tab)));
  return s;
}
