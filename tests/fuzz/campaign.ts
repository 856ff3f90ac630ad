// A fuzz campaign: generate cases deterministically from a run seed, run them through the pool,
// shrink failing recipes to the mutations that matter, and keep them in regressions.json as named
// cases that every later run replays.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { seedLayout, type SeedLayout } from './layout.ts';
import { seededRandom } from '../helpers/random.ts';
import { caseSeed, generateMutations, type FuzzCase, type Mutation } from './mutator.ts';
import type { CaseResult } from './run-case.ts';
import type { Seed } from './seeds.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REGRESSIONS_FILE = path.join(HERE, 'regressions.json');

export interface RegressionCase {
  name: string;
  seed: string;
  mutations: Mutation[];
  /** What the case did when it was found (first failure), for the reader. */
  found: string;
}

export class CaseGenerator {
  private readonly layouts = new Map<string, SeedLayout>();
  constructor(private readonly seeds: Seed[], private readonly runSeed: number) {
    for (const s of seeds) this.layouts.set(s.name, seedLayout(s.image));
  }

  layout(seed: string): SeedLayout {
    return this.layouts.get(seed)!;
  }

  /** Case `index` of this run: the same (runSeed, index) always gives the same case. */
  make(index: number): FuzzCase {
    const r = seededRandom(caseSeed(this.runSeed, index));
    const total = this.seeds.reduce((n, s) => n + s.weight, 0);
    let w = r() * total;
    const seed = this.seeds.find((s) => (w -= s.weight) < 0) ?? this.seeds[0]!;
    return { name: `case-${this.runSeed}-${index}`, seed: seed.name, mutations: generateMutations(r, seed.image, this.layouts.get(seed.name)!) };
  }
}

/** A short, number-free description of how a case failed (to group and deduplicate findings). */
export function failureSignature(r: CaseResult): string {
  const f = r.failures[0];
  if (!f) return '';
  const step = f.step.replace(/^sn:\S*/, 'sn:N').replace(/^[a-z -]+: open$/, 'write-op: open');
  const msg = f.message.replace(/0x[0-9a-f]+|\d+/gi, 'N').slice(0, 100);
  const at = f.stack?.split('\n').find((l) => /core\//.test(l))?.replace(/.*\/(core\/[^:)]+).*/, '$1') ?? '';
  return `${f.kind} in ${step}: ${msg}${at ? ` @ ${at}` : ''}`;
}

/**
 * Drop mutations one at a time while the case still fails the same way (a greedy ddmin pass):
 * saved recipes name only the damage that matters.
 */
export async function shrink(c: FuzzCase, run: (c: FuzzCase) => Promise<CaseResult>, signature: string): Promise<FuzzCase> {
  let cur = c;
  for (let i = cur.mutations.length - 1; i >= 0 && cur.mutations.length > 1; i--) {
    const trial: FuzzCase = { ...cur, mutations: cur.mutations.filter((_, j) => j !== i) };
    const r = await run(trial);
    if (failureSignature(r) === signature) cur = trial;
  }
  return cur;
}

export function loadRegressions(): RegressionCase[] {
  if (!fs.existsSync(REGRESSIONS_FILE)) return [];
  return JSON.parse(fs.readFileSync(REGRESSIONS_FILE, 'utf8')) as RegressionCase[];
}

/** Append new failing recipes (deduplicated by name) to regressions.json, one case per line. */
export function saveRegressions(found: RegressionCase[]): void {
  const all = loadRegressions();
  const names = new Set(all.map((r) => r.name));
  for (const f of found) if (!names.has(f.name)) all.push(f);
  const body = all.map((r) => '  ' + JSON.stringify(r)).join(',\n');
  fs.writeFileSync(REGRESSIONS_FILE, `[\n${body}\n]\n`);
}

/** A file-name-safe name for a finding. */
export function regressionName(sig: string, c: FuzzCase): string {
  const slug = sig.toLowerCase().replace(/ @ .*/, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);
  let h = 0;
  for (const ch of JSON.stringify(c.mutations) + c.seed) h = (Math.imul(h, 31) + ch.charCodeAt(0)) >>> 0;
  return `${slug}-${h.toString(16)}`;
}

export function describeResult(r: CaseResult, c: FuzzCase): string {
  const f = r.failures.map((x) => `  [${x.kind}] ${x.step}: ${x.message}${x.stack ? '\n    ' + x.stack.split('\n').slice(1, 5).map((l) => l.trim()).join('\n    ') : ''}`).join('\n');
  return `${c.name} (${c.seed}) ${JSON.stringify(c.mutations)}\n${f}`;
}
