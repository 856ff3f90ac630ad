// Metadata-preallocated images: qemu-img asks the file system which data clusters are holes
// (qcow2_detect_metadata_preallocation, then BDRV_BLOCK_RECURSE to file-posix's SEEK_DATA/
// SEEK_HOLE) and reports them as `zero: true, data: true`. Node has no lseek(SEEK_DATA), so the
// data segments of the file are listed once by a short python3 call; without python3 the
// holes are unknown and data clusters report `zero: false`.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import type { HoleQuery, Qcow2Image } from '../core/image/qcow2-image.ts';
import { getClusterRefcount } from '../core/image/refcount.ts';

const SEGMENTS_PY = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); end = os.fstat(fd).st_size; pos = 0; out = []
while pos < end:
    try: d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE); out.append('%d %d' % (d, h)); pos = h
print('\\n'.join(out))
`;

/** QEMU's qcow2_detect_metadata_preallocation. */
export async function isMetadataPreallocated(img: Qcow2Image, file: string): Promise<boolean> {
  const st = fs.statSync(file);
  const realClusters = Math.floor((st.blocks * 512) / img.clusterSize);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const endCluster = Math.ceil(st.size / img.clusterSize);
  let count = 0;
  for (let i = 0; i < endCluster && count < threshold; i++) {
    if ((await getClusterRefcount(img, i)) > 0) count++;
  }
  return count >= threshold;
}

export function dataSegments(file: string): Array<[number, number]> | null {
  try {
    const out = execFileSync('python3', ['-c', SEGMENTS_PY, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
  } catch {
    return null;
  }
}

export async function holeQueryFor(img: Qcow2Image, file: string): Promise<HoleQuery | undefined> {
  if (!(await isMetadataPreallocated(img, file))) return undefined;
  const segs = dataSegments(file);
  if (!segs) return undefined;
  return async (hostOffset: number, length: number) => {
    // a hole iff no data segment intersects [hostOffset, hostOffset+length)
    let lo = 0;
    let hi = segs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (segs[mid]![1] <= hostOffset) lo = mid + 1;
      else hi = mid;
    }
    return !(lo < segs.length && segs[lo]![0] < hostOffset + length);
  };
}
