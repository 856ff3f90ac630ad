// A QEMU-made image whose file ends at a chosen cluster (issue 16): the data written from offset 0
// is searched (the file grows with it, in steps of data, L2 tables and refcount blocks) so that,
// after `then` runs on it, the file is exactly `clusters` clusters long. Tests put the end just
// before or at a refcount block's range to make QEMU's next allocation add a block or a table.
import * as fs from 'node:fs';
import { createImage, fileSize, qemuIoOk, type CreateOptions } from './qemu.ts';

/** Make `file` end at `clusters` clusters after `then`; false if the file's growth steps over that length. */
export function imageEndingAt(
  file: string, clusters: number, size: number, opts: CreateOptions, then: (file: string) => void = () => {},
): boolean {
  const cs = opts.clusterSize ?? 65536;
  const make = (dataClusters: number): number => {
    fs.rmSync(file, { force: true });
    createImage(file, size, opts);
    if (dataClusters > 0) qemuIoOk(file, `write -P 7 0 ${dataClusters * cs}`);
    then(file);
    return Math.ceil(fileSize(file) / cs);
  };
  let lo = 0;
  let hi = Math.min(clusters, Math.floor(size / cs));
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (make(mid) < clusters) lo = mid + 1;
    else hi = mid;
  }
  return make(lo) === clusters;
}
