// A sample of fuzz cases through the built command line: every verb must exit with a documented
// code (check: 0 clean, 2 corruptions, 3 leaks, 1 could not complete; other verbs 0 or 1), print
// failures as one `qcowscope: ...` line with no stack trace, finish within a time limit, leave the
// file untouched for read-only verbs, and leave it untouched for writing verbs whenever the image
// fails validation (info refuses it).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeTempDir, removeDir, sha256 } from '../helpers/qemu.ts';
import { cliBundle } from '../helpers/cli.ts';
import { CaseGenerator } from './campaign.ts';
import { applyMutations, type FuzzCase } from './mutator.ts';
import { buildSeeds, type Seed } from './seeds.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const CLI_CASES = Number(process.env.FUZZ_CLI_CASES ?? 6);
const runSeed = Number(process.env.FUZZ_SEED ?? 1) + 1000;
const VERB_TIMEOUT_MS = 30_000;

let cli: string;
let seeds: Seed[];
let dir: string;

beforeAll(async () => {
  seeds = buildSeeds();
  cli = await cliBundle();
  dir = makeTempDir('qcowscope-fuzz-cli-');
}, 300_000);

afterAll(() => {
  if (dir && !process.env.QCOWSCOPE_KEEP_TMP) removeDir(dir);
});

interface VerbRun {
  args: string[];
  status: number | null;
  stderr: string;
  problem?: string;
}

function runVerb(args: string[], allowed: number[]): VerbRun {
  const r = spawnSmall(process.execPath, [cli, ...args], { timeout: VERB_TIMEOUT_MS, env: { ...process.env, QCOWSCOPE_DEBUG: '' } });
  const v: VerbRun = { args, status: r.status, stderr: r.stderr };
  if (r.error || r.signal) v.problem = `did not finish: ${r.error?.message ?? r.signal}`;
  else if (!allowed.includes(r.status!)) v.problem = `exit code ${r.status} (allowed ${allowed.join('/')})`;
  else if (/^\s+at /m.test(r.stderr)) v.problem = `stack trace on stderr`;
  else if (/internal error/i.test(r.stderr)) v.problem = `internal error: ${r.stderr.trim()}`;
  else if (r.status === 1) {
    const lines = r.stderr.split('\n').filter((l) => l !== '');
    // check prints its per-item diagnostics first (as qemu-img does), then the one error line
    const ok = args[0] === 'check' ? /^qcowscope: /.test(lines[lines.length - 1] ?? '') : lines.length === 1 && lines[0]!.startsWith('qcowscope: ');
    if (!ok) v.problem = `expected one 'qcowscope: ...' line, got: ${JSON.stringify(r.stderr)}`;
  }
  return v;
}

function writeCase(c: FuzzCase, sub: string): string {
  const seed = seeds.find((s) => s.name === c.seed)!;
  const d = path.join(dir, sub);
  fs.mkdirSync(d, { recursive: true });
  const file = path.join(d, 'image.qcow2');
  fs.writeFileSync(file, applyMutations(seed.image, c.mutations));
  if (seed.backing) fs.writeFileSync(path.join(d, seed.backingName!), seed.backing);
  return file;
}

describe('fuzz through the CLI', () => {
  test(`${CLI_CASES} mutated images through every verb`, () => {
    const gen = new CaseGenerator(seeds, runSeed);
    const problems: string[] = [];
    for (let i = 0; i < CLI_CASES; i++) {
      const c = gen.make(i);
      const file = writeCase(c, `c${i}`);
      const before = sha256(file);
      const out = path.join(dir, `c${i}`, 'out.raw');
      const ro: VerbRun[] = [
        runVerb(['info', '--json', file], [0, 1]),
        runVerb(['map', '--json', file], [0, 1]),
        runVerb(['snapshot', '-l', '--json', file], [0, 1]),
        runVerb(['check', '--json', file], [0, 1, 2, 3, 63]), // 63: not qcow2 at all (qemu-img takes it as raw, which has no check)
        runVerb(['export', file, out], [0, 1]),
      ];
      const list = ro[2]!.status === 0 ? safeJson(spawnSmall(process.execPath, [cli, 'snapshot', '-l', '--json', file]).stdout) : [];
      const ids = ((Array.isArray(list) ? list : []) as Array<{ id: string }>).map((sn) => String(sn.id)).filter((id) => id !== '' && !id.includes('\0') && !id.startsWith('-'));
      for (const id of ids.slice(0, 2)) {
        ro.push(runVerb(['export', '--snapshot', id, file, out], [0, 1]));
      }
      if (sha256(file) !== before) problems.push(`${c.name}: a read-only verb changed the file`);
      const refused = ro[0]!.status !== 0;
      for (const op of [['snapshot', '-c', 'fuzz'], ['snapshot', '-a', '1'], ['snapshot', '-d', 'fuzz']]) {
        const h = sha256(file);
        const v = runVerb([...op, file], [0, 1]);
        ro.push(v);
        if (refused && sha256(file) !== h) problems.push(`${c.name}: '${op.join(' ')}' wrote to an image that failed validation`);
      }
      for (const v of ro) if (v.problem) problems.push(`${c.name} ${JSON.stringify(c.mutations)}: qcowscope ${v.args.slice(0, -1).join(' ')}: ${v.problem}`);
    }
    expect(problems).toEqual([]);
  }, 600_000);
});

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return [];
  }
}
