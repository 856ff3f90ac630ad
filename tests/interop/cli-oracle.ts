// One working directory per test file for comparing a CLI verb with qemu-img's on the same
// command line: images made there by qemu-img and qemu-io, our CLI run in the test's process
// (tests/helpers/cli-in-process.ts), and the comparison itself (stdout and exit code equal, stderr
// equal with qemu-img's name in it read as ours).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, expect } from 'vitest';
import { makeTempDir, qemuImgOk, qemuIoOk, removeDir } from '../helpers/qemu.ts';
import { runCliInProcess } from '../helpers/cli-in-process.ts';
import { spawnSmall } from '../helpers/spawner.ts';

export interface CliWorkDir {
  readonly dir: string;
  /** `qemu-img create -f qcow2 [-o opts] [-b backing -F qcow2] NAME SIZE` in the directory; returns NAME. */
  create(name: string, size: string, opts?: string, backing?: string): string;
  /** qemu-io commands on an image of the directory. */
  io(name: string, ...cmds: string[]): void;
  /** A 16 MiB sparse raw file with 300000 bytes of data at 5 MiB, and a qcow2 overlay NAME over it with a cluster of its own. */
  overRawWithHoles(name: string): string;
  /** A chain of three made by qemu-img/qemu-io: base.qcow2 (16 MiB, 4 KiB clusters) < mid.qcow2 (32 MiB) <
   *  top.qcow2 (topSize, 16 KiB clusters), each with data and zeros of its own and a shorter base; returns 'top.qcow2'. */
  chainOf3(topSize: string): string;
  /** qemu-img and qcowscope on the same arguments in the directory: the same exit code, stdout and stderr. Returns qemu-img's exit code. */
  expectSame(args: string[], rename?: [string, string]): Promise<number | null>;
  /** qcowscope ARGS in the directory. */
  run(args: string[]): ReturnType<typeof runCliInProcess>;
}

/** A bitmap's flags, granularity and bits, decoded from the file's bytes (independent of core/). */
export function bitsOf(file: string, name: string): [number, number, string] | null {
  const b = fs.readFileSync(file);
  const cs = 2 ** b.readUInt32BE(20);
  const size = Number(b.readBigUInt64BE(24));
  let pos = b.readUInt32BE(100);
  for (;;) {
    const type = b.readUInt32BE(pos);
    if (type === 0) return null;
    if (type === 0x23852875) break;
    pos += 8 + Math.ceil(b.readUInt32BE(pos + 4) / 8) * 8;
  }
  let at = Number(b.readBigUInt64BE(pos + 8 + 16));
  for (let i = 0; i < b.readUInt32BE(pos + 8); i++) {
    const tableOffset = Number(b.readBigUInt64BE(at));
    const tableSize = b.readUInt32BE(at + 8);
    const flags = b.readUInt32BE(at + 12);
    const gbits = b[at + 17]!;
    const nameSize = b.readUInt16BE(at + 18);
    if (b.subarray(at + 24, at + 24 + nameSize).toString('utf8') === name) {
      const parts: Buffer[] = [];
      for (let k = 0; k < tableSize; k++) {
        const e = b.readBigUInt64BE(tableOffset + k * 8);
        const off = Number(e & 0x00fffffffffffe00n);
        parts.push(off ? b.subarray(off, off + cs) : Buffer.alloc(cs, e & 1n ? 0xff : 0));
      }
      const bytes = Math.ceil(Math.ceil(size / 2 ** gbits) / 8);
      return [flags, gbits, Buffer.concat(parts).subarray(0, bytes).toString('hex')];
    }
    at += Math.ceil((24 + nameSize + b.readUInt32BE(at + 20)) / 8) * 8;
  }
  return null;
}

/** A sparse raw file of `size` bytes with 300000 bytes of 9s at `at` and holes elsewhere. */
export function sparseRaw(file: string, size: number, at: number): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, new Uint8Array(300000).fill(9), 0, 300000, at);
  fs.closeSync(fd);
}

export function useCliWorkDir(prefix: string): CliWorkDir {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir(prefix);
    return () => {
      if (!process.env.QCOWSCOPE_KEEP_TMP) removeDir(dir);
    };
  });
  const w: CliWorkDir = {
    get dir() {
      return dir;
    },
    create(name, size, opts = '', backing) {
      const args = ['create', '-q', '-f', 'qcow2'];
      if (opts) args.push('-o', opts);
      if (backing) args.push('-b', backing, '-F', 'qcow2');
      qemuImgOk([...args, path.join(dir, name), size]);
      return name;
    },
    io(name, ...cmds) {
      qemuIoOk(path.join(dir, name), ...cmds);
    },
    overRawWithHoles(name) {
      sparseRaw(path.join(dir, 'base.raw'), 16 << 20, 5 << 20);
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', path.join(dir, name)]);
      w.io(name, 'write -P 1 0 64k');
      return name;
    },
    chainOf3(topSize) {
      w.io(w.create('base.qcow2', '16M', 'cluster_size=4k'), 'write -P 1 0 1M', 'write -P 2 8M 2M');
      w.io(w.create('mid.qcow2', '32M', '', 'base.qcow2'), 'write -P 3 512k 1M', 'write -z 9M 512k', 'write -P 4 20M 64k');
      w.io(w.create('top.qcow2', topSize, 'cluster_size=16k', 'mid.qcow2'), 'write -P 5 100k 10k', 'write -z 0 64k', 'write -P 6 30M 1M');
      return 'top.qcow2';
    },
    async expectSame(args, rename) {
      const q = spawnSmall('qemu-img', args, { cwd: dir });
      const ourArgs = rename ? args.map((a) => (a === rename[0] ? rename[1] : a)) : args;
      const r = await runCliInProcess(ourArgs, { cwd: dir });
      let stderr = q.stderr.replace(/qemu-img/g, 'qcowscope');
      if (rename) stderr = stderr.replaceAll(rename[0], rename[1]);
      expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }, args.join(' ')).toEqual({ status: q.status, stdout: q.stdout, stderr });
      return q.status;
    },
    run(args) {
      return runCliInProcess(args, { cwd: dir });
    },
  };
  return w;
}
