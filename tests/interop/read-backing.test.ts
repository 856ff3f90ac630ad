// Reading through backing chains, judged by qemu-img on the same files: qcow2 and raw backing
// files, relative and absolute backing names, overlays larger than their backing file, chains of
// three, extended-L2 subclusters that fall through to the backing file, snapshots of overlays.
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { createImage, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { compareVarieties, type Variety } from './read-compare.ts';

const MiB = 1024 * 1024;

/** A sparse raw file: holes, a few data extents (one unaligned), zeros written as data. */
function sparseRaw(file: string, size: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
    fs.writeSync(fd, Buffer.from('hello, raw backing'), 0, 18, 1 * MiB + 3);
    fs.writeSync(fd, crypto.randomBytes(3 * 65536), 0, 3 * 65536, 100 * 65536);
    fs.writeSync(fd, Buffer.alloc(65536), 0, 65536, 200 * 65536); // zeros, but allocated: data
    fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, size - 4096);
  } finally {
    fs.closeSync(fd);
  }
}

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
const varieties: Variety[] = [
  {
    name: 'qcow2 backing file, relative name, same size',
    make(dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, 64 * MiB);
      qemuIoOk(base, 'write -P 0x11 0 1M', 'write -P 0x12 32M 64k', 'write -z 40M 64k');
      createImage(path.join(dir, 'top.qcow2'), 64 * MiB, { backing: 'base.qcow2' });
      qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 0x21 512k 1M', 'write -z 32M 32k', 'discard 0 64k', 'write -P 0x22 60M 4k');
      return 'top.qcow2';
    },
  },
  {
    name: 'overlay larger than its backing file (backing size not cluster aligned)',
    make(dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, 33 * MiB + 12345);
      qemuIoOk(base, 'write -P 0x11 0 1M', 'write -P 0x12 32M 1M');
      createImage(path.join(dir, 'top.qcow2'), 128 * MiB, { backing: 'base.qcow2' });
      qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 0x21 512k 64k', 'write -P 0x22 100M 64k');
      return 'top.qcow2';
    },
  },
  {
    name: 'raw backing file by absolute name, sparse, overlay larger',
    make(dir) {
      const raw = path.join(dir, 'base.raw');
      sparseRaw(raw, 20 * MiB);
      createImage(path.join(dir, 'top.qcow2'), 32 * MiB, { backing: raw, backingFormat: 'raw' });
      qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 0x44 2M 64k', 'write -z 6500k 128k', 'write -P 0x45 25M 64k');
      return 'top.qcow2';
    },
  },
  {
    name: 'raw backing file by relative name, opened from another directory',
    make(dir) {
      fs.mkdirSync(path.join(dir, 'imgs'));
      sparseRaw(path.join(dir, 'imgs', 'base.raw'), 16 * MiB);
      createImage(path.join(dir, 'imgs', 'top.qcow2'), 16 * MiB, { backing: 'base.raw', backingFormat: 'raw' });
      qemuIoOk(path.join(dir, 'imgs', 'top.qcow2'), 'write -P 0x44 1M 4k');
      return 'imgs/top.qcow2';
    },
  },
  {
    name: 'chain of three, each larger than the one below, named through "./sub/../"',
    make(dir) {
      fs.mkdirSync(path.join(dir, 'sub'));
      fs.mkdirSync(path.join(dir, 'lower'));
      const base = path.join(dir, 'lower', 'base.qcow2');
      createImage(base, 64 * MiB, { clusterSize: 4096 });
      qemuIoOk(base, 'write -P 0x11 0 1M', 'write -P 0x12 32M 64k', 'write -z 40M 64k');
      const mid = path.join(dir, 'mid.qcow2');
      createImage(mid, 128 * MiB, { backing: 'lower/base.qcow2' });
      qemuIoOk(mid, 'write -P 0x21 512k 1M', 'write -z 32M 32k', 'write -P 0x22 100M 64k');
      const top = path.join(dir, 'top.qcow2');
      createImage(top, 192 * MiB, { backing: 'mid.qcow2', clusterSize: 512 * 1024 });
      qemuIoOk(top, 'write -P 0x31 900k 200k', 'discard 0 512k', 'write -P 0x32 150M 64k');
      return './sub/../top.qcow2';
    },
  },
  {
    name: 'metadata-preallocated qcow2 backing file: its holes read as zero data through the overlay',
    make(dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, 64 * MiB, { preallocation: 'metadata' });
      qemuIoOk(base, 'write -P 0x11 0 100k', 'write -P 0x12 10M 4k');
      createImage(path.join(dir, 'top.qcow2'), 64 * MiB, { backing: 'base.qcow2' });
      qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 0x21 1M 64k', 'write -P 0x22 10M 2k');
      return 'top.qcow2';
    },
  },
  {
    name: 'compressed backing file under an overlay with writes',
    make(dir) {
      const src = path.join(dir, 'src.qcow2');
      createImage(src, 32 * MiB);
      qemuIoOk(src, 'write -P 0x11 0 3M', 'write -P 0x12 8M 100k');
      qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', src, path.join(dir, 'base.qcow2')]);
      createImage(path.join(dir, 'top.qcow2'), 32 * MiB, { backing: 'base.qcow2' });
      qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 0x21 1M 64k', 'write -c -P 0x22 16M 64k');
      return 'top.qcow2';
    },
  },
  {
    name: 'extended-L2 overlay: unallocated subclusters of allocated clusters read from the backing file',
    make(dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, 32 * MiB);
      qemuIoOk(base, 'write -P 0x11 0 4M');
      const top = path.join(dir, 'top.qcow2');
      createImage(top, 48 * MiB, { backing: 'base.qcow2', extendedL2: true });
      qemuIoOk(top, 'write -P 0x21 4k 4k', 'write -z 70k 2k', 'write -P 0x22 1M 6k', 'write -P 0x23 3968k 256k', 'write -P 0x24 40M 2k');
      return 'top.qcow2';
    },
  },
  {
    name: 'overlay with snapshots, resized between them, over a shorter backing file',
    make(dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, 16 * MiB);
      qemuIoOk(base, 'write -P 0x11 0 16M');
      const top = path.join(dir, 'top.qcow2');
      createImage(top, 16 * MiB, { backing: 'base.qcow2' });
      qemuIoOk(top, 'write -P 0x21 1M 64k');
      qemuImgOk(['snapshot', '-c', 'small', top]);
      qemuImgOk(['resize', '-q', top, `${48 * MiB}`]);
      qemuIoOk(top, 'write -P 0x22 30M 64k', 'write -P 0x23 0 64k');
      qemuImgOk(['snapshot', '-c', 'big', top]);
      qemuImgOk(['resize', '-q', '--shrink', top, `${24 * MiB}`]);
      return 'top.qcow2';
    },
  },
];

compareVarieties(varieties);
