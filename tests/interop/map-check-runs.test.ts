// `map` and `check` over long runs of contiguous clusters (what sameRunEnd skips in one loop):
// runs that cross the 4 GiB host offset (the carry from the entry's low word into its high word;
// an entry the loop does not expect goes back to the full decoding, so a missing carry would only
// cost time, but one that matched the wrong entry would show here), runs broken by copy-on-write
// clusters after a snapshot, and data next to the file's holes of a metadata-preallocated image.
// The answer is qemu-img's map and check on the same file; ours run in the test's process
// (tests/helpers/cli-in-process.ts).
import { describe, expect, it } from 'vitest';
import { runCliInProcessOk } from '../helpers/cli-in-process.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, qemuImgOk, qemuIoOk, qemuSnapshotCreate } from '../helpers/qemu.ts';

const CASES: Array<[string, number, string]> = [
  ['64 KiB clusters: a table whose data run crosses 4 GiB', 65536, '6G'],
  ['2 MiB clusters: one table, one run from the start past 4 GiB', 2 << 20, '6G'],
];

describe('map and check over long contiguous runs', () => {
  const tmp = useTempDir('qcowscope-map-runs-');

  for (const [name, clusterSize, size] of CASES) {
    it(name, async () => {
      const f = tmp.file(`runs-${clusterSize}.qcow2`);
      createImage(f, size, { clusterSize, preallocation: 'metadata' });
      // real data around the 4 GiB host offset and at the ends (the rest of the file is holes)
      qemuIoOk(f, 'write -P 0x11 0 128k', 'write -P 0x22 3968M 256M', 'write -P 0x33 6143M 1M');
      const check = async (): Promise<void> => {
        // both exit 0 here (a clean image): runCliInProcessOk and qemuImgOk throw otherwise
        for (const args of [['check', '--output=json', f], ['check', f], ['map', '--output=json', f], ['map', f]]) {
          expect(await runCliInProcessOk(args)).toBe(qemuImgOk(args));
        }
      };
      await check();
      // after a snapshot, writes copy clusters to the end of the file: runs broken in the middle,
      // COPIED set on the new entries only, shared clusters counted twice
      expect(qemuSnapshotCreate(f, 's1').status).toBe(0);
      qemuIoOk(f, 'write -P 0x44 4000M 192k', 'write -P 0x55 4G 64k');
      await check();
    }, 120_000);
  }
});
