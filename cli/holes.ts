// Metadata-preallocated images: qemu-img asks the file system which data clusters are holes
// (qcow2_detect_metadata_preallocation, then BDRV_BLOCK_RECURSE to file-posix's SEEK_DATA/
// SEEK_HOLE) and reports them as `zero: true, data: true`. Node has no lseek(SEEK_DATA), so the
// data segments of the file are listed by a short perl call on Linux (perl-base is part of every
// Debian system and starts in about 3 ms), else by python3 (10-15 ms); without either the holes
// are unknown and data clusters report `zero: false`.
//
// The listing runs only once the image turns out to be metadata-preallocated (most images are
// not), synchronously, and node:child_process is loaded only then (through
// process.getBuiltinModule: an import would load it, and the stream modules it needs, in every
// command's start-up).
import type * as ChildProcess from 'node:child_process';
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

/** The same listing in perl, for Linux only: SEEK_DATA is 3 and SEEK_HOLE 4 there (Fcntl names neither). */
export const SEGMENTS_PL = `
open(my $f, '<', $ARGV[0]) or exit 1; my $end = -s $f; my $pos = 0; my @out;
while ($pos < $end) {
  my $d = sysseek($f, $pos, 3); last unless defined $d;
  my $h = sysseek($f, $d, 4); last unless defined $h;
  push @out, ($d + 0) . ' ' . ($h + 0); $pos = $h + 0;
}
print join("\\n", @out);
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

/** A listing of the file's data segments, made when first asked for. */
export interface SegmentScan {
  /** Sorted [start, end) host ranges holding data, or null if they cannot be listed. */
  result(): Promise<Array<[number, number]> | null>;
  /** Drop the scan (nothing to end: it runs only inside result()). */
  cancel(): void;
}

/** perl on Linux, then the system's python3 (a version manager's shim on PATH costs 0.3 s before Python starts), then python3. */
function listers(): Array<[string, string[]]> {
  const list: Array<[string, string[]]> = [];
  if (process.platform === 'linux') list.push([fs.existsSync('/usr/bin/perl') ? '/usr/bin/perl' : 'perl', ['-e', SEGMENTS_PL]]);
  const py = process.platform === 'linux' && fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  list.push([py, ['-S', '-E', '-c', SEGMENTS_PY]]);
  return list;
}

/** The data segments of `file`, listed synchronously by the first lister that runs. */
function listSegments(file: string): Array<[number, number]> | null {
  const { spawnSync } = process.getBuiltinModule('node:child_process') as typeof ChildProcess;
  for (const [cmd, args] of listers()) {
    const r = spawnSync(cmd, [...args, file], { stdio: ['ignore', 'pipe', 'ignore'], encoding: 'latin1', maxBuffer: 1 << 30 });
    if (r.error || r.status !== 0) continue;
    const segs: Array<[number, number]> = [];
    for (const line of r.stdout.split('\n')) {
      if (!line) continue;
      const sp = line.indexOf(' ');
      segs.push([Number(line.slice(0, sp)), Number(line.slice(sp + 1))]);
    }
    return segs;
  }
  return null;
}

export function startSegmentScan(file: string): SegmentScan {
  let segs: Array<[number, number]> | null | undefined;
  return {
    result: async () => (segs === undefined ? (segs = listSegments(file)) : segs),
    cancel: () => {},
  };
}

/** The data segments of a file. */
export function dataSegments(file: string): Promise<Array<[number, number]> | null> {
  return startSegmentScan(file).result();
}

/**
 * The holes of an opened image's file, or undefined when QEMU would not look for them (`scan`: one
 * made earlier for the file, whose listing is then reused).
 */
export async function holeMapFor(img: Qcow2Image, file: string, scan?: SegmentScan): Promise<HoleMap | undefined> {
  if (!(await isMetadataPreallocated(img, file))) {
    scan?.cancel();
    return undefined;
  }
  const segs = await (scan ?? startSegmentScan(file)).result();
  return segs ? new HoleMap(segs) : undefined;
}
