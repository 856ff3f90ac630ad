// Metadata-preallocated images: qemu-img asks the file system which data clusters are holes
// (qcow2_detect_metadata_preallocation, then BDRV_BLOCK_RECURSE to file-posix's SEEK_DATA/
// SEEK_HOLE) and reports them as `zero: true, data: true`. Node has no lseek(SEEK_DATA), so the
// data segments of the file are listed once by a short python3 call; without python3 the
// holes are unknown and data clusters report `zero: false`.
//
// The python3 process is started before the image is even opened (`startSegmentScan`) and runs
// on the other core while the metadata is read; its answer is awaited only if the image turns
// out to be metadata-preallocated, and the process is ended otherwise.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { HoleMap } from '../core/image/block-status.ts';
import type { Qcow2Image } from '../core/image/qcow2-image.ts';
import { loadRefblock, refblockEntriesOf, reftableSize } from '../core/image/refcount.ts';
import { getRefcount } from '../core/format/refcount.ts';

// -S: no site import (half of python3's start-up); -E: ignore PYTHON* variables.
export const SEGMENTS_PY = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); end = os.fstat(fd).st_size; pos = 0; out = []
while pos < end:
    try: d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE); out.append('%d %d' % (d, h)); pos = h
sys.stdout.write('\\n'.join(out))
`;

/** QEMU's qcow2_detect_metadata_preallocation: more clusters refcounted than the file really holds. */
async function isMetadataPreallocated(img: Qcow2Image, file: string): Promise<boolean> {
  const st = fs.statSync(file);
  const realClusters = Math.floor((st.blocks * 512) / img.clusterSize);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const endCluster = Math.ceil(st.size / img.clusterSize);
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  let count = 0;
  // One refcount block at a time, scanned synchronously (no promise per cluster).
  for (let r = 0; r * per < endCluster && count < threshold; r++) {
    if (r >= reftableSize(img)) break;
    const block = await loadRefblock(img, r);
    if (!block) continue;
    const last = Math.min(per, endCluster - r * per);
    for (let i = 0; i < last && count < threshold; i++) {
      if (getRefcount(block, i, order) > 0) count++;
    }
  }
  return count >= threshold;
}

/** A running (or finished) listing of the file's data segments. */
export interface SegmentScan {
  /** Sorted [start, end) host ranges holding data, or null if they cannot be listed. */
  result(): Promise<Array<[number, number]> | null>;
  /** End the scan if its answer is not needed. */
  cancel(): void;
}

/**
 * The system's python3 on Linux when there is one, else whatever `python3` is on PATH: a version
 * manager's shim first on PATH (pyenv's is a bash script that runs `pyenv exec`) measured 0.3 s
 * of CPU before Python even started, more than the whole map it serves. Any python3 will do.
 */
function pythonCommand(): string {
  return process.platform === 'linux' && fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

export function startSegmentScan(file: string): SegmentScan {
  let child: ChildProcess | null = null;
  let done = false;
  const promise = new Promise<Array<[number, number]> | null>((resolve) => {
    try {
      child = spawn(pythonCommand(), ['-S', '-E', '-c', SEGMENTS_PY, file], { stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      resolve(null);
      return;
    }
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', () => resolve(null));
    child.on('close', (code) => {
      done = true;
      if (code !== 0) {
        resolve(null);
        return;
      }
      const text = Buffer.concat(chunks).toString('latin1');
      const segs: Array<[number, number]> = [];
      for (const line of text.split('\n')) {
        if (!line) continue;
        const sp = line.indexOf(' ');
        segs.push([Number(line.slice(0, sp)), Number(line.slice(sp + 1))]);
      }
      resolve(segs);
    });
  });
  return {
    result: () => promise,
    cancel: () => {
      if (!done && child && child.pid !== undefined) child.kill();
    },
  };
}

/** The data segments of a file (synchronous start-to-finish form of `startSegmentScan`). */
export function dataSegments(file: string): Promise<Array<[number, number]> | null> {
  return startSegmentScan(file).result();
}

/**
 * The holes of an opened image's file, or undefined when QEMU would not look for them. Pass the
 * scan started before opening (`startSegmentScan`) to overlap python3's start-up with the reads.
 */
export async function holeMapFor(img: Qcow2Image, file: string, scan?: SegmentScan): Promise<HoleMap | undefined> {
  if (!(await isMetadataPreallocated(img, file))) {
    scan?.cancel();
    return undefined;
  }
  const segs = await (scan ?? startSegmentScan(file)).result();
  return segs ? new HoleMap(segs) : undefined;
}
