// The comparison every reading interop test makes on an image QEMU made: our `info --json`,
// `map --json`, `export` (active disk and every snapshot) and `snapshot -l --json` against
// `qemu-img info --output=json`, `qemu-img map --output=json` and `qemu-img convert -O raw
// [-l snapshot.id=N]` on the same file, from the same working directory.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../helpers/qemu.ts';
import { cliBundle } from '../helpers/cli.ts';
import { compareFiles, qemuExport, qemuInfoJson, qemuMapJson, runCli, runCliOk } from './read-support.ts';

/** qemu-img's stdout, run from `cwd` (it must succeed). */
function qemuImgText(args: string[], cwd: string): string {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', cwd });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

export interface Variety {
  name: string;
  /**
   * Make the image(s) in `dir` (the working directory of every command); returns the image
   * argument as both tools will be given it (relative to `dir`, or absolute).
   */
  make(dir: string): string;
}

let cliPromise: Promise<string> | undefined;
/** The CLI bundled once per test file. */
export function cli(): Promise<string> {
  cliPromise ??= cliBundle();
  return cliPromise;
}

/** One describe block per variety: info, map, export of the active disk and every snapshot, snapshot -l. */
export function compareVarieties(varieties: Variety[]): void {
  for (const v of varieties) {
    describe(v.name, () => {
      let dir = '';
      let image = '';
      let bin = '';
      beforeAll(async () => {
        bin = await cli();
        dir = makeTempDir('qcowscope-read-');
        image = v.make(dir);
        return () => {
          if (!process.env.QCOWSCOPE_KEEP_TMP) removeDir(dir);
        };
      });

      it('info --json equals qemu-img info --output=json, key order and layout included', () => {
        const text = runCliOk(bin, ['info', '--json', image], { cwd: dir });
        expect(JSON.parse(text) as unknown).toEqual(qemuInfoJson(image, dir));
        expect(text).toBe(qemuImgText(['info', '--output=json', image], dir));
      });

      it('map (human form) prints what qemu-img map prints: stdout, stderr and exit code', () => {
        const q = spawnSync('qemu-img', ['map', image], { encoding: 'utf8', cwd: dir });
        const o = runCli(bin, ['map', image], { cwd: dir });
        expect(o.stdout).toBe(q.stdout);
        expect(o.stderr).toBe(q.stderr.replace(/^qemu-img: /, 'qcowscope: '));
        expect(o.status).toBe(q.status);
      });

      it('map --start-offset / --max-length (unaligned, past the end), JSON and human, as qemu-img map', () => {
        const size = qemuInfoJson(image, dir)['virtual-size'] as number;
        for (const range of [['--start-offset=1000', `--max-length=${Math.floor(size / 3)}`], [`--start-offset=${Math.floor(size / 2) + 512}`],
          ['--max-length=1'], [`--start-offset=${size + 4096}`]]) {
          for (const form of [['--output=json'], []]) {
            const q = spawnSync('qemu-img', ['map', ...form, ...range, image], { encoding: 'utf8', cwd: dir });
            const o = runCli(bin, ['map', ...form, ...range, image], { cwd: dir });
            expect(o.stdout, range.join(' ')).toBe(q.stdout);
            expect(o.status, range.join(' ')).toBe(q.status);
          }
        }
      });

      it('map --json equals qemu-img map --output=json', () => {
        const ours = JSON.parse(runCliOk(bin, ['map', '--json', image], { cwd: dir })) as unknown;
        expect(ours).toEqual(qemuMapJson(image, dir));
      });

      it('export of the active disk equals qemu-img convert -O raw', () => {
        const a = path.join(dir, 'ours.raw');
        const b = path.join(dir, 'qemu.raw');
        runCliOk(bin, ['export', image, a], { cwd: dir });
        qemuExport(path.resolve(dir, image), b);
        expect(compareFiles(a, b)).toBeNull();
        fs.rmSync(a);
        fs.rmSync(b);
      });

      // one qemu-img and one qcowscope process per snapshot: allow for many snapshots on a busy machine
      it('export --snapshot ID of every snapshot equals qemu-img convert -l snapshot.id=ID', { timeout: 600_000 }, () => {
        const snaps = (qemuInfoJson(image, dir).snapshots ?? []) as Array<{ id: string; name: string }>;
        for (const [k, sn] of snaps.entries()) {
          const a = path.join(dir, `ours-${sn.id}.raw`);
          const b = path.join(dir, `qemu-${sn.id}.raw`);
          // qemu-img convert's spellings too: -O raw, -l snapshot.id=ID,snapshot.name=NAME
          const pick = k === 0 ? ['-O', 'raw', '-l', `snapshot.id=${sn.id},snapshot.name=${sn.name}`] : ['--snapshot', sn.id];
          runCliOk(bin, ['export', ...pick, image, a], { cwd: dir });
          qemuExport(path.resolve(dir, image), b, sn.id);
          expect(compareFiles(a, b), `snapshot ${sn.id}`).toBeNull();
          fs.rmSync(a);
          fs.rmSync(b);
        }
      });

      it('info and snapshot -l (human forms) print what qemu-img 7.2 prints', () => {
        expect(runCliOk(bin, ['info', image], { cwd: dir })).toBe(qemuImgText(['info', image], dir));
        expect(runCliOk(bin, ['snapshot', '-l', image], { cwd: dir })).toBe(qemuImgText(['snapshot', '-l', image], dir));
      });

      it('info --backing-chain, human and JSON, prints what qemu-img prints (qemu-img spellings -f qcow2 -U)', () => {
        expect(runCliOk(bin, ['info', '--backing-chain', image], { cwd: dir })).toBe(qemuImgText(['info', '--backing-chain', image], dir));
        expect(runCliOk(bin, ['info', '-U', '-f', 'qcow2', '--backing-chain', '--output=json', image], { cwd: dir }))
          .toBe(qemuImgText(['info', '-U', '-f', 'qcow2', '--backing-chain', '--output=json', image], dir));
      });

      it('snapshot -l --json lists what qemu-img info lists', () => {
        const ours = JSON.parse(runCliOk(bin, ['snapshot', '-l', '--json', image], { cwd: dir })) as unknown;
        expect(ours).toEqual(qemuInfoJson(image, dir).snapshots ?? []);
      });
    });
  }
}
