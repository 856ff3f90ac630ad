// Support for the reading interop tests (read*.test.ts, open-errors*.test.ts): a runner that
// spawns the CLI bundle (tests/helpers/cli.ts) and comparisons with qemu-img on the same image.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuImg, qemuImgOk } from '../helpers/qemu.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');


export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time of the whole process, in ms (measured, never asserted). */
  ms: number;
}

/** Run the bundled CLI with `args` (cwd optional), killing it after `timeoutMs`. */
export function runCli(cli: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): CliResult {
  const t0 = performance.now();
  const env = { ...process.env };
  delete env.QCOWSCOPE_DEBUG;
  delete env.QCOWSCOPE_CRASH_AFTER_WRITES;
  const r = spawnSmall(process.execPath, [cli, ...args], { cwd: opts.cwd, env, timeout: opts.timeoutMs ?? 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code !== 'ETIMEDOUT') throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: performance.now() - t0 };
}

/** Run the CLI and throw unless it exits 0 (with its stderr in the message). */
export function runCliOk(cli: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = runCli(cli, args, opts);
  if (r.status !== 0) throw new Error(`qcowscope ${args.join(' ')} failed (${r.status}${r.signal ? ' ' + r.signal : ''}):\n${r.stderr}`);
  return r.stdout;
}

/** `qemu-img info --output=json` run from `cwd` (so relative names print as given). */
export function qemuInfoJson(file: string, cwd?: string): Record<string, unknown> {
  const r = spawnSmall('qemu-img', ['info', '--output=json', file], { cwd });
  if (r.status !== 0) throw new Error(`qemu-img info ${file}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

export function qemuMapJson(file: string, cwd?: string): unknown[] {
  const r = spawnSmall('qemu-img', ['map', '--output=json', file], { cwd });
  if (r.status !== 0) throw new Error(`qemu-img map ${file}: ${r.stderr}`);
  return JSON.parse(r.stdout) as unknown[];
}

/** `qemu-img convert -O raw [-l snapshot.id=N]`. */
export function qemuExport(file: string, out: string, snapshotId?: string): void {
  const args = ['convert', '-O', 'raw'];
  if (snapshotId !== undefined) args.push('-l', `snapshot.id=${snapshotId}`);
  qemuImgOk([...args, file, out]);
}

const SEGMENTS_PY = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); end = os.fstat(fd).st_size; pos = 0
while pos < end:
    try: d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE); print(d, h); pos = h
`;

/** The [start, end) ranges of a file that may hold data (SEEK_DATA/SEEK_HOLE); the rest reads as zeros. */
export function dataSegments(file: string): Array<[number, number]> {
  const r = spawnSync('python3', ['-c', SEGMENTS_PY, file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) return [[0, fs.statSync(file).size]]; // no python3: everything may be data
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
}

/** Union of sorted segment lists. */
function unionSegments(a: Array<[number, number]>, b: Array<[number, number]>): Array<[number, number]> {
  const all = [...a, ...b].sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of all) {
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/**
 * Compare two files byte for byte; returns null when equal, else a description of the first
 * difference. Sparse files (multi-GiB exports) are compared over the union of their data
 * segments only: outside it both files read as zeros.
 */
export function compareFiles(a: string, b: string): string | null {
  const sa = fs.statSync(a).size;
  const sb = fs.statSync(b).size;
  if (sa !== sb) return `sizes differ: ${a} ${sa}, ${b} ${sb}`;
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (const [start, end] of unionSegments(dataSegments(a), dataSegments(b))) {
      for (let pos = start; pos < end; pos += ba.length) {
        const want = Math.min(ba.length, end - pos);
        ba.fill(0, 0, want);
        bb.fill(0, 0, want);
        fs.readSync(fa, ba, 0, want, pos);
        fs.readSync(fb, bb, 0, want, pos);
        if (ba.compare(bb, 0, want, 0, want) !== 0) {
          for (let i = 0; i < want; i++) if (ba[i] !== bb[i]) return `first difference at byte ${pos + i} (0x${(pos + i).toString(16)})`;
        }
      }
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
  return null;
}

/** qemu-img's exit status and stderr for `info` on an image it may refuse. */
export function qemuInfoError(file: string): { status: number | null; stderr: string } {
  const r = qemuImg(['info', '--output=json', file]);
  return { status: r.status, stderr: r.stderr };
}
