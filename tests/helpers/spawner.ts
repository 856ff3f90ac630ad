// spawnSync for the qemu-img / qemu-io calls of a test process, made by a small helper process
// (spawn-server.mjs) instead of the test process itself. Node forks the calling process to start a
// child, and the cost of that fork (copying the page tables, then tearing them down at exec) grows
// with the caller's memory: a Vitest worker holding ~160 MB spent ~14 ms of CPU and ~50 ms of wall
// time per qemu-img start, against ~1 ms and ~12 ms from a bare Node process (measured here, 2
// cores under load), and the tests start thousands of them. The helper starts once per test
// process, talks over two FIFOs synchronously, and exits when its client does.
// QCOWSCOPE_DIRECT_SPAWN=1 (or any failure to start the helper) spawns directly, as before.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface SpawnResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  error?: Error;
}

interface Channel {
  req: number;
  res: number;
}

let channel: Channel | null | undefined;

function startServer(): Channel | null {
  if (process.env.QCOWSCOPE_DIRECT_SPAWN === '1') return null;
  try {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-spawner-'));
    const reqPath = path.join(dir, 'req');
    const resPath = path.join(dir, 'res');
    const mk = spawnSync('mkfifo', [reqPath, resPath]);
    if (mk.status !== 0) return null;
    const server = path.join(path.dirname(fileURLToPath(import.meta.url)), 'spawn-server.mjs');
    const child = spawn(process.execPath, [server, reqPath, resPath], { stdio: ['ignore', 'ignore', 'inherit'] });
    child.unref();
    // Both ends open the request FIFO first, then the answer FIFO. The request end is opened
    // without blocking (ENXIO until the helper has opened its end), for at most 10 s: a helper
    // that never starts means direct spawns, not a hang. Once it is there it opens the answer
    // FIFO next, so that open returns at once.
    let req = -1;
    for (const t0 = Date.now(); req < 0 && Date.now() - t0 < 10_000;) {
      try {
        req = fs.openSync(reqPath, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENXIO' || child.exitCode !== null) throw e;
        sleep(2);
      }
    }
    if (req < 0) {
      child.kill();
      return null;
    }
    const res = fs.openSync(resPath, 'r');
    fs.rmSync(dir, { recursive: true, force: true });
    return { req, res };
  } catch {
    return null;
  }
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleep(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

/** Write all of `buf` to the (non-blocking) request FIFO, waiting while the pipe is full. */
function writeFully(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      sleep(1);
    }
  }
}

function readFully(fd: number, n: number): Buffer {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    const r = fs.readSync(fd, buf, got, n - got, null);
    if (r === 0) throw new Error('spawn server: connection closed');
    got += r;
  }
  return buf;
}

/** spawnSync(cmd, args, { encoding: 'utf8', cwd, env, timeout, maxBuffer: 256 MiB }), made by the helper process. */
export function spawnSmall(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): SpawnResult {
  if (channel === undefined) channel = startServer();
  const env = opts.env ?? process.env;
  if (channel === null) {
    const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, env, timeout: opts.timeout, maxBuffer: 256 << 20 });
    return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, error: r.error };
  }
  const body = Buffer.from(JSON.stringify({ cmd, args, cwd: opts.cwd, env, timeout: opts.timeout }), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  writeFully(channel.req, Buffer.concat([head, body]));
  const len = readFully(channel.res, 4).readUInt32BE(0);
  const a = JSON.parse(readFully(channel.res, len).toString('utf8')) as {
    status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; error: { message: string; code?: string } | null;
  };
  const error = a.error ? Object.assign(new Error(a.error.message), { code: a.error.code }) : undefined;
  return { status: a.status, signal: a.signal, stdout: a.stdout, stderr: a.stderr, error };
}
