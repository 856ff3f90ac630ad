// The comparison every reading interop test makes on an image QEMU made: our `info --json`,
// `map --json`, `export` (active disk and every snapshot) and `snapshot -l --json` against
// `qemu-img info --output=json`, `qemu-img map --output=json` and `qemu-img convert -O raw
// [-l snapshot.id=N]` on the same file, from the same working directory. Our CLI runs in the test's
// process (tests/helpers/cli-in-process.ts); each qemu-img answer is asked for once per variety.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../helpers/qemu.ts';
import { runCliInProcess as runCli, runCliInProcessOk as runCliOk } from '../helpers/cli-in-process.ts';
import { compareFiles, qemuExport, qemuMapJson } from './read-support.ts';
import { spawnSmall } from '../helpers/spawner.ts';

/** qemu-img's stdout, run from `cwd` (it must succeed). */
function qemuImgText(args: string[], cwd: string): string {
  const r = spawnSmall('qemu-img', args, { cwd });
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

/** One describe block per variety: info, map, export of the active disk and every snapshot, snapshot -l. */
export function compareVarieties(varieties: Variety[]): void {
  for (const v of varieties) {
    describe(v.name, () => {
      let dir = '';
      let image = '';
      /** `qemu-img info --output=json` of the image: its text, and parsed. */
      let qemuInfoText = '';
      let qemuInfo: Record<string, unknown> = {};
      beforeAll(() => {
        dir = makeTempDir('qcowscope-read-');
        image = v.make(dir);
        qemuInfoText = qemuImgText(['info', '--output=json', image], dir);
        qemuInfo = JSON.parse(qemuInfoText) as Record<string, unknown>;
        return () => {
          if (!process.env.QCOWSCOPE_KEEP_TMP) removeDir(dir);
        };
      });

      it('info --json equals qemu-img info --output=json, key order and layout included', async () => {
        const text = await runCliOk(['info', '--json', image], { cwd: dir });
        expect(JSON.parse(text) as unknown).toEqual(qemuInfo);
        expect(text).toBe(qemuInfoText);
      });

      it('map (human form) prints what qemu-img map prints: stdout, stderr and exit code', async () => {
        const q = spawnSmall('qemu-img', ['map', image], { cwd: dir });
        const o = await runCli(['map', image], { cwd: dir });
        expect(o.stdout).toBe(q.stdout);
        expect(o.stderr).toBe(q.stderr.replace(/^qemu-img: /, 'qcowscope: '));
        expect(o.status).toBe(q.status);
      });

      it('map --start-offset / --max-length (unaligned, past the end), JSON and human, as qemu-img map', async () => {
        const size = qemuInfo['virtual-size'] as number;
        for (const range of [['--start-offset=1000', `--max-length=${Math.floor(size / 3)}`], [`--start-offset=${Math.floor(size / 2) + 512}`],
          ['--max-length=1'], [`--start-offset=${size + 4096}`]]) {
          for (const form of [['--output=json'], []]) {
            const q = spawnSmall('qemu-img', ['map', ...form, ...range, image], { cwd: dir });
            const o = await runCli(['map', ...form, ...range, image], { cwd: dir });
            expect(o.stdout, range.join(' ')).toBe(q.stdout);
            expect(o.status, range.join(' ')).toBe(q.status);
          }
        }
      });

      it('map --json equals qemu-img map --output=json', async () => {
        const ours = JSON.parse(await runCliOk(['map', '--json', image], { cwd: dir })) as unknown;
        expect(ours).toEqual(qemuMapJson(image, dir));
      });

      it('export of the active disk equals qemu-img convert -O raw', async () => {
        const a = path.join(dir, 'ours.raw');
        const b = path.join(dir, 'qemu.raw');
        await runCliOk(['export', image, a], { cwd: dir });
        qemuExport(path.resolve(dir, image), b);
        expect(compareFiles(a, b)).toBeNull();
        fs.rmSync(a);
        fs.rmSync(b);
      });

      // one qemu-img process and one qcowscope run per snapshot: allow for many snapshots on a busy machine
      it('export --snapshot ID of every snapshot equals qemu-img convert -l snapshot.id=ID', { timeout: 600_000 }, async () => {
        const snaps = (qemuInfo.snapshots ?? []) as Array<{ id: string; name: string }>;
        for (const [k, sn] of snaps.entries()) {
          const a = path.join(dir, `ours-${sn.id}.raw`);
          const b = path.join(dir, `qemu-${sn.id}.raw`);
          // qemu-img convert's spellings too: -O raw, -l snapshot.id=ID,snapshot.name=NAME
          const pick = k === 0 ? ['-O', 'raw', '-l', `snapshot.id=${sn.id},snapshot.name=${sn.name}`] : ['--snapshot', sn.id];
          await runCliOk(['export', ...pick, image, a], { cwd: dir });
          qemuExport(path.resolve(dir, image), b, sn.id);
          expect(compareFiles(a, b), `snapshot ${sn.id}`).toBeNull();
          fs.rmSync(a);
          fs.rmSync(b);
        }
      });

      it('info and snapshot -l (human forms) print what qemu-img 7.2 prints', async () => {
        expect(await runCliOk(['info', image], { cwd: dir })).toBe(qemuImgText(['info', image], dir));
        expect(await runCliOk(['snapshot', '-l', image], { cwd: dir })).toBe(qemuImgText(['snapshot', '-l', image], dir));
      });

      it('info --backing-chain, human and JSON, prints what qemu-img prints (qemu-img spellings -f qcow2 -U)', async () => {
        expect(await runCliOk(['info', '--backing-chain', image], { cwd: dir })).toBe(qemuImgText(['info', '--backing-chain', image], dir));
        expect(await runCliOk(['info', '-U', '-f', 'qcow2', '--backing-chain', '--output=json', image], { cwd: dir }))
          .toBe(qemuImgText(['info', '-U', '-f', 'qcow2', '--backing-chain', '--output=json', image], dir));
      });

      it('snapshot -l --json lists what qemu-img info lists', async () => {
        const ours = JSON.parse(await runCliOk(['snapshot', '-l', '--json', image], { cwd: dir })) as unknown;
        expect(ours).toEqual(qemuInfo.snapshots ?? []);
      });
    });
  }
}
