// The process that starts qemu-img and qemu-io for a test process (tests/helpers/spawner.ts says
// why: a fork from a large process costs far more than one from this small one). Plain JavaScript
// so that Node starts it without a loader (Node 20 cannot run TypeScript itself).
//
// Protocol over two FIFOs, one request at a time: the client writes a 4-byte big-endian length
// and that many bytes of JSON {cmd, args, cwd, env, timeout}; this process runs it with spawnSync and
// answers the same way with {status, signal, stdout, stderr, error}. End of file on the request
// FIFO (the client exited) ends this process.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

const [reqPath, resPath] = process.argv.slice(2);
const req = fs.openSync(reqPath, 'r');
const res = fs.openSync(resPath, 'w');

function readFully(fd, n) {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    const r = fs.readSync(fd, buf, got, n - got, null);
    if (r === 0) return null;
    got += r;
  }
  return buf;
}

function writeFully(fd, buf) {
  let off = 0;
  while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off);
}

for (;;) {
  const head = readFully(req, 4);
  if (head === null) break;
  const body = readFully(req, head.readUInt32BE(0));
  if (body === null) break;
  const { cmd, args, cwd, env, timeout } = JSON.parse(body.toString('utf8'));
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd, env, timeout, maxBuffer: 256 << 20 });
  const answer = Buffer.from(JSON.stringify({
    status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '',
    error: r.error ? { message: r.error.message, code: r.error.code } : null,
  }), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(answer.length, 0);
  writeFully(res, Buffer.concat([len, answer]));
}

// QCOWSCOPE_SPAWNER_STATS=FILE: append this process's CPU time and its children's (clock ticks,
// from /proc) to FILE at the end, for measuring (the client's own `time` cannot see them).
if (process.env.QCOWSCOPE_SPAWNER_STATS) {
  const f = fs.readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  const ticks = [11, 12, 13, 14].map((i) => Number(f[i]));
  fs.appendFileSync(process.env.QCOWSCOPE_SPAWNER_STATS, `${ticks.join(' ')}\n`);
}
