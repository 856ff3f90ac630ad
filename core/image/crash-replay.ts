// The crash stage's engine (docs/crash-stage.md): an operation rehearsed on a copy-on-write
// overlay of the image (the image itself is never written) with every write's bytes recorded; the
// same write list reordered to break the ordering rule on purpose; and the bytes a disk would hold
// if the power were cut after any write, with the writes since the last flush kept or lost.
import { OverlayStore, type ByteSource } from '../io/overlay-store.ts';
import { RecordingStore, type RecordedCall } from '../io/recording-store.ts';
import { readInto, type ImageStore } from '../io/store.ts';
import type { Journal, JournalEntry } from './journal.ts';

/** One entry of the operation: a write (with its bytes), a flush (barrier) or a truncate. */
export interface StageEntry extends JournalEntry {
  /** The bytes written (writes only). */
  data?: Uint8Array;
  /** What "break the rule" changed about this entry; absent in the engine's own order. */
  broken?: string;
}

/**
 * The two ways to break the rule (docs/architecture.md §3: refcounts go up before a reference is
 * published, and come down only after it is unpublished).
 */
export type RuleBreak = 'lower-first' | 'publish-first';

export interface Rehearsal {
  operation: string;
  entries: StageEntry[];
  /** The header's first bytes before the operation (the old values a split commit keeps). */
  headerBefore: Uint8Array;
}

/** Header bytes a rehearsal keeps: up to the end of snapshots_offset. */
const HEADER_SPAN = 72;
/** refcount_table_offset and refcount_table_clusters: where a shadow commit switches refcounts. */
const RC_FIELDS_START = 48;
const RC_FIELDS_END = 60;

/** A store read as the source of an overlay (its size as it is now). */
export function sourceOf(store: ImageStore): ByteSource {
  return { size: store.size(), read: (o, l) => store.read(o, l), readInto: (o, out) => readInto(store, o, out) };
}

/**
 * Run `op` on a copy-on-write overlay of `base` (every write stays in memory) and return what it
 * did, in order, each write with its bytes and the purpose its journal gave it.
 */
export async function rehearse(base: ImageStore, op: (store: ImageStore) => Promise<Journal>): Promise<Rehearsal> {
  const headerBefore = (await base.read(0, HEADER_SPAN)).slice();
  const rec = new RecordingStore(new OverlayStore(sourceOf(base), base.name));
  const journal = await op(rec);
  return { operation: journal.operation, entries: label(rec.calls, journal), headerBefore };
}

/** The store's calls, each with the journal entry recorded for it (they come in the same order). */
function label(calls: readonly RecordedCall[], journal: Journal): StageEntry[] {
  const j = journal.entries;
  let p = 0;
  return calls.map((c): StageEntry => {
    const offset = c.kind === 'write' ? c.offset : c.kind === 'truncate' ? c.size : 0;
    const length = c.kind === 'write' ? c.data.length : 0;
    const at = j.findIndex((e, i) => i >= p && e.kind === c.kind && (c.kind === 'flush' || (e.offset === offset && e.length === length)));
    const e = at >= 0 ? j[at] : undefined;
    if (at >= 0) p = at + 1;
    const out: StageEntry = { kind: c.kind, offset, length, purpose: e?.purpose ?? (c.kind === 'flush' ? 'barrier' : 'not in the journal') };
    if (e?.commit) out.commit = true;
    if (c.kind === 'write') out.data = c.data;
    return out;
  });
}

/** The steps (writes and truncates) of an entry list: indexes into it, in order. */
export function stepIndexes(entries: readonly StageEntry[]): number[] {
  const out: number[] = [];
  entries.forEach((e, i) => {
    if (e.kind !== 'flush') out.push(i);
  });
  return out;
}

function isRefcountWrite(e: StageEntry): boolean {
  return e.kind === 'write' && /^refcount (block|table)/.test(e.purpose);
}

/**
 * The operation's entries with the rule broken the way `how` says, or null when the operation
 * has nothing to reorder that way (no reference published, no refcount moved). The bytes written
 * are the engine's own; only their order (and, for a commit that switches everything in one header
 * write, its split in two) changes, so the last state is the same as the engine's.
 */
