// `qcowscope write` killed before each of its writes (QCOWSCOPE_CRASH_AFTER_WRITES=K, exit 75):
// the file on disk must always pass `qemu-img check` without corruption and read old or new data,
// for a first write (new L2), a copy-on-write after a QEMU snapshot, and a zero write.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliBundle } from '../helpers/cli.ts';
import { createImage, makeTempDir, qemuCheck, qemuConvertToRaw, qemuIoOk, qemuSnapshotCreate, removeDir } from '../helpers/qemu.ts';
import { spawnSmall } from '../helpers/spawner.ts';

let dir = '';
let bundle = '';

beforeAll(async () => {
  dir = makeTempDir('qcowscope-wclicrash-');
  bundle = await cliBundle();
}, 60_000);
afterAll(() => removeDir(dir));

function raw(file: string): Buffer {
  const out = path.join(dir, 'r.raw');
  qemuConvertToRaw(file, out);
  return fs.readFileSync(out);
}

/** Name, setup, and the write's arguments (%F = the image). */
const CASES: Array<[string, (f: string) => void, string[]]> = [
  ['first write into a fresh image', () => {}, ['-P', '0x21', '%F', '1000', '70000']],
  ['copy-on-write after a snapshot', (f) => {
    qemuIoOk(f, 'write -P 0x31 0 256k');
    expect(qemuSnapshotCreate(f, 's').status).toBe(0);
  }, ['-P', '0x32', '%F', '60000', '20000']],
  ['zero write with unmap', (f) => qemuIoOk(f, 'write -P 0x41 0 256k'), ['-z', '-u', '%F', '1000', '200000']],
];

describe('qcowscope write with QCOWSCOPE_CRASH_AFTER_WRITES', () => {
  for (const [name, setup, args] of CASES) {
    it(`${name}: every K leaves a clean-or-leaky image reading old or new data`, () => {
      const file = path.join(dir, 'w.qcow2');
      fs.rmSync(file, { force: true });
      createImage(file, '8M', { clusterSize: 4096 });
      setup(file);
      const base = fs.readFileSync(file);
      const before = raw(file);
      const done = spawnSmall(process.execPath, [bundle, 'write', ...args.map((a) => (a === '%F' ? file : a))]);
      expect(done.status, done.stderr).toBe(0);
      const after = raw(file);
      expect(after.equals(before)).toBe(false);
      let completed = false;
      let crashes = 0;
      for (let k = 0; k < 200 && !completed; k++) {
        fs.writeFileSync(file, base);
        const r = spawnSmall(process.execPath, [bundle, 'write', ...args.map((a) => (a === '%F' ? file : a))], {
          env: { ...process.env, QCOWSCOPE_CRASH_AFTER_WRITES: String(k) },
        });
        if (r.status === 0) {
          completed = true;
        } else {
          expect(r.status, r.stderr).toBe(75);
          crashes++;
        }
        const chk = qemuCheck(file);
        expect({ k, corruptions: chk.corruptions, checkErrors: chk.checkErrors, stderr: chk.stderr }).toMatchObject({ k, corruptions: 0, checkErrors: 0 });
        const got = raw(file);
        for (let at = 0; at < got.length; at += 4096) {
          const g = got.subarray(at, at + 4096);
          if (!g.equals(before.subarray(at, at + 4096)) && !g.equals(after.subarray(at, at + 4096))) {
            throw new Error(`K=${k}: guest cluster at ${at} is neither old nor new`);
          }
        }
      }
      expect(completed).toBe(true);
      expect(crashes).toBeGreaterThan(3);
    }, 120_000);
  }
});