export function breakRule(r: Rehearsal, how: RuleBreak): StageEntry[] | null {
  const out = r.entries.map((e) => ({ ...e }));
  const before = r.headerBefore;
  // A commit that only switches the refcount table (a repair's rebuild) publishes no reference.
  const commits = out.filter((e) => e.commit && !(changes(e, before, 0, RC_FIELDS_START) === false && changes(e, before, RC_FIELDS_END, HEADER_SPAN) === false));
  const shadow = commits.find((e) => changes(e, before, RC_FIELDS_START, RC_FIELDS_END));
  if (shadow) return splitCommit(out, out.indexOf(shadow), before, how);
  let changed = false;
  for (const c of commits) {
    const i = out.indexOf(c);
    if (how === 'publish-first') {
      // the refcount writes since the previous commit: the increases this commit relies on
      let first = -1;
      for (let k = i - 1; k >= 0 && !out[k]!.commit; k--) if (isRefcountWrite(out[k]!)) first = k;
      if (first < 0) continue;
      out.splice(i, 1);
      out.splice(first, 0, c);
      c.broken = 'written before the refcount increase it relies on';
    } else {
      // the refcount writes after this commit, up to the next: the decreases it allows
      const moved: StageEntry[] = [];
      for (let k = i + 1; k < out.length && !out[k]!.commit; k++) if (isRefcountWrite(out[k]!)) moved.push(out[k]!);
      if (moved.length === 0) continue;
      for (const m of moved) {
        out.splice(out.indexOf(m), 1);
        m.broken = 'refcount decrease moved before the write that stops using the cluster';
      }
      out.splice(out.indexOf(c), 0, ...moved);
    }
    changed = true;
  }
  return changed ? out : null;
}

/**
 * Whether write `e` changes header bytes [from, to) from what they were before the operation;
 * null when it is not a header write (a shadow commit changes 48..60, the refcount table fields).
 */
function changes(e: StageEntry, before: Uint8Array, from: number, to: number): boolean | null {
  if (!e.data || e.offset >= HEADER_SPAN) return null;
  for (let b = Math.max(from, e.offset); b < Math.min(to, e.offset + e.length); b++) if (e.data[b - e.offset] !== before[b]) return true;
  return false;
}

/**
 * A commit that switches the refcount table and the tables that reference clusters in one header
 * write, split in two: the new refcount fields alone first ('lower-first': the new counts, some
 * lowered, while the old tables still point at those clusters), or the new references with the
 * old refcount fields first ('publish-first': new tables counted by the old refcounts).
 */
function splitCommit(out: StageEntry[], i: number, before: Uint8Array, how: RuleBreak): StageEntry[] {
  const c = out[i]!;
  const data = c.data!;
  const rcNew = data.slice(RC_FIELDS_START - c.offset, RC_FIELDS_END - c.offset);
  const rcWrite: StageEntry = {
    kind: 'write', offset: RC_FIELDS_START, length: rcNew.length, data: rcNew,
    purpose: 'header: refcount_table_offset and refcount_table_clusters (the new refcount table alone)',
  };
  if (how === 'lower-first') {
    rcWrite.broken = 'the new refcounts, some lowered, switched on before the commit stops using those clusters';
    out.splice(i, 0, rcWrite);
  } else {
    const refsOnly = data.slice();
    refsOnly.set(before.subarray(RC_FIELDS_START, RC_FIELDS_END), RC_FIELDS_START - c.offset);
    out[i] = {
      ...c, data: refsOnly,
      purpose: 'header: L1 table and snapshot table (commit), the old refcount table kept',
      broken: 'the new tables published while the old refcount table does not count their clusters',
    };
    rcWrite.broken = 'the refcount increases, written after the tables that rely on them';
    out.splice(i + 1, 0, rcWrite);
  }
  return out;
}

/** The disk after a power cut: which steps (1-based) reached it and which were lost. */
export interface CrashPoint {
  store: OverlayStore;
  onDisk: number[];
  lost: number[];
}

/**
 * The bytes the disk holds if the power is cut right after step `stop` (0: before the first):
 * every step before the last flush that preceded it is on the disk; the steps since that flush are
 * all there (`keep`) or all lost.
 */
export async function crashAt(base: ImageStore, entries: readonly StageEntry[], stop: number, keep: boolean): Promise<CrashPoint> {
  const steps = stepIndexes(entries);
  if (!Number.isInteger(stop) || stop < 0 || stop > steps.length) throw new RangeError(`stop ${stop} is not between 0 and ${steps.length}`);
  const cut = stop === 0 ? -1 : steps[stop - 1]!;
  let lastFlush = -1;
  for (let i = 0; i < cut; i++) if (entries[i]!.kind === 'flush') lastFlush = i;
  const store = new OverlayStore(sourceOf(base), base.name);
  const onDisk: number[] = [];
  const lost: number[] = [];
  for (const [n, i] of steps.entries()) {
    if (i > cut) break;
    if (i > lastFlush && !keep) {
      lost.push(n + 1);
      continue;
    }
    const e = entries[i]!;
    if (e.kind === 'write') await store.write(e.offset, e.data!);
    else await store.truncate(e.offset);
    onDisk.push(n + 1);
  }
  return { store, onDisk, lost };
}
